"""Tiny random checkpoints of the common causal-LM families, for the family tests.

Each is a real Hugging Face directory (``save_pretrained``, safetensors) with
the pico ChatML tokenizer of :mod:`conftest`, shaped to exercise what differs
between families: untied input/output embeddings, grouped-query attention
(fewer key/value heads than query heads), fused projections (Phi-3's
``qkv_proj``/``gate_up_proj``), per-head norms (Qwen3, Gemma3), soft-capping
and sliding windows (Gemma2/3), and a checkpoint sharded into several files.

>>> make_family_base("qwen2", Path("/tmp/qwen2"))     # doctest: +SKIP
PosixPath('/tmp/qwen2')
"""

from __future__ import annotations

from pathlib import Path

#: Shared shape: 4 query heads over 2 key/value heads (grouped-query attention).
_SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    initializer_range=0.02,
)

#: family -> (transformers config class, model class, config overrides, save options)
FAMILIES: dict[str, tuple[str, str, dict, dict]] = {
    "llama-untied": ("LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": False}, {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": True}, {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16, "tie_word_embeddings": False}, {}),
    "mistral-sharded": (
        "MistralConfig",
        "MistralForCausalLM",
        {"tie_word_embeddings": False, "sliding_window": None},
        {"max_shard_size": "60KB"},
    ),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {"head_dim": 16}, {}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 16, "sliding_window": 16}, {}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"head_dim": 16, "sliding_window": 16}, {}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"tie_word_embeddings": False}, {}),
}


def make_family_base(family: str, path: Path, seed: int = 0) -> Path:
    """Save a tiny random ``family`` model and the pico tokenizer under ``path``."""
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    from conftest import make_tiny_tokenizer

    config_cls, model_cls, overrides, save_options = FAMILIES[family]
    tokenizer = make_tiny_tokenizer()
    config = getattr(transformers, config_cls)(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **{**_SHAPE, **overrides},
    )
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).to(torch.float32)
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(path, safe_serialization=True, **save_options)
        tokenizer.save_pretrained(path)
    finally:
        hf_logging.enable_progress_bar()
    return path
