"""The training loop on the pico model: it learns, τ is exact, runs repeat bit for bit, divergence stops it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from traitgraph.compiler import train as train_module
from traitgraph.compiler.base_model import load_model, resolve_base
from traitgraph.compiler.task_vector import load_task_vector, read_task_vector_meta
from traitgraph.compiler.train import (
    StartWeights,
    apply_task_vectors,
    eval_loss,
    oscillation,
    task_vector,
    train_node,
)
from traitgraph.errors import BuildError, UserError
from traitgraph.graph import load_specs
from traitgraph.graph.target import resolve_target

from conftest import pirate_node


def _setup(specs_dir):
    spec = load_specs(specs_dir)
    return spec, resolve_base(spec.personality.base, spec.specs_dir)


def _train(spec, node_id, base, out, **kwargs):
    """Train one node of ``spec`` as the builder does: resolve its target, then train it."""
    return train_node(resolve_target(spec, node_id, base.fingerprint), base, out, progress=False, **kwargs)


@pytest.fixture
def spy_trained(monkeypatch):
    """Capture the trained weights at the moment τ is taken."""
    seen: dict[str, torch.Tensor] = {}
    real = train_module.task_vector

    def spy(named_params, start, dtype):
        seen.update({n: p.detach().clone() for n, p in named_params})
        return real(named_params, start, dtype)

    monkeypatch.setattr(train_module, "task_vector", spy)
    return seen


def test_training_lowers_the_nodes_loss(tiny_specs, tmp_path):
    spec, base = _setup(tiny_specs())
    out = tmp_path / "pirate.safetensors"
    model, tok = load_model(base)
    cases, examples = spec.nodes["pirate"].spec.eval, spec.nodes["pirate"].examples
    before = eval_loss(model, tok, cases), eval_loss(model, tok, examples)

    meta = _train(spec, "pirate", base, out)

    apply_task_vectors(model, [out])
    after = eval_loss(model, tok, cases), eval_loss(model, tok, examples)
    assert after[0] < 0.8 * before[0] and after[1] < 0.8 * before[1]
    assert meta.node_id == "pirate" and meta.steps == 8 and len(meta.loss_curve) == 8
    assert meta.loss_curve[-1] < meta.loss_curve[0] and meta.tokens > 8 * 4
    assert meta.base_fingerprint == base.fingerprint and meta.optimizer["name"] == "apollo_mini"
    assert meta.optimizer["rank"] == 1  # effective settings, preset filled in
    assert meta.oscillation >= 1.0 and meta.seconds > 0
    from traitgraph.graph.hashing import node_hashes

    assert meta.node_hash == node_hashes(spec, base.fingerprint)["pirate"]
    assert read_task_vector_meta(out) == meta.model_copy(update={"seconds": 0.0})  # wall time: not in the file


def test_tau_is_exact_and_named_like_the_checkpoint(tiny_specs, tmp_path, spy_trained, tiny_base_dir):
    spec, base = _setup(tiny_specs())
    out = tmp_path / "pirate.safetensors"
    _train(spec, "pirate", base, out)
    tau, _ = load_task_vector(out)
    with safe_open(str(tiny_base_dir / "model.safetensors"), framework="pt") as h:
        checkpoint = {k: h.get_tensor(k) for k in h.keys()}
    assert set(tau) <= set(checkpoint) and "lm_head.weight" not in tau  # tied: counted once
    assert "model.embed_tokens.weight" in tau
    for name, delta in tau.items():
        assert delta.dtype == torch.float32 and delta.abs().max() > 0
        torch.testing.assert_close(checkpoint[name] + delta, spy_trained[name], rtol=0, atol=1e-7)


def test_tau_keeps_only_changed_tensors(tiny_base_dir):
    base = resolve_base(str(tiny_base_dir))
    model, _ = load_model(base)
    start = StartWeights(base)
    named = list(model.named_parameters())
    with torch.no_grad():
        model.model.norm.weight[3] += 0.5
    tau = task_vector(named, start, torch.bfloat16)
    assert list(tau) == ["model.norm.weight"] and tau["model.norm.weight"].dtype == torch.bfloat16
    assert tau["model.norm.weight"].nonzero().flatten().tolist() == [3]


def test_vector_dtype_bfloat16(tiny_specs, tmp_path):
    spec, base = _setup(tiny_specs(training={"vector_dtype": "bfloat16", "steps": 2}))
    meta = _train(spec, "pirate", base, tmp_path / "p.safetensors")
    tau, _ = load_task_vector(tmp_path / "p.safetensors")
    assert meta.dtype == "bfloat16" and {t.dtype for t in tau.values()} == {torch.bfloat16}


_TRAIN_SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from pathlib import Path
    from traitgraph.graph import load_specs
    from traitgraph.compiler.base_model import resolve_base
    from traitgraph.compiler.train import train_node
    from traitgraph.graph.target import resolve_target
    spec = load_specs(sys.argv[1])
    base = resolve_base(spec.personality.base, spec.specs_dir)
    train_node(resolve_target(spec, "pirate", base.fingerprint), base, Path(sys.argv[2]), progress=False)
""")


