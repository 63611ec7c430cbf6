"""training.trainable (only matching tensors change, and only they are in τ) and
training.anchor (an L2 pull and a KL pull toward the start both shrink what changes)."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors import safe_open
from spec_errors import assert_bad_node_training

from traitgraph.compiler.base_model import load_model, resolve_base
from traitgraph.compiler.task_vector import load_task_vector
from traitgraph.compiler.train import train_node
from traitgraph.errors import UserError
from traitgraph.graph import load_specs
from traitgraph.graph.hashing import node_hashes
from traitgraph.graph.target import resolve_target

from specs_factory import default_nodes, write_specs

FP = "sha256:" + "ab" * 32


def _train(specs, tmp_path, name="p"):
    spec = load_specs(specs)
    base = resolve_base(spec.personality.base, spec.specs_dir)
    out = tmp_path / f"{name}.safetensors"
    train_node(resolve_target(spec, "pirate", base.fingerprint), base, out, progress=False)
    return load_task_vector(out)[0], base


def _norm(tau: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum((t.float() ** 2).sum() for t in tau.values())))


def test_only_matching_parameters_change(tiny_specs, tmp_path, tiny_base_dir):
    specs = tiny_specs(training={"trainable": ["model.layers.1.mlp.*", "model.norm.weight"]})
    tau, _ = _train(specs, tmp_path)
    with safe_open(str(tiny_base_dir / "model.safetensors"), framework="pt") as h:
        names = list(h.keys())
    expected = {n for n in names if re.fullmatch(r"model\.layers\.1\.mlp\.\w+\.weight|model\.norm\.weight", n)}
    assert len(expected) == 4  # gate, up, down of layer 1, and the final norm
    assert set(tau) == expected and all(t.abs().max() > 0 for t in tau.values())


def test_a_glob_matching_nothing_is_a_clear_error(tiny_specs, tmp_path):
    specs = tiny_specs(training={"trainable": ["model.layers.1.mlp.*", "model.layer.*.attn.*"]})
    with pytest.raises(
        UserError,
        match=r"pirate.yaml: node 'pirate', field training.trainable\[1\]: "
        r"'model.layer.\*.attn.\*' matches no parameter",
    ):
        _train(specs, tmp_path)
    assert not (tmp_path / "p.safetensors").exists()


def test_l2_anchor_strength_shrinks_tau(tiny_specs, tmp_path):
    norms = []
    for i, l2 in enumerate([None, 0.05, 0.2]):
        training = {"steps": 8} | ({"anchor": {"l2": l2}} if l2 else {})
        tau, _ = _train(tiny_specs(training=training, root=tmp_path / str(i)), tmp_path, f"l2-{i}")
        norms.append(_norm(tau))
    assert norms[0] > norms[1] > norms[2] > 0


def _replay_kl(model, ref, tok, lines: list[str]) -> float:
    """Mean next-token KL(ref ‖ model) over plain text lines (an independent full forward)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for line in lines:
            ids = torch.tensor([tok(line, add_special_tokens=False)["input_ids"][:64]])
            q = torch.log_softmax(ref(ids).logits.float(), -1)
            p = torch.log_softmax(model(ids).logits.float(), -1)
            total += float((q.exp() * (q - p)).sum(-1).sum())
            count += ids.shape[1]
    return total / count


def test_kl_anchor_keeps_the_replay_distribution_closer(tiny_specs, tmp_path):
    from traitgraph.compiler.weights import apply_task_vectors
    from traitgraph.graph.replay import shipped_text

    replay = {"fraction": 0.5, "source": "general"}
    runs = {}
    for name, anchor in [("free", None), ("kl", {"kl": 2.0})]:
        training = {"steps": 8, "learning_rate": 3e-3, "replay": replay} | ({"anchor": anchor} if anchor else {})
        spec = load_specs(tiny_specs(training=training, root=tmp_path / name))
        base = resolve_base(spec.personality.base, spec.specs_dir)
        out = tmp_path / f"{name}.safetensors"
        train_node(resolve_target(spec, "pirate", base.fingerprint), base, out, progress=False)
        runs[name] = (out, base)
    ref, tok = load_model(runs["free"][1])
    lines = list(shipped_text("replay_text.txt")[:24])
    kls = {}
    for name, (out, base) in runs.items():
        model, _ = load_model(base)
        apply_task_vectors(model, [out])
        kls[name] = _replay_kl(model, ref, tok, lines)
    assert kls["kl"] < 0.8 * kls["free"], kls


def test_kl_anchor_without_replay_is_a_clear_error(tiny_specs):
    spec = load_specs(tiny_specs(training={"anchor": {"kl": 0.5}}))
    with pytest.raises(UserError, match=r"pirate.yaml: node 'pirate', field training.anchor.kl: .*replay is off"):
        resolve_target(spec, "pirate", FP)


@pytest.mark.parametrize(
    "training", [{"trainable": ["model.layers.1.*"]}, {"anchor": {"l2": 0.1}}, {"anchor": {"kl": 0.1}}]
)
def test_scope_and_anchor_change_the_hash(tmp_path, training):
    nodes = default_nodes()
    before = node_hashes(load_specs(write_specs(tmp_path, nodes=nodes)), FP)
    nodes["alpha"]["training"] = training
    after = node_hashes(load_specs(write_specs(tmp_path, nodes=nodes)), FP)
    assert before["alpha"] != after["alpha"] and before["delta"] == after["delta"]


@pytest.mark.parametrize(
    "training, field, says",
    [
        ({"trainable": []}, "training.trainable", "at least one glob"),
        ({"trainable": ["ok.*", " "]}, "training.trainable", "empty glob"),
        ({"anchor": {}}, "training.anchor", "does nothing"),
        ({"anchor": {"l2": 1.5}}, "training.anchor.l2", "less than 1"),
        ({"anchor": {"kl": -1}}, "training.anchor.kl", "greater than or equal to 0"),
        ({"anchor": {"l3": 0.1}}, "training.anchor.l3", "unknown key"),
    ],
)
def test_bad_scope_and_anchor_values_name_file_node_and_field(tmp_path, capsys, training, field, says):
    assert_bad_node_training(tmp_path, capsys, training, field, says)
