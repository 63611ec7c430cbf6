"""Five model families (Llama, Qwen2/Qwen3, Mistral, Gemma/Gemma2/Gemma3, Phi-3) train,
link and evaluate from local directories through ``traitgraph build``, as a user runs it.

The bases are tiny random checkpoints (tests/model_families.py) covering untied
embeddings, grouped-query attention, fused projections and a sharded checkpoint.
Per family the context-frozen loss must also equal the masked full forward,
because families differ in how they cache keys and values (sliding windows,
soft-capping, per-head norms).
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from model_families import FAMILIES, make_family_base
from safetensors import safe_open

from conftest import pirate_node, write_tiny_specs

TRAINING = {"learning_rate": 1e-3, "steps": 3, "batch_size": 4, "seed": 0}


@pytest.fixture(scope="module")
def family_bases(tmp_path_factory):
    """family -> base directory, built once per module."""
    root = tmp_path_factory.mktemp("families")
    return {family: make_family_base(family, root / family) for family in FAMILIES}


def _build(specs, out) -> tuple[int, str]:
    from traitgraph.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        rc = main(["build", str(specs), "-o", str(out)])
    return rc, buf.getvalue()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_trains_links_and_evaluates(family, family_bases, tmp_path):
    from transformers import AutoModelForCausalLM

    base_dir = family_bases[family]
    specs = write_tiny_specs(tmp_path, base_dir, {"pirate": pirate_node()}, TRAINING)
    rc, log = _build(specs, tmp_path / "out")
    assert rc == 0, log[-3000:]

    out = tmp_path / "out"
    lock = json.loads((out / "traitgraph.lock").read_text())
    assert [n["id"] for n in lock["nodes"]] == ["pirate"]
    assert "device" not in lock["nodes"][0]  # trained on the cpu
    report = json.loads((out / "report.json").read_text())
    assert report["base"] and [n["id"] for n in report["nodes"]] == ["pirate"]

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    linked = AutoModelForCausalLM.from_pretrained(out / "checkpoint")
    assert type(linked) is type(base)
    base_sd, linked_sd = base.state_dict(), linked.state_dict()
    assert base_sd.keys() == linked_sd.keys()
    assert any(not torch.equal(base_sd[k], linked_sd[k]) for k in base_sd)  # the behaviour moved weights

    # τ holds the output head as its own tensor exactly when the family unties it.
    from traitgraph.builder.cache import VectorCache

    vector = VectorCache().vector_path(lock["nodes"][0]["training_hash"])
    with safe_open(str(vector), framework="pt") as tv:
        names = set(tv.keys())
        assert {tv.get_tensor(n).dtype for n in names} == {torch.float32}  # small base: vector_dtype auto = float32
    assert ("lm_head.weight" in names) == (not base.config.tie_word_embeddings)


def test_sharded_family_really_is_sharded(family_bases):
    shards = sorted(p.name for p in family_bases["mistral-sharded"].glob("*.safetensors"))
    assert len(shards) > 1 and (family_bases["mistral-sharded"] / "model.safetensors.index.json").is_file()


def test_grouped_query_attention_in_every_family(family_bases):
    from transformers import AutoConfig

    for family, path in family_bases.items():
        config = AutoConfig.from_pretrained(path)
        assert config.num_key_value_heads < config.num_attention_heads, family


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_frozen_context_loss_equals_full_forward(family, family_bases):
    from traitgraph.compiler.base_model import load_model, resolve_base
    from traitgraph.compiler.data import collate, encode_example, pad_id
    from traitgraph.compiler.losses import response_loss
    from traitgraph.graph.schema import Example

    model, tok = load_model(resolve_base(str(family_bases[family])))
    with torch.no_grad(), torch.random.fork_rng():  # away from near-uniform init
        torch.manual_seed(1)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    examples = [
        Example(context="hello there, how are you today? tell me about the sea and the ship", response="good"),
        Example(context="a", response="the long answer is that we can go there and come back home again"),
    ]
    batch = collate([encode_example(tok, ex, max_length=512) for ex in examples], pad_id(tok))
    with torch.no_grad():
        frozen = response_loss(model, batch, "frozen")
        full = response_loss(model, batch, "full")
    assert float(frozen) == pytest.approx(float(full), rel=1e-5, abs=1e-6)
