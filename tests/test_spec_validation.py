"""Every spec mistake a user can make is reported, located, and never a traceback.

Each case below breaks one rule of a valid specs directory (see
``specs_factory``) and says where the problem must be reported: the file, the
node, the field, and words of the message. For each case:

* ``load_specs`` raises ``SpecError`` holding exactly that problem;
* ``traitgraph check`` exits 2 and prints the file and field on stderr, with
  no traceback, and writes nothing anywhere.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from traitgraph.cli import main
from traitgraph.errors import SpecError
from traitgraph.graph import load_specs

from specs_factory import (
    default_nodes,
    default_personality,
    mutated,
    node,
    snapshot,
    write_specs,
)

VALID_NODE_YAML = """\
id: beta
description: The beta behaviour.
examples:
  - {context: "Question 0 about beta?", response: "Answer 0 about beta."}
eval:
  - {context: "Held-out question about beta?", response: "Good.", rejected: "Bad."}
edges:
  - {to: alpha, kind: refines}
"""


@dataclass
class Case:
    """One broken rule and where its problem must be reported."""

    make: Callable[[Path], Path]
    """Writes the broken specs under tmp_path and returns the specs dir."""
    file: str
    """The file the problem names, relative to the specs dir."""
    node: str | None
    field: str | None
    says: str
    """Words the message must contain."""
    hint: str | None = None
    """Words the hint must contain."""


def nodes_with(**changes) -> Callable[[Path], Path]:
    return lambda tmp: write_specs(tmp, nodes=mutated(**changes))


def personality_with(edit: Callable[[dict], None]) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        p = default_personality(tmp / "base-model")
        edit(p)
        return write_specs(tmp, personality=p)

    return make


def personality_and_nodes_with(edit: Callable[[dict], None], **changes) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        p = default_personality(tmp / "base-model")
        edit(p)
        return write_specs(tmp, personality=p, nodes=mutated(**changes))

    return make


def raw_file(rel: str, text: str, **changes) -> Callable[[Path], Path]:
    return lambda tmp: write_specs(tmp, nodes=mutated(**changes), files={rel: text})


def raw_bytes(rel: str, data: bytes, **changes) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        specs = write_specs(tmp, nodes=mutated(**changes))
        (specs / rel).write_bytes(data)
        return specs

    return make


def extra_nodes(**extra: dict) -> Callable[[Path], Path]:
    return lambda tmp: write_specs(tmp, nodes={**default_nodes(), **extra})


def removed(rel: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        specs = write_specs(tmp)
        target = specs / rel
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        return specs

    return make


def set_in(path: str, value) -> Callable[[dict], None]:
    """``set_in("training.steps", 0)`` sets ``d["training"]["steps"] = 0``."""

    def edit(d: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            d = d.setdefault(key, {})
        d[last] = value

    return edit


def edge(kind: str, to: str) -> dict:
    return {"to": to, "kind": kind}


BETA = "nodes/beta.yaml"
PERSONALITY = "personality.yaml"

CASES: dict[str, Case] = {
    # ----------------------------------------------------------------- reading files
    "yaml syntax error": Case(
        raw_file(BETA, VALID_NODE_YAML.replace("The beta behaviour.", "Note: colons: break it")),
        BETA,
        "beta",
        None,
        "YAML syntax error at line 2",
        hint="quote",
    ),
    "yaml duplicate key": Case(
        raw_file(BETA, VALID_NODE_YAML + "examples:\n  - {context: c, response: r}\n"),
        BETA,
        "beta",
        None,
        "duplicate key 'examples' (first given at line 3)",
    ),
    "empty node file": Case(raw_file(BETA, "# nothing yet\n"), BETA, "beta", None, "file is empty"),
    "node file is a list": Case(
        raw_file(BETA, "- id: beta\n- description: x\n"),
        BETA,
        "beta",
        None,
        "expected a mapping",
    ),
    "personality file is a string": Case(
        raw_file(PERSONALITY, "just a name\n"),
        PERSONALITY,
        None,
        None,
        "expected a mapping",
    ),
    # ----------------------------------------------------------------- schema
    "unknown top-level key": Case(
        nodes_with(beta={"wieght": 2.0}),
        BETA,
        "beta",
        "wieght",
        "unknown key",
        hint="spelling",
    ),
    "unknown key in personality training": Case(
        personality_with(set_in("training.stepz", 10)),
        PERSONALITY,
        None,
        "training.stepz",
        "unknown key",
    ),
    "unknown key in node training optimizer": Case(
        nodes_with(beta={"training": {"optimizer": {"rnak": 4}}}),
        BETA,
        "beta",
        "training.optimizer.rnak",
        "unknown key",
    ),
    "unknown key in an example": Case(
        nodes_with(beta=lambda n: n["examples"][1].update(mood="happy")),
        BETA,
        "beta",
        "examples[1].mood",
        "unknown key",
    ),
    "wrong type": Case(nodes_with(beta={"weight": "high"}), BETA, "beta", "weight", "valid number"),
    "missing required node field": Case(
        nodes_with(beta=lambda n: n.pop("description")),
        BETA,
        "beta",
        "description",
        "Field required",
        hint="add the field",
    ),
    "missing required personality field": Case(
        personality_with(lambda p: p.pop("name")),
        PERSONALITY,
        None,
        "name",
        "Field required",
    ),
    "missing response in an example": Case(
        nodes_with(beta=lambda n: n["examples"][1].pop("response")),
        BETA,
        "beta",
        "examples[1].response",
        "Field required",
    ),
    "unknown edge kind": Case(
        nodes_with(beta={"edges": [edge("likes", "alpha")]}),
        BETA,
        "beta",
        "edges[0].kind",
        "'related', 'refines' or 'conflicts'",
    ),
    # ----------------------------------------------------------------- ids
    "id differs from file stem": Case(
        nodes_with(beta={"id": "betta"}),
        BETA,
        "betta",
        "id",
        "differs from the file name 'beta.yaml'",
        hint="rename the file to betta.yaml or set `id: beta`",
    ),
    "unsafe id with a path": Case(nodes_with(beta={"id": "../x"}), BETA, "../x", "id", "match pattern"),
    "unsafe id with a space": Case(
        extra_nodes(**{"Bad Id": node("Bad Id")}),
        "nodes/Bad Id.yaml",
        "Bad Id",
        "id",
        "match pattern",
    ),
    "uppercase id": Case(extra_nodes(Upper=node("Upper")), "nodes/Upper.yaml", "Upper", "id", "match pattern"),
    "duplicate id (.yaml and .yml)": Case(
        extra_nodes(**{"alpha.yml": node("alpha", n_examples=3)}),
        "nodes/alpha.yml",
        "alpha",
        "id",
        "duplicate id: also defined in",
        hint="keep one of",
    ),
    # ----------------------------------------------------------------- edges and graph
    "dangling edge, near miss": Case(
        nodes_with(beta={"edges": [edge("refines", "alpah")]}),
        BETA,
        "beta",
        "edges[0].to",
        "edge to unknown node 'alpah'",
        hint="did you mean 'alpha'?",
    ),
    "dangling edge, underscore for hyphen": Case(
        lambda tmp: write_specs(
            tmp,
            nodes={
                **default_nodes(),
                "not-rushing": node("not-rushing"),
                "beta": node("beta", edges=[("related", "not_rushing")]),
            },
        ),
        BETA,
        "beta",
        "edges[0].to",
        "unknown node 'not_rushing'",
        hint="did you mean 'not-rushing'?",
    ),
    "dangling edge, nothing close": Case(
        nodes_with(beta={"edges": [edge("related", "zebra")]}),
        BETA,
        "beta",
        "edges[0].to",
        "unknown node 'zebra'",
        hint="known nodes: alpha, beta, delta, gamma",
    ),
    "self edge": Case(
        nodes_with(beta=lambda n: n["edges"].append(edge("related", "beta"))),
        BETA,
        "beta",
        "edges[1].to",
        "edge to itself",
    ),
    "duplicate edge": Case(
        nodes_with(beta=lambda n: n["edges"].append(edge("refines", "alpha"))),
        BETA,
        "beta",
        "edges[1].to",
        "duplicate `refines` edge to 'alpha'",
    ),
    "two edge kinds to one node": Case(
        nodes_with(beta=lambda n: n["edges"].append(edge("conflicts", "alpha"))),
        BETA,
        "beta",
        "edges[1].to",
        "a second edge to 'alpha' (`conflicts`, after `refines`)",
        hint="one edge per pair",
    ),
    "refines cycle": Case(
        nodes_with(alpha={"edges": [edge("refines", "gamma")]}),
        "nodes/alpha.yaml",
        "alpha",
        "edges",
        "dependency cycle: alpha -> gamma -> beta -> alpha",
        hint="make one of these edges `related`",
    ),
    # ----------------------------------------------------------------- examples and eval
    "no examples": Case(nodes_with(beta={"examples": []}), BETA, "beta", "examples", "no training examples"),
    "no eval cases": Case(nodes_with(beta=lambda n: n.pop("eval")), BETA, "beta", "eval", "no held-out eval"),
    "eval case repeats a training context": Case(
        nodes_with(beta=lambda n: n["eval"].append({"context": n["examples"][1]["context"], "response": "x"})),
        BETA,
        "beta",
        "eval[1]",
        "repeats a training context",
    ),
    "example with context and messages": Case(
        nodes_with(beta=lambda n: n["examples"][1].update(messages=[{"role": "user", "content": "hi"}])),
        BETA,
        "beta",
        "examples[1]",
        "exactly one of `context`",
    ),
    "example with neither context nor messages": Case(
        nodes_with(beta=lambda n: n["examples"][1].pop("context")),
        BETA,
        "beta",
        "examples[1]",
        "exactly one of `context`",
    ),
    "messages ending on an assistant turn": Case(
        nodes_with(
            beta=lambda n: n["examples"].__setitem__(
                1,
                {
                    "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                    "response": "x",
                },
            )
        ),
        BETA,
        "beta",
        "examples[1]",
        "last of `messages` must be a user turn",
    ),
    # ----------------------------------------------------------------- examples_file
    "examples_file missing": Case(
        nodes_with(beta={"examples_file": "beta.jsonl"}),
        BETA,
        "beta",
        "examples_file",
        "does not exist",
        hint="relative to the node file",
    ),
    "examples_file escaping the specs dir": Case(
        nodes_with(beta={"examples_file": "../../etc/passwd"}),
        BETA,
        "beta",
        "examples_file",
        "points outside the specs directory",
    ),
    "examples_file with a bad JSON line": Case(
        raw_file(
            "nodes/beta.jsonl",
            '{"context": "a", "response": "b"}\n{"context": oops}\n',
            beta={"examples_file": "beta.jsonl"},
        ),
        "nodes/beta.jsonl",
        "beta",
        "line 2",
        "invalid JSON",
    ),
    "examples_file with a bad example": Case(
        raw_file(
            "nodes/beta.jsonl",
            '{"context": "a", "response": "b"}\n\n{"context": "c"}\n',
            beta={"examples_file": "beta.jsonl"},
        ),
        "nodes/beta.jsonl",
        "beta",
        "line 3.response",
        "Field required",
    ),
    "examples_file with no examples": Case(
        raw_file("nodes/beta.jsonl", "\n\n", beta={"examples": [], "examples_file": "beta.jsonl"}),
        "nodes/beta.jsonl",
        "beta",
        None,
        "data file holds no examples",
    ),
    "examples_file not UTF-8": Case(
        raw_bytes("nodes/beta.jsonl", b"\xff\xfe{\x00", beta={"examples_file": "beta.jsonl"}),
        BETA,
        "beta",
        "examples_file",
        "cannot read data file 'beta.jsonl'",
    ),
    # ----------------------------------------------------------------- numeric ranges
    "merge density 0": Case(
        personality_with(set_in("merge.density", 0)),
        PERSONALITY,
        None,
        "merge.density",
        "greater than 0",
    ),
    "merge density 1.5": Case(
        personality_with(set_in("merge.density", 1.5)),
        PERSONALITY,
        None,
        "merge.density",
        "less than or equal to 1",
    ),
    "steps 0": Case(
        personality_with(set_in("training.steps", 0)), PERSONALITY, None, "training.steps", "greater than 0"
    ),
    "learning_rate 0": Case(
        personality_with(set_in("training.learning_rate", 0)),
        PERSONALITY,
        None,
        "training.learning_rate",
        "greater than 0",
    ),
    "learning_rate negative": Case(
        personality_with(set_in("training.learning_rate", -1e-4)),
        PERSONALITY,
        None,
        "training.learning_rate",
        "greater than 0",
    ),
    "batch_size 0": Case(
        personality_with(set_in("training.batch_size", 0)),
        PERSONALITY,
        None,
        "training.batch_size",
        "greater than 0",
    ),
    "node override steps 0": Case(
        nodes_with(beta={"training": {"steps": 0}}),
        BETA,
        "beta",
        "training.steps",
        "greater than 0",
    ),
    "node override learning_rate negative": Case(
        nodes_with(beta={"training": {"learning_rate": -0.1}}),
        BETA,
        "beta",
        "training.learning_rate",
        "greater than 0",
    ),
    "node override block field out of range": Case(
        nodes_with(beta={"training": {"replay": {"fraction": 1.5}}}),
        BETA,
        "beta",
        "training.replay.fraction",
        "less than 1",
    ),
    "node anchor that pulls nowhere once merged with the personality's": Case(
        personality_and_nodes_with(set_in("training.anchor", {"kl": 1.0}), beta={"training": {"anchor": {"kl": 0}}}),
        BETA,
        "beta",
        "training.anchor",
        "does nothing",
    ),
    "weight 0": Case(nodes_with(beta={"weight": 0}), BETA, "beta", "weight", "weight 0 links nothing"),
    "weight NaN": Case(nodes_with(beta={"weight": math.nan}), BETA, "beta", "weight", "finite"),
    "weight infinite": Case(nodes_with(beta={"weight": -math.inf}), BETA, "beta", "weight", "finite"),
    # ----------------------------------------------------------------- layout
    "missing personality.yaml": Case(
        removed(PERSONALITY),
        PERSONALITY,
        None,
        None,
        "missing personality file",
        hint="`name:`",
    ),
    "missing nodes dir": Case(removed("nodes"), "nodes", None, None, "no node files"),
    "specs dir does not exist": Case(
        lambda tmp: tmp / "no-such-specs",
        ".",
        None,
        None,
        "specs directory does not exist",
    ),
}


def build(case_name: str, tmp_path: Path) -> Path:
    return CASES[case_name].make(tmp_path)


@pytest.mark.parametrize("case_name", CASES)
def test_load_specs_locates_the_problem(case_name, tmp_path):
    case = CASES[case_name]
    specs = build(case_name, tmp_path)

    with pytest.raises(SpecError) as info:
        load_specs(specs)

    problems = info.value.problems
    assert len(problems) == 1, info.value.render()
    (problem,) = problems
    assert problem.file == (specs / case.file if case.file != "." else specs)
    assert problem.node == case.node
    assert problem.field == case.field
    assert case.says in problem.message
    if case.hint is not None:
        assert problem.hint is not None and case.hint in problem.hint


@pytest.mark.parametrize("case_name", CASES)
def test_check_reports_it_without_traceback_and_writes_nothing(case_name, tmp_path, capsys):
    case = CASES[case_name]
    specs = build(case_name, tmp_path)
    before = snapshot(tmp_path)

    code = main(["check", str(specs)])  # a non-user exception would escape and fail the test

    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.startswith("error: 1 problem in the specs:")
    assert str(specs / case.file if case.file != "." else specs) in err
    if case.field:
        assert f"field '{case.field}'" in err
    assert case.says in err
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------- what is allowed


def test_a_cycle_of_related_edges_is_allowed(tmp_path):
    # alpha -related-> delta -conflicts-> gamma -related-> alpha, and delta -related-> alpha
    nodes = mutated(alpha={"edges": [edge("related", "delta")]})
    nodes["gamma"]["edges"].append(edge("related", "alpha"))
    spec = load_specs(write_specs(tmp_path, nodes=nodes))
    g = spec.graph()
    assert g.has_edge("alpha", "delta") and g.has_edge("delta", "gamma") and g.has_edge("gamma", "alpha")
    assert spec.build_order().index("alpha") < spec.build_order().index("beta") < spec.build_order().index("gamma")


def test_edges_both_ways_between_two_nodes_are_allowed(tmp_path):
    nodes = mutated(alpha={"edges": [edge("conflicts", "beta")]})  # beta -refines-> alpha already
    spec = load_specs(write_specs(tmp_path, nodes=nodes))
    g = spec.graph()
    assert g.edges["alpha", "beta"]["kind"] == "conflicts"
    assert g.edges["beta", "alpha"]["kind"] == "refines"
    assert g.number_of_edges() == 5


def test_examples_file_appends_to_inline_examples(tmp_path):
    jsonl = (
        '{"context": "From the file, first?", "response": "First."}\n'
        "\n"
        '{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],'
        ' "response": "Hi."}\n'
    )
    specs = write_specs(
        tmp_path,
        nodes=mutated(beta={"examples_file": "data/beta.jsonl"}),
        files={"nodes/data/beta.jsonl": jsonl},
    )

    beta = load_specs(specs).nodes["beta"]

    assert [ex.response for ex in beta.examples] == ["Answer 0 about beta.", "Answer 1 about beta.", "First.", "Hi."]
    assert beta.examples[3].chat() == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    assert beta.data_files == ((specs / "nodes/data/beta.jsonl").resolve(),)


def test_examples_file_alone_is_enough(tmp_path):
    specs = write_specs(
        tmp_path,
        nodes=mutated(beta={"examples": [], "examples_file": "beta.jsonl"}),
        files={"nodes/beta.jsonl": '{"context": "a?", "response": "b."}\n'},
    )
    assert len(load_specs(specs).nodes["beta"].examples) == 1


def test_yaml_merge_keys_may_override_without_being_duplicates(tmp_path):
    text = VALID_NODE_YAML.replace(
        "examples:\n",
        'examples:\n  - &first {context: "Shared?", response: "One."}\n  - {<<: *first, context: "Other?"}\n',
    )
    spec = load_specs(write_specs(tmp_path, files={BETA: text}))
    assert [ex.context for ex in spec.nodes["beta"].examples][:2] == ["Shared?", "Other?"]


# --------------------------------------------------------------------------- all at once


def several_problems(tmp_path: Path) -> Path:
    personality = default_personality(tmp_path / "base-model")
    personality["merge"]["density"] = 1.5
    nodes = mutated(
        alpha={"weight": "high"},
        beta={"edges": [edge("refines", "alpah")], "examples_file": "beta.jsonl"},
        delta=lambda n: n.pop("eval"),
    )
    nodes["gamma"]["examples"][0]["mood"] = "x"
    return write_specs(tmp_path, personality=personality, nodes=nodes, files={"nodes/beta.jsonl": "{not json}\n"})


EXPECTED_SEVERAL = {
    ("personality.yaml", None, "merge.density"),
    ("nodes/alpha.yaml", "alpha", "weight"),
    ("nodes/beta.jsonl", "beta", "line 1"),
    ("nodes/delta.yaml", "delta", "eval"),
    ("nodes/gamma.yaml", "gamma", "examples[0].mood"),
    # beta's edge to a node that does not exist is reported too, even though
    # other files failed; delta's edge to alpha (which exists but failed) is not.
    ("nodes/beta.yaml", "beta", "edges[0].to"),
}


def test_several_problems_in_several_files_are_reported_at_once(tmp_path):
    specs = several_problems(tmp_path)

    with pytest.raises(SpecError) as info:
        load_specs(specs)

    found = {(p.file.relative_to(specs).as_posix(), p.node, p.field) for p in info.value.problems}
    assert found == EXPECTED_SEVERAL
    assert info.value.render().startswith(f"{len(EXPECTED_SEVERAL)} problems in the specs:")


# --------------------------------------------------------------------------- the real entry point


SUBPROCESS_CASES = ["yaml syntax error", "examples_file not UTF-8", "specs dir does not exist", "refines cycle"]


def run_check(specs: Path) -> subprocess.CompletedProcess:
    # A fixed hash seed other than this process's: messages must not depend on
    # set/dict order (the cycle message once started wherever networkx began).
    env = {**os.environ, "PYTHONHASHSEED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "traitgraph", "check", str(specs)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.mark.parametrize("case_name", SUBPROCESS_CASES)
def test_python_m_traitgraph_check_exits_2_without_traceback(case_name, tmp_path):
    case = CASES[case_name]
    specs = build(case_name, tmp_path)
    before = snapshot(tmp_path)

    result = run_check(specs)

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert case.says in result.stderr
    if case.field:
        assert f"field '{case.field}'" in result.stderr
    assert snapshot(tmp_path) == before


def test_python_m_traitgraph_check_lists_several_problems(tmp_path):
    specs = several_problems(tmp_path)
    result = run_check(specs)
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    assert f"{len(EXPECTED_SEVERAL)} problems in the specs:" in result.stderr
    for file, _, field in EXPECTED_SEVERAL:
        assert f"{specs / file}, " in result.stderr
        assert f"field '{field}'" in result.stderr
