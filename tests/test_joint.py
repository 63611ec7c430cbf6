"""The joint reference: one vector trained on every positive node's examples, cached like a node."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import pirate_node, write_tiny_specs
from traitgraph.cli import main
from traitgraph.errors import BuildError
from traitgraph.evaluate.joint import JOINT_ID, joint_spec
from traitgraph.graph import load_specs
from traitgraph.graph.hashing import canonical_json, sha256_hex, training_payload


def _nodes(shouting_weight: float = 1.0, calm_weight: float = -0.5) -> dict:
    from tests.test_sweep import shouting_node

    calm = shouting_node() | {
        "description": "Whispers.",
        "weight": calm_weight,
        "examples": [{"context": "hi", "response": "hi..."}],
    }
    return {"pirate": pirate_node(), "shouting": shouting_node() | {"weight": shouting_weight}, "calm": calm}


def test_joint_spec_trains_on_every_positive_node_for_their_summed_steps(tmp_path, tiny_base_dir):
    specs = write_tiny_specs(tmp_path, tiny_base_dir, _nodes(), {"steps": 3})
    spec = load_specs(specs)
    joint = joint_spec(spec)
    examples = joint.nodes[JOINT_ID].examples
    assert examples == spec.nodes["pirate"].examples + spec.nodes["shouting"].examples  # not calm's (negative)
    assert joint.training_settings(JOINT_ID).steps == 6  # two positive nodes × 3 steps
    # the negative node's examples are not part of the joint reference, so they do not change its hash
    h = sha256_hex(canonical_json(training_payload(joint, JOINT_ID, "fp", {})))
    other = joint_spec(
        load_specs(write_tiny_specs(tmp_path / "b", tiny_base_dir, _nodes(calm_weight=-2.0), {"steps": 3}))
    )
    assert sha256_hex(canonical_json(training_payload(other, JOINT_ID, "fp", {}))) == h


def test_the_reserved_id_is_refused(tmp_path, tiny_base_dir):
    spec = load_specs(write_tiny_specs(tmp_path, tiny_base_dir, {JOINT_ID: pirate_node()}))
    with pytest.raises(BuildError, match="reserved id"):
        joint_spec(spec)


def test_build_reports_each_node_against_the_joint_reference_trained_once(tmp_path, tiny_base_dir, monkeypatch):
    monkeypatch.setenv("TRAITGRAPH_EVAL_THREADS", "1")
    monkeypatch.setenv("TRAITGRAPH_CACHE", str(tmp_path / "cache"))  # counts the joint vectors of this build only
    specs = write_tiny_specs(
        tmp_path, tiny_base_dir, _nodes(), {"learning_rate": 1e-3, "steps": 4, "batch_size": 4, "seed": 0}
    )
    doc = yaml.safe_load((specs / "personality.yaml").read_text())
    doc["eval"] = {
        "joint_reference": True,
        "max_retention_loss_pct": 1000.0,
        "min_behaviour_gain": -1000.0,
        "max_new_tokens": 4,
    }
    (specs / "personality.yaml").write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    assert main(["build", str(specs), "-o", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    for node in report["nodes"]:
        assert node["gain_joint"] is not None
        directed = [node["direction"] * node[k] for k in ("gain_linked", "gain_joint")]
        assert node["kept_of_joint"] == (pytest.approx(directed[0] / directed[1]) if directed[1] > 0 else None)
    defined = any(n["kept_of_joint"] is not None for n in report["nodes"])
    assert ("Against the joint reference" in (out / "report.md").read_text()) == defined

    def joint_records() -> list:
        records = (tmp_path / "cache" / "vectors").glob("*.json")
        return [r for r in records if json.loads(r.read_text()).get("node_id") == JOINT_ID]

    assert len(joint_records()) == 1
    assert main(["eval", str(specs), "-o", str(out), "--threads", "1"]) == 0  # a cache hit: nothing retrains
    assert len(joint_records()) == 1
