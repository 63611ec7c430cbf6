"""The graph resolves a node into one frozen TrainingTarget; the compiler needs nothing else."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from traitgraph.graph import load_specs
from traitgraph.graph.hashing import node_hashes
from traitgraph.graph.target import resolve_target

from specs_factory import default_nodes, write_specs

FINGERPRINT = "sha256:" + "ab" * 32
COMPILER = Path(__file__).resolve().parent.parent / "traitgraph" / "compiler"


def test_target_holds_what_training_needs(tmp_path):
    nodes = default_nodes()
    nodes["beta"]["training"] = {"steps": 3}
    spec = load_specs(write_specs(tmp_path, nodes=nodes))
    hashes = node_hashes(spec, FINGERPRINT)
    target = resolve_target(spec, "beta", FINGERPRINT)
    assert target.node_id == "beta" and target.node_file.name == "beta.yaml"
    assert target.training_hash == hashes["beta"]
    assert target.parents == (("alpha", hashes["alpha"]),)
    assert target.settings.steps == 3 and target.settings.learning_rate == spec.personality.training.learning_rate
    assert [ex.example for ex in target.examples] == list(spec.nodes["beta"].examples)
    assert target.examples[1].where.endswith("beta.yaml: node 'beta', examples[1]")
    assert target.weight_sign == 1 and len(target.replay) == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        target.training_hash = "x"
    assert resolve_target(spec, "beta", FINGERPRINT, hashes) == target  # a value: equal inputs, equal targets


def test_negative_weight_gives_a_negative_sign(tmp_path):
    nodes = default_nodes()
    nodes["delta"]["weight"] = -0.5
    spec = load_specs(write_specs(tmp_path, nodes=nodes))
    assert resolve_target(spec, "delta", FINGERPRINT).weight_sign == -1


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return out


@pytest.mark.parametrize("module", sorted(COMPILER.rglob("*.py")), ids=lambda p: p.name)
def test_compiler_never_imports_spec_loading_or_hashing(module):
    graph = {m for m in _imported_modules(module) if m == "traitgraph.graph" or m.startswith("traitgraph.graph.")}
    values = {
        "traitgraph.graph.schema",
        "traitgraph.graph.target",
        "traitgraph.graph.replay",
        "traitgraph.graph.device_policy",
    }  # a target's values and pure policies, never load or hashing
    assert graph <= values, f"{module.name} imports {graph}"