def _tensor_digest(path: Path) -> str:
    tensors, _ = load_task_vector(path)
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def test_two_processes_train_bit_identical_vectors(tiny_specs, tmp_path):
    specs = tiny_specs(training={"steps": 4})
    outs = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    procs = [  # side by side: start-up (imports) dominates
        subprocess.Popen(
            [sys.executable, "-c", _TRAIN_SCRIPT, str(specs), str(out)],
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
        )
        for out in outs
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert _tensor_digest(outs[0]) == _tensor_digest(outs[1])
    assert outs[0].read_bytes() == outs[1].read_bytes()  # header included: no wall time in the file


def test_divergence_stops_with_a_clear_error_and_writes_nothing(tiny_specs, tmp_path):
    spec, base = _setup(
        tiny_specs(training={"learning_rate": 1.0, "optimizer": {"name": "adamw"}, "grad_clip": None, "steps": 12})
    )
    out = tmp_path / "vectors" / "pirate.safetensors"
    with pytest.raises(BuildError, match=r"node 'pirate': training diverged at step \d+") as info:
        _train(spec, "pirate", base, out)
    assert "learning_rate" in str(info.value)
    assert not out.exists()
    assert not out.parent.exists() or not list(out.parent.iterdir())  # no temp file left either


def test_too_long_example_fails_before_training(tiny_specs, tmp_path):
    node = pirate_node()
    node["examples"].append({"context": "word " * 200, "response": "arr"})
    spec, base = _setup(tiny_specs(nodes={"pirate": node}, training={"max_length": 128}))
    with pytest.raises(UserError, match=r"pirate.yaml: node 'pirate', examples\[6\]"):
        _train(spec, "pirate", base, tmp_path / "p.safetensors")
    assert not (tmp_path / "p.safetensors").exists()


def test_refining_node_trains_on_top_of_its_parent(tiny_specs, tmp_path, spy_trained, tiny_base_dir):
    child = pirate_node(edges=[{"to": "pirate", "kind": "refines"}])
    child["examples"] = [{"context": f"question {i}", "response": f"arr captain {i}"} for i in range(4)]
    child["eval"] = [{"context": "question ten", "response": "arr captain 10"}]
    spec, base = _setup(tiny_specs(nodes={"pirate": pirate_node(), "captain": child}, training={"steps": 3}))
    parent = tmp_path / "pirate.safetensors"
    _train(spec, "pirate", base, parent)
    spy_trained.clear()
    with pytest.raises(BuildError, match="needs 1 parent task vector"):
        _train(spec, "captain", base, tmp_path / "c.safetensors")
    _train(spec, "captain", base, tmp_path / "c.safetensors", parent_vectors=[parent])
    tau_parent, _ = load_task_vector(parent)
    tau_child, _ = load_task_vector(tmp_path / "c.safetensors")
    with safe_open(str(tiny_base_dir / "model.safetensors"), framework="pt") as h:
        for name, delta in tau_child.items():  # τ_child is relative to base + τ_parent
            start = h.get_tensor(name) + tau_parent.get(name, 0)
            torch.testing.assert_close(start + delta, spy_trained[name], rtol=0, atol=1e-6)


def test_parent_on_another_base_is_refused(tiny_specs, tmp_path):
    child = pirate_node(edges=[{"to": "pirate", "kind": "refines"}])
    spec, base = _setup(tiny_specs(nodes={"pirate": pirate_node(), "captain": child}, training={"steps": 1}))
    parent = tmp_path / "pirate.safetensors"
    _train(spec, "pirate", base, parent)
    other = type(base)(reference=base.reference, path=base.path, fingerprint="sha256:" + "0" * 64)
    with pytest.raises(BuildError, match="was trained on base"):
        _train(spec, "captain", other, tmp_path / "c.safetensors", parent_vectors=[parent])


def test_oscillation_is_max_over_min_of_the_smoothed_tail():
    assert oscillation([2.0] * 9) == 1.0
    assert oscillation([3.0, 2.0, 1.0, 2.0, 1.0, 2.0]) > 1.0


def test_train_command(tiny_specs, capsys):
    from traitgraph.builder.cache import VectorCache
    from traitgraph.cli import main
    from traitgraph.graph.hashing import node_hashes

    specs = tiny_specs()
    assert main(["train", str(specs), "pirate", "--no-progress", "--general-lines", "4"]) == 0
    out = capsys.readouterr().out
    assert "train:pirate: 8 steps" in out and "eval-case loss (2 cases)" in out and "general-text loss (4 lines)" in out
    spec, base = _setup(specs)
    h = node_hashes(spec, base.fingerprint)["pirate"]
    assert VectorCache().is_fresh(h) and str(VectorCache().vector_path(h)) in out
