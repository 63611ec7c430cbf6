"""What an evaluation depends on: the general data, the build's lock, and the report's input key.

The eval task is up to date when ``report.json`` passed and records exactly
:func:`eval_inputs` of the current specs and build.

>>> sha256_text("")[:12]
'e3b0c44298fc'
>>> canonical({"b": 1, "a": [1, 2]})
'{"a":[1,2],"b":1}'
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

from traitgraph import __version__
from traitgraph.atomic import sha256_file
from traitgraph.builder.plan import BuildPlan
from traitgraph.errors import BuildError
from traitgraph.evaluate.behaviour_tests import BEHAVIOUR_TESTS_VERSION
from traitgraph.evaluate.report import REPORT_JSON, REPORT_MD, GraphPicture, read_report
from traitgraph.graph import Spec

#: Bump when scoring changes what a number means: remembered scores and reports are redone.
SCORING_VERSION = 1


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical(obj: Any) -> str:
    """Deterministic JSON text: sorted keys, no whitespace."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def shipped(name: str) -> str:
    """A data file shipped in ``traitgraph/data``."""
    return resources.files("traitgraph.data").joinpath(name).read_text(encoding="utf-8")


def general_text_file(spec: Spec) -> Path | None:
    """The personality's ``eval.general_text`` (relative to the specs dir), or ``None`` for the shipped set."""
    rel = spec.personality.eval.general_text
    return None if rel is None else (spec.specs_dir / rel)


def general_prompts() -> list[dict[str, str]]:
    """The shipped general prompts: ``{"prompt", "answer"}`` per line.

    >>> sorted(general_prompts()[0])
    ['answer', 'prompt']
    """
    return [json.loads(line) for line in shipped("general_prompts.jsonl").splitlines() if line.strip()]


def general_text_hash(spec: Spec) -> str:
    path = general_text_file(spec)
    if path is None:
        return sha256_text(shipped("general_text.txt"))
    try:
        return sha256_file(path)
    except OSError as exc:
        raise BuildError(f"cannot read eval.general_text {path}: {exc}") from None


def graph_picture(spec: Spec) -> GraphPicture:
    """The personality graph as the report stores it."""
    g = spec.graph()
    return GraphPicture(
        nodes=[{"id": n, **d} for n, d in sorted(g.nodes(data=True))],
        edges=[{"from": u, "to": v, "kind": d.get("kind", "related")} for u, v, d in sorted(g.edges(data=True))],
    )


def read_build_lock(plan: BuildPlan):
    """The lock file of the last build in ``plan.out``; none is a :class:`BuildError` saying to build."""
    from traitgraph.linker.lock import read_lock

    if not plan.out.lock.is_file():
        raise BuildError(
            f"nothing to evaluate: {plan.out.lock} does not exist; build first (`traitgraph build` or `doit`)"
        )
    return read_lock(plan.out.lock)


def eval_inputs(plan: BuildPlan, lock=None) -> dict[str, Any]:
    """Everything a report depends on: the checkpoint and vectors (by the lock's hashes),
    the eval settings, each node's eval cases, the graph, the general data, the version."""
    lock = lock if lock is not None else read_build_lock(plan)
    spec = plan.spec
    return {
        "traitgraph_version": __version__,
        "scoring_version": SCORING_VERSION,
        "behaviour_tests_version": BEHAVIOUR_TESTS_VERSION,
        "base_fingerprint": lock.base.fingerprint,
        "nodes": sorted(([n.id, n.training_hash, n.vector_sha256, n.weight] for n in lock.nodes), key=lambda n: n[0]),
        "outputs": dict(sorted(lock.outputs.items())),
        "settings": spec.personality.eval.model_dump(mode="json"),
        "eval_cases": {
            node_id: sha256_text(canonical([c.model_dump(mode="json") for c in node.spec.eval]))
            for node_id, node in sorted(spec.nodes.items())
        },
        "ood_cases": {
            node_id: sha256_text(canonical([c.model_dump(mode="json") for c in node.spec.ood]))
            for node_id, node in sorted(spec.nodes.items())
            if node.spec.ood
        },
        "graph": sha256_text(canonical(graph_picture(spec).model_dump(mode="json"))),
        "general_text": general_text_hash(spec),
        "general_prompts": sha256_text(shipped("general_prompts.jsonl")),
    }


def report_is_current(plan: BuildPlan) -> bool:
    """``report.json`` exists, passed, and records exactly the current inputs."""
    try:
        report = read_report(plan.out.root / REPORT_JSON)
        return report.passed and (plan.out.root / REPORT_MD).is_file() and report.inputs == eval_inputs(plan)
    except BuildError:
        return False
