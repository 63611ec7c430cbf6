"""Training hashes decide what retrains; these are the README's rebuild rules.

The default specs (``specs_factory``) are a chain ``alpha <- beta <- gamma``
of ``refines`` edges plus ``delta``, which is only ``related`` to alpha and
``conflicts`` with gamma. Each test edits the specs and checks exactly which
nodes' hashes moved.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from traitgraph.graph import load_specs
from traitgraph.graph.hashing import node_hashes

from specs_factory import default_nodes, default_personality, edit_yaml, eval_case, mutated, write_specs

FINGERPRINT = "sha256:" + "ab" * 32
ALL = {"alpha", "beta", "gamma", "delta"}


def hashes(specs: Path, fingerprint: str = FINGERPRINT) -> dict[str, str]:
    return node_hashes(load_specs(specs), fingerprint)


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    assert before.keys() == after.keys()
    return {n for n in before if before[n] != after[n]}


def rewrite_every_yaml(specs: Path, render: Callable[[dict], str]) -> None:
    for file in [specs / "personality.yaml", *sorted((specs / "nodes").glob("*.yaml"))]:
        old = file.read_text(encoding="utf-8")
        new = render(yaml.safe_load(old))
        assert new != old
        file.write_text(new, encoding="utf-8")


def reversed_keys(obj):
    if isinstance(obj, dict):
        return {k: reversed_keys(v) for k, v in reversed(list(obj.items()))}
    if isinstance(obj, list):
        return [reversed_keys(v) for v in obj]
    return obj


def with_comments(data: dict) -> str:
    body = yaml.safe_dump(data, sort_keys=False, width=10_000)
    lines = ["# A comment at the top.", "", *(f"{line}   # trailing comment" for line in body.splitlines())]
    return "\n\n".join(lines) + "\n"


def folded_strings(data: dict) -> str:
    """Block style with every string written as a `>-` folded block scalar."""

    class Folded(yaml.SafeDumper):
        pass

    Folded.add_representer(str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style=">"))
    return yaml.dump(data, Dumper=Folded, sort_keys=True, indent=4, width=20)  # long values fold over lines


REFORMATS: dict[str, Callable[[dict], str]] = {
    "flow style": lambda d: yaml.safe_dump(d, default_flow_style=True, width=10_000),
    "keys reversed, indent 4": lambda d: yaml.safe_dump(reversed_keys(d), sort_keys=False, indent=4),
    "comments and blank lines": with_comments,
    "JSON (a YAML subset)": lambda d: json.dumps(d, indent=2),
    "folded block scalars": folded_strings,
}


# --------------------------------------------------------------------------- formatting


@pytest.mark.parametrize("style", REFORMATS)
def test_reformatting_yaml_keeps_every_hash(style, tmp_path):
    specs = write_specs(tmp_path)
    before = hashes(specs)

    rewrite_every_yaml(specs, REFORMATS[style])

    assert hashes(specs) == before


def test_number_spelling_keeps_the_hash(tmp_path):
    specs = write_specs(tmp_path)
    before = hashes(specs)
    text = (specs / "personality.yaml").read_text()
    assert "learning_rate: 0.0001" in text
    (specs / "personality.yaml").write_text(text.replace("learning_rate: 0.0001", "learning_rate: 1.0e-4"))
    assert hashes(specs) == before


def test_hashes_are_64_hex_and_differ_between_nodes(tmp_path):
    h = hashes(write_specs(tmp_path))
    assert set(h) == ALL
    assert all(re.fullmatch(r"[0-9a-f]{64}", v) for v in h.values())
    assert len(set(h.values())) == len(h)


def test_hashes_are_the_same_in_another_process(tmp_path):
    specs = write_specs(tmp_path)
    code = (
        "import json, sys\n"
        "from traitgraph.graph import load_specs\n"
        "from traitgraph.graph.hashing import node_hashes\n"
        "print(json.dumps(node_hashes(load_specs(sys.argv[1]), sys.argv[2])))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # set/dict order must not leak into a hash
    result = subprocess.run(
        [sys.executable, "-c", code, str(specs), FINGERPRINT],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=True,
    )
    assert json.loads(result.stdout) == hashes(specs)


# --------------------------------------------------------------------------- what retrains


def change_example(n: dict) -> None:
    n["examples"][1]["response"] += " Now different."


@pytest.mark.parametrize(
    ("node", "retrains"),
    [
        ("alpha", {"alpha", "beta", "gamma"}),  # beta refines alpha, gamma refines beta
        ("beta", {"beta", "gamma"}),
        ("gamma", {"gamma"}),
        ("delta", {"delta"}),  # related/conflicts edges carry nothing
    ],
)
def test_changing_one_example_retrains_the_node_and_what_refines_it(node, retrains, tmp_path):
    specs = write_specs(tmp_path)
    before = hashes(specs)

    edit_yaml(specs / f"nodes/{node}.yaml", change_example)

    assert changed(before, hashes(specs)) == retrains


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda n: n["examples"].append({"context": "New?", "response": "New."}), id="add example"),
        pytest.param(lambda n: n["examples"].pop(), id="remove example"),
        pytest.param(lambda n: n["examples"].reverse(), id="reorder examples"),
        pytest.param(lambda n: n["examples"][0].update(context="Changed context?"), id="change context"),
    ],
)
def test_every_change_to_examples_retrains(edit, tmp_path):
    specs = write_specs(tmp_path)
    before = hashes(specs)
    edit_yaml(specs / "nodes/gamma.yaml", edit)
    assert changed(before, hashes(specs)) == {"gamma"}


NODE_ONLY_EDITS: dict[str, Callable[[dict], None]] = {
    "weight": lambda n: n.update(weight=-2.5),
    "description": lambda n: n.update(description="Something else entirely."),
    "add an eval case": lambda n: n["eval"].append(eval_case(7, "extra")),
    "change an eval case": lambda n: n["eval"][0].update(response="Another good answer.", rejected="Worse."),
    "add a related edge": lambda n: n.setdefault("edges", []).append({"to": "gamma", "kind": "related"}),
    "add a conflicts edge": lambda n: n.setdefault("edges", []).append({"to": "delta", "kind": "conflicts"}),
}


@pytest.mark.parametrize("what", NODE_ONLY_EDITS)
@pytest.mark.parametrize("node", ["alpha", "beta"])
def test_link_and_eval_only_edits_retrain_nothing(what, node, tmp_path):
    specs = write_specs(tmp_path)
    before = hashes(specs)
    edit_yaml(specs / f"nodes/{node}.yaml", NODE_ONLY_EDITS[what])
    assert hashes(specs) == before


def test_removing_documentation_edges_retrains_nothing(tmp_path):
    specs = write_specs(tmp_path)
    before = hashes(specs)
    edit_yaml(specs / "nodes/delta.yaml", lambda n: n.pop("edges"))
    assert hashes(specs) == before


PERSONALITY_ONLY_EDITS: dict[str, Callable[[dict], None]] = {
    "name": lambda p: p.update(name="renamed"),
    "description": lambda p: p.update(description="Different words."),
    "merge method": lambda p: p["merge"].update(method="task_arithmetic"),
    "merge density": lambda p: p["merge"].update(density=0.7),
    "merge lambda": lambda p: p["merge"].update({"lambda": 0.5}),
    "eval budget": lambda p: p["eval"].update(max_retention_loss_pct=3.0, min_behaviour_gain=0.1),
}


@pytest.mark.parametrize("what", PERSONALITY_ONLY_EDITS)
def test_merge_and_eval_settings_retrain_nothing(what, tmp_path):
    specs = write_specs(tmp_path)
    before = hashes(specs)
    edit_yaml(specs / "personality.yaml", PERSONALITY_ONLY_EDITS[what])
    assert hashes(specs) == before


def test_a_refines_edge_is_a_training_input(tmp_path):
    specs = write_specs(tmp_path)
    before = hashes(specs)
    edit_yaml(specs / "nodes/delta.yaml", lambda n: n["edges"].append({"to": "beta", "kind": "refines"}))
    assert changed(before, hashes(specs)) == {"delta"}


# --------------------------------------------------------------------------- training settings


@pytest.mark.parametrize(
    ("default", "override"),
    [
        ({"steps": 30}, {"steps": 10}),
        ({"learning_rate": 3e-4}, {"learning_rate": 1e-3}),
        ({"seed": 7}, {"seed": 3}),
        ({"optimizer": {"rank": 4}}, {"optimizer": {"rank": 2}}),  # nested fields merge one by one
    ],
    ids=["steps", "learning_rate", "seed", "optimizer.rank"],
)
def test_a_training_default_retrains_every_node_that_does_not_override_it(default, override, tmp_path):
    # delta overrides the field (and nothing refines delta); beta overrides an unrelated field.
    nodes = mutated(delta={"training": override}, beta={"training": {"warmup_steps": 2}})
    specs = write_specs(tmp_path, nodes=nodes)
    before = hashes(specs)

    def edit(p: dict) -> None:
        key, value = next(iter(default.items()))
        if isinstance(value, dict):
            p["training"].setdefault(key, {}).update(value)
        else:
            p["training"][key] = value

    edit_yaml(specs / "personality.yaml", edit)

    assert changed(before, hashes(specs)) == {"alpha", "beta", "gamma"}


@pytest.mark.parametrize(
    ("node", "retrains"),
    [("alpha", {"alpha", "beta", "gamma"}), ("gamma", {"gamma"}), ("delta", {"delta"})],
)
def test_a_node_override_retrains_that_node_and_its_dependents(node, retrains, tmp_path):
    specs = write_specs(tmp_path)
    before = hashes(specs)
    edit_yaml(specs / f"nodes/{node}.yaml", lambda n: n.update(training={"steps": 99, "optimizer": {"rank": 3}}))
    assert changed(before, hashes(specs)) == retrains


def test_an_override_equal_to_the_default_retrains_nothing(tmp_path):
    specs = write_specs(tmp_path)
    before = hashes(specs)
    defaults = default_personality("unused")["training"]
    edit_yaml(
        specs / "nodes/beta.yaml",
        lambda n: n.update(training={"steps": defaults["steps"], "optimizer": {"name": defaults["optimizer"]["name"]}}),
    )
    assert hashes(specs) == before


def test_a_block_in_a_node_overrides_only_the_fields_it_writes(tmp_path):
    """``replay: {source: general}`` in a node keeps the personality's replay fraction and
    its anchor (it once silently turned replay off: fraction fell back to 0); so editing
    the personality's fraction retrains that node too. ``anchor: null`` turns the anchor off."""
    personality = default_personality("unused")
    personality["training"].update(replay={"fraction": 0.5, "source": "other_nodes"}, anchor={"kl": 1.0})
    nodes = mutated(delta={"training": {"replay": {"source": "general"}}}, gamma={"training": {"anchor": None}})
    specs = write_specs(tmp_path, personality=personality, nodes=nodes)
    spec = load_specs(specs)
    delta, gamma = spec.training_settings("delta"), spec.training_settings("gamma")
    assert (delta.replay.fraction, delta.replay.source, delta.anchor.kl) == (0.5, "general", 1.0)
    assert gamma.anchor is None and gamma.replay.source == "other_nodes"
    before = hashes(specs)
    edit_yaml(specs / "personality.yaml", lambda p: p["training"]["replay"].update(fraction=0.25))
    assert changed(before, hashes(specs)) == {"alpha", "beta", "gamma", "delta"}


