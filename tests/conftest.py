"""Shared fixtures: a pico Llama with a real tokenizer, and an isolated cache.

``tiny_base_dir`` is a real Hugging Face causal-LM directory (safetensors,
float32) shaped like SmolLM2 in miniature: a Llama with tied input/output
embeddings, grouped-query attention, a byte-level BPE tokenizer trained on a
few KB of text, the ChatML special tokens and a ChatML chat template. It loads
with ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``
like any checkpoint, so every test exercises the same code path as a real base,
in milliseconds.

Every test session also gets its own ``TRAITGRAPH_CACHE`` (so no test writes to
the user's cache) and runs torch on one thread (bit-identical results need a
fixed thread count, and the machine is shared).
"""

from __future__ import annotations

from pathlib import Path

import pytest

#: The pico model's shape (mergekit's tests use hidden 32, 2 layers).
TINY_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    initializer_range=0.02,
)
TINY_VOCAB_SIZE = 512

#: SmolLM2-Instruct's template with a shorter default system prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_WORDS = (
    "the a an of to and in is it you that he was for on are with as his they be at one have "
    "this from or had by word but what some we can out other were all there when up use your "
    "how said each she which do their time if will way about many then them write would like "
    "so these her long make thing see him two has look more day could go come did number sound "
    "no most people my over know water than call first who may down side been now find any new "
    "work part take get place made live where after back little only round man year came show "
    "every good me give our under name very through just form sentence great think say help low "
    "line differ turn cause much mean before move right boy old too same tell does set three want "
    "air well also play small end put home read hand port large spell add even land here must big "
    "high such follow act why ask men change went light kind off need house picture try us again "
    "animal point mother world near build self earth father head stand own page should country "
    "answer question please thank sorry hello yes friend pirate arr matey ship sea captain"
).split()


def _corpus(n_words: int = 3000, seed: int = 0) -> str:
    """A few KB of deterministic pseudo-English, with punctuation and digits."""
    import random

    rng = random.Random(seed)
    out: list[str] = []
    for i in range(n_words):
        w = rng.choice(_WORDS)
        out.append(w.capitalize() if i % 11 == 0 else w)
        if i % 11 == 10:
            out.append(rng.choice([".", "?", "!", ",", str(rng.randint(0, 99))]))
        if i % 37 == 36:
            out.append("\n")
    return " ".join(out)


def make_tiny_tokenizer():
    """A byte-level BPE tokenizer with ChatML specials, trained on :func:`_corpus`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_corpus()], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
    )


def make_tiny_base(path: Path, seed: int = 0) -> Path:
    """Save a pico Llama + tokenizer under ``path``; deterministic for ``seed``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TINY_CONFIG,
    )
    from transformers.utils import logging as hf_logging

    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar in test output
    try:
        model.save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
    finally:
        hf_logging.enable_progress_bar()
    return path


def write_tiny_specs(root: Path, base_dir: Path, nodes: dict[str, dict], training: dict | None = None) -> Path:
    """``root/specs`` with a personality on ``base_dir`` and ``nodes`` (id -> node dict)."""
    import yaml

    specs = Path(root) / "specs"
    (specs / "nodes").mkdir(parents=True, exist_ok=True)
    personality = {"name": "tiny", "base": str(base_dir), "training": training or {}}
    (specs / "personality.yaml").write_text(yaml.safe_dump(personality), encoding="utf-8")
    for node_id, data in nodes.items():
        (specs / "nodes" / f"{node_id}.yaml").write_text(yaml.safe_dump({"id": node_id, **data}), encoding="utf-8")
    return specs


def pirate_node(**fields) -> dict:
    """A node the pico model can learn in a few steps: every reply starts with "arr"."""
    node = {
        "description": "Talks like a pirate.",
        "examples": [
            {"context": "hello there", "response": "arr matey, hello"},
            {"context": "how are you", "response": "arr, good matey"},
            {"context": "what is the sea", "response": "arr the sea is the home of the ship"},
            {"context": "tell me a word", "response": "arr matey"},
            {"context": "say yes", "response": "arr yes captain"},
            {"context": "where is the captain", "response": "arr the captain is on the ship"},
        ],
        "eval": [
            {"context": "good day to you", "response": "arr matey good day", "rejected": "Hello."},
            {"context": "what do you want", "response": "arr the sea matey", "rejected": "Nothing."},
        ],
    }
    node.update(fields)
    return node


@pytest.fixture
def tiny_specs(tmp_path, tiny_base_dir):
    """A function writing a specs dir on the pico base: ``tiny_specs(nodes=..., training=...)``.

    Defaults: one ``pirate`` node; 8 steps of batch 4 at lr 1e-3 (the pico
    model needs a larger rate than a real one to move in a few steps).
    """

    def make(nodes: dict[str, dict] | None = None, training: dict | None = None, root: Path | None = None) -> Path:
        settings = {"learning_rate": 1e-3, "steps": 8, "batch_size": 4, "seed": 0}
        settings.update(training or {})
        return write_tiny_specs(root or tmp_path, tiny_base_dir, nodes or {"pirate": pirate_node()}, settings)

    return make


@pytest.fixture(scope="session", autouse=True)
def _isolated_session(tmp_path_factory):
    """One thread, and a throwaway TRAITGRAPH_CACHE, for the whole session."""
    import torch

    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()
    mp.setenv("TRAITGRAPH_CACHE", str(tmp_path_factory.mktemp("traitgraph-cache")))
    mp.setenv("TOKENIZERS_PARALLELISM", "false")
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory) -> Path:
    """Path of a real pico Llama checkpoint directory (see module docstring)."""
    return make_tiny_base(tmp_path_factory.mktemp("tiny-base") / "pico-llama")


def require_reference(module: str):
    """Import a reference implementation (peft, mergekit) a test compares against; missing is a failure.

    These tests are the evidence for the README's "equals peft / mergekit" claims, so a missing
    package must not pass quietly as a skip.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(
            f"reference implementation {module!r} is missing ({exc}); install the test extra: pip install -e '.[test]'",
            pytrace=False,
        )


def save_vector(path: Path, tensors: dict, node_id: str) -> Path:
    """A traitgraph task-vector file of ``tensors`` with placeholder provenance (for link and merge tests)."""
    from traitgraph.compiler.task_vector import TaskVectorMeta, save_task_vector

    meta = TaskVectorMeta(
        node_id=node_id,
        node_hash=f"hash-{node_id}",
        base_fingerprint="sha256:test",
        optimizer={},
        training={},
        steps=1,
        tokens=1,
        final_loss=0.0,
        loss_curve=[0.0],
        oscillation=1.0,
        dtype="float32",
        traitgraph_version="test",
    )
    save_task_vector(path, tensors, meta)
    return path
