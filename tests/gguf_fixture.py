"""Write a pico Llama checkpoint as a GGUF file, the way llama.cpp's ``convert_hf_to_gguf.py`` does.

Written independently of traitgraph's exporter (its own name table and its
own copy of llama.cpp's Q/K permutation), so a test that reads an exported
file back through transformers checks the exporter against llama.cpp's
conventions, not against itself. Float32 throughout.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: Hugging Face Llama tensor name (per layer: {i}) -> GGUF name, from llama.cpp's tensor map.
NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{i}.input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "blk.{i}.attn_q.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "blk.{i}.attn_k.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "blk.{i}.attn_v.weight",
    "model.layers.{i}.self_attn.o_proj.weight": "blk.{i}.attn_output.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "blk.{i}.ffn_gate.weight",
    "model.layers.{i}.mlp.up_proj.weight": "blk.{i}.ffn_up.weight",
    "model.layers.{i}.mlp.down_proj.weight": "blk.{i}.ffn_down.weight",
}


def permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """``LlamaModel.permute`` of convert_hf_to_gguf.py."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_name(hf: str) -> str:
    parts = hf.split(".")
    if len(parts) > 2 and parts[1] == "layers":
        i = parts[2]
        return NAMES[hf.replace(f".layers.{i}.", ".layers.{i}.")].format(i=i)
    return NAMES[hf]


def write_pico_gguf(model_dir: Path, path: Path) -> Path:
    """``path``: the checkpoint in ``model_dir`` (tied Llama + byte-level BPE tokenizer) as GGUF."""
    import gguf
    from safetensors.numpy import load_file

    cfg = json.loads((model_dir / "config.json").read_text())
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    tok_cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("pico")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_theta"] if "rope_theta" in cfg else cfg["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_dimension_count(cfg["hidden_size"] // cfg["num_attention_heads"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    added = {t["content"]: t["id"] for t in tok["added_tokens"]}
    tokens = [t for t, _ in vocab]
    for content, i in added.items():
        if i >= len(tokens):
            tokens.append(content)
    types = [gguf.TokenType.CONTROL if t in added else gguf.TokenType.NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_unk_token_id(added["<|endoftext|>"])
    w.add_pad_token_id(cfg["pad_token_id"])
    w.add_add_bos_token(False)
    template = model_dir / "chat_template.jinja"
    w.add_chat_template(template.read_text() if template.is_file() else tok_cfg["chat_template"])

    tensors = load_file(model_dir / "model.safetensors")
    for hf in sorted(tensors, key=lambda n: (0 if "embed" in n else 1, n)):
        data = tensors[hf].astype(np.float32)
        if hf.endswith("q_proj.weight"):
            data = permute(data, cfg["num_attention_heads"], cfg["num_attention_heads"])
        elif hf.endswith("k_proj.weight"):
            data = permute(data, cfg["num_attention_heads"], cfg["num_key_value_heads"])
        w.add_tensor(_gguf_name(hf), np.ascontiguousarray(data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