def test_a_node_block_is_checked_once_merged(tmp_path):
    """`anchor: {kl: 0}` in a node over the personality's `{l2: 0.05, kl: 1}` leaves a pull (l2):
    valid, although the same block alone would pull nowhere."""
    personality = default_personality("unused")
    personality["training"].update(replay={"fraction": 0.5, "source": "general"}, anchor={"l2": 0.05, "kl": 1.0})
    specs = write_specs(tmp_path, personality=personality, nodes=mutated(delta={"training": {"anchor": {"kl": 0}}}))
    anchor = load_specs(specs).training_settings("delta").anchor
    assert (anchor.l2, anchor.kl) == (0.05, 0.0)


def test_replay_of_other_nodes_makes_their_examples_an_input(tmp_path):
    nodes = mutated(delta={"training": {"replay": {"fraction": 0.25, "source": "other_nodes"}}})
    specs = write_specs(tmp_path, nodes=nodes)
    before = hashes(specs)
    edit_yaml(specs / "nodes/gamma.yaml", change_example)
    assert changed(before, hashes(specs)) == {"gamma", "delta"}


def test_turning_replay_on_retrains(tmp_path):
    specs = write_specs(tmp_path)
    before = hashes(specs)
    edit_yaml(specs / "nodes/delta.yaml", lambda n: n.update(training={"replay": {"fraction": 0.1}}))
    assert changed(before, hashes(specs)) == {"delta"}


