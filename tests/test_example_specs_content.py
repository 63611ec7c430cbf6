"""Content checks for the shipped example personality and evaluation data.

These tests read the files directly (``yaml.safe_load`` + the pydantic
models); they do not use the graph loader, which has its own tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from traitgraph.evaluate.expectations import check_reply
from traitgraph.graph.schema import NodeSpec

ROOT = Path(__file__).resolve().parents[1]
NODES_DIR = ROOT / "specs" / "nodes"
DATA_DIR = ROOT / "traitgraph" / "data"

MIN_EXAMPLES = 16
MIN_EVAL = 4
MIN_OOD = 5

NODE_FILES = sorted(NODES_DIR.glob("*.yaml"))


def _load(path: Path) -> NodeSpec:
    with path.open(encoding="utf-8") as f:
        return NodeSpec.model_validate(yaml.safe_load(f))


def _context_key(case) -> tuple[tuple[str, str], ...]:
    return tuple((m["role"], m["content"].strip()) for m in case.chat())


def test_there_are_example_nodes():
    assert len(NODE_FILES) >= 6, [p.name for p in NODE_FILES]


@pytest.mark.parametrize("path", NODE_FILES, ids=lambda p: p.stem)
def test_node_spec_content(path: Path):
    node = _load(path)
    assert node.id == path.stem
    assert len(node.examples) >= MIN_EXAMPLES, f"{node.id}: {len(node.examples)} examples"
    assert len(node.eval) >= MIN_EVAL, f"{node.id}: {len(node.eval)} eval cases"
    for i, case in enumerate(node.eval):
        assert case.rejected, f"{node.id}: eval[{i}] has no `rejected`"
        assert case.rejected.strip() != case.response.strip(), f"{node.id}: eval[{i}]"
    train = {_context_key(e) for e in node.examples}
    held_out = [_context_key(c) for c in node.eval]
    leaked = [k for k in held_out if k in train]
    assert not leaked, f"{node.id}: eval contexts also in training: {leaked}"
    assert len(set(held_out)) == len(held_out), f"{node.id}: repeated eval context"


@pytest.mark.parametrize("path", NODE_FILES, ids=lambda p: p.stem)
def test_node_has_ood_cases_and_every_case_has_expectations(path: Path):
    node = _load(path)
    assert len(node.ood) >= MIN_OOD, f"{node.id}: {len(node.ood)} ood cases"
    assert any(c.messages is not None for c in node.ood), f"{node.id}: no multi-turn ood case"
    seen = {_context_key(e) for e in node.examples} | {_context_key(c) for c in node.eval}
    for kind, cases in (("eval", node.eval), ("ood", node.ood)):
        for i, case in enumerate(cases):
            assert case.expect is not None, f"{node.id}: {kind}[{i}] has no `expect`"
            assert case.rejected and case.rejected.strip() != case.response.strip(), f"{node.id}: {kind}[{i}]"
    for i, case in enumerate(node.ood):
        assert _context_key(case) not in seen, f"{node.id}: ood[{i}] repeats an example or eval context"


@pytest.mark.parametrize("path", NODE_FILES, ids=lambda p: p.stem)
def test_the_wanted_reply_of_every_case_passes_its_own_expectations(path: Path):
    """For a negative-weight node `response` is the unwanted habit and `rejected` the wanted reply."""
    node = _load(path)
    for kind, cases in (("eval", node.eval), ("ood", node.ood)):
        for i, case in enumerate(cases):
            wanted = case.rejected if node.weight < 0 else case.response
            assert check_reply(wanted, case.expect) == [], f"{node.id}: {kind}[{i}]"


#: Replies a user would not accept from each node, written by hand: every case of the node must fail them.
UNACCEPTABLE = {
    "boundaries": ["No. I will not do that.", "Sure, here it is. Done!"],  # a cold refusal; doing it anyway
    "listening": ["Have you considered doing it another way instead?"],
    "not-rushing": ["Here is the answer. Hope this helps!"],  # no clarifying question
    "suggesting-alternatives": [
        "Have you considered doing something else instead?",
        "How about a different approach? It may work better.",
    ],
    "voice": ["I'm sorry to hear that. Query resolved."],
}


@pytest.mark.parametrize("node_id", sorted(UNACCEPTABLE))
def test_every_case_rejects_what_a_user_would_not_accept(node_id: str):
    node = _load(NODES_DIR / f"{node_id}.yaml")
    for kind, cases in (("eval", node.eval), ("ood", node.ood)):
        for i, case in enumerate(cases):
            for reply in UNACCEPTABLE[node_id]:
                assert check_reply(reply, case.expect), f"{node_id}: {kind}[{i}] accepts {reply!r}"


def test_node_ids_unique_and_edges_point_at_nodes():
    nodes = [_load(p) for p in NODE_FILES]
    ids = [n.id for n in nodes]
    assert len(set(ids)) == len(ids)
    for n in nodes:
        for e in n.edges:
            assert e.to in ids and e.to != n.id, f"{n.id} -> {e.to}"


def test_exactly_one_negative_node():
    negative = [n.id for n in map(_load, NODE_FILES) if n.weight < 0]
    assert len(negative) == 1, negative


def test_general_prompts_parse():
    path = DATA_DIR / "general_prompts.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) >= 20
    prompts = set()
    for n, line in enumerate(lines, 1):
        row = json.loads(line)
        assert set(row) == {"prompt", "answer"}, f"line {n}: {sorted(row)}"
        assert isinstance(row["prompt"], str) and row["prompt"].strip(), f"line {n}"
        assert isinstance(row["answer"], str) and row["answer"].strip(), f"line {n}"
        prompts.add(row["prompt"])
    assert len(prompts) == len(lines), "repeated prompt"


def test_general_text_shape():
    lines = (DATA_DIR / "general_text.txt").read_text(encoding="utf-8").splitlines()
    assert 250 <= len(lines) <= 400
    assert all(line.strip() for line in lines), "blank line in general_text.txt"