# --------------------------------------------------------------------------- base and trainer


def test_a_new_base_fingerprint_retrains_everything(tmp_path):
    specs = write_specs(tmp_path)
    before = hashes(specs)
    after = hashes(specs, fingerprint="sha256:" + "cd" * 32)
    assert changed(before, after) == ALL


def test_a_new_base_reference_retrains_everything(tmp_path):
    specs = write_specs(tmp_path)
    before = hashes(specs)
    edit_yaml(specs / "personality.yaml", lambda p: p.update(base="some-org/another-model"))
    assert changed(before, hashes(specs)) == ALL


def test_a_new_trainer_version_retrains_everything(tmp_path, monkeypatch):
    specs = write_specs(tmp_path)
    before = hashes(specs)
    monkeypatch.setattr("traitgraph.graph.hashing.TRAINER_VERSION", "999")
    assert changed(before, hashes(specs)) == ALL


# --------------------------------------------------------------------------- examples_file


def with_examples_file(tmp_path: Path, lines: list[dict]) -> Path:
    return write_specs(
        tmp_path,
        nodes=mutated(beta={"examples_file": "beta.jsonl"}),
        files={"nodes/beta.jsonl": "".join(json.dumps(x) + "\n" for x in lines)},
    )


def test_examples_file_content_is_a_training_input(tmp_path):
    specs = with_examples_file(tmp_path, [{"context": "From a file?", "response": "Yes."}])
    before = hashes(specs)

    (specs / "nodes/beta.jsonl").write_text(json.dumps({"context": "From a file?", "response": "Yes!"}) + "\n")

    assert changed(before, hashes(specs)) == {"beta", "gamma"}


def test_examples_file_formatting_and_location_do_not_matter(tmp_path):
    """Hashes come from parsed examples, not file bytes or paths."""
    line = {"context": "From a file?", "response": "Yes."}
    specs = with_examples_file(tmp_path, [line])
    before = hashes(specs)

    (specs / "nodes/beta.jsonl").unlink()
    (specs / "data").mkdir()
    (specs / "data/beta-more.jsonl").write_text("\n" + json.dumps(dict(reversed(line.items())), indent=None) + "\n\n")
    edit_yaml(specs / "nodes/beta.yaml", lambda n: n.update(examples_file="../data/beta-more.jsonl"))

    assert hashes(specs) == before


def test_moving_inline_examples_into_an_examples_file_keeps_the_hash(tmp_path):
    specs = write_specs(tmp_path)
    before = hashes(specs)
    inline = default_nodes()["beta"]["examples"]

    (specs / "nodes/beta.jsonl").write_text("".join(json.dumps(x) + "\n" for x in inline))
    edit_yaml(specs / "nodes/beta.yaml", lambda n: n.update(examples=[], examples_file="beta.jsonl"))

    assert hashes(specs) == before
