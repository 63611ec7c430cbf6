"""``traitgraph sweep``: build, link and evaluate one personality at every point of a grid.

Each point is the specs with some fields changed (:mod:`.sweep_grid`), built
into its own directory ``OUT/sweep/pNN/`` as ``traitgraph build`` would:
every node's vector comes from the shared cache (a node trains only when the
point changes its training hash), the vectors are linked into
``pNN/checkpoint``, and the checkpoint is evaluated into ``pNN/report.md``.
A gate that fails is recorded, not raised; a point that fails is reported and
the sweep goes on. The results land in ``OUT/sweep/sweep.json``,
``sweep.md`` and ``sweep.png`` (:mod:`.sweep_report`)::

    >>> result = run_sweep("specs", "out", [parse_set("merge.method=ties,iso_cts")])   # doctest: +SKIP
    >>> [p.mean_kept for p in result.points]                                             # doctest: +SKIP
    [0.41, 0.87]
"""

from __future__ import annotations

import contextlib
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from traitgraph.builder.cache import VectorCache
from traitgraph.builder.output_lock import OutputLock
from traitgraph.builder.plan import (
    BuildPlan,
    OutputLayout,
    base_fingerprint_of,
)
from traitgraph.errors import UserError
from traitgraph.evaluate.sweep_grid import apply_point, grid, parse_set
from traitgraph.graph import load_specs
from traitgraph.graph.hashing import node_hashes

SWEEP_DIR = "sweep"

__all__ = ["PointResult", "SweepResult", "parse_set", "point_metrics", "run_sweep"]


class PointResult(BaseModel):
    """One grid point: its settings, where it was built, and what it measured."""

    name: str = Field(description="Directory name under OUT/sweep/ (p01, p02, ...).")
    settings: dict[str, Any] = Field(description="The --set values of this point.")
    ok: bool = Field(description="Built and evaluated (the gates may still have failed).")
    error: str | None = Field(default=None, description="Why the point failed, when it did.")
    trained: list[str] = Field(default_factory=list, description="Nodes trained for this point (cache misses).")
    evaluated: bool = Field(default=True, description="False when the point's report was already current.")
    mean_kept: float | None = Field(default=None, description="Mean over nodes of linked gain / alone gain.")
    min_kept: float | None = None
    kept: dict[str, float | None] = Field(default_factory=dict, description="Per node.")
    loss_change_pct: float | None = Field(default=None, description="General-text loss change, percent.")
    prompts_lost: int | None = Field(
        default=None, description="General prompts the base answers and this point does not."
    )
    prompts_kept: str | None = Field(default=None, description="Built / base-answered general prompts, e.g. 28/28.")
    tests: str | None = Field(
        default=None, description="Behaviour tests of the nodes' eval and ood cases passed, e.g. 40/71."
    )
    ood_tests: str | None = Field(default=None, description="Those of the ood cases alone, e.g. 19/35.")
    passed: bool | None = Field(default=None, description="Every gate of eval: passed.")
    failed_gates: list[str] = Field(default_factory=list)
    seconds: float = 0.0


class SweepResult(BaseModel):
    """``OUT/sweep/sweep.json``."""

    format: str = "traitgraph.sweep/1"
    specs: str
    paths: list[str] = Field(description="The swept fields, in --set order.")
    points: list[PointResult]
    pareto: list[str] = Field(default_factory=list, description="Points on the kept / loss-change Pareto front.")


def point_metrics(report) -> dict[str, Any]:
    """The sweep's figures of one evaluation report (an ``EvalReport``)."""
    kept = {n.id: n.kept for n in report.nodes}
    values = [k for k in kept.values() if k is not None]
    retention = report.retention
    answered = sum(p.base_ok for p in retention.prompts)
    return {
        "kept": kept,
        "mean_kept": sum(values) / len(values) if values else None,
        "min_kept": min(values) if values else None,
        "loss_change_pct": retention.change_pct,
        "prompts_lost": len(retention.lost),
        "prompts_kept": f"{answered - len(retention.lost)}/{answered}",
        **_test_counts(report),
        "passed": report.passed,
        "failed_gates": [g.name for g in report.failures()],
    }


def _test_counts(report) -> dict[str, str | None]:
    """``tests`` and ``ood_tests`` passed / run over the nodes' cases (None without behaviour tests)."""
    from traitgraph.evaluate.behaviour_tests import GENERAL

    if report.tests is None:
        return {"tests": None, "ood_tests": None}
    nodes = [r for r in report.tests.built if r.group != GENERAL]
    ood = [r for r in nodes if r.case.startswith("ood")]
    return {
        "tests": f"{sum(r.passed for r in nodes)}/{len(nodes)}" if nodes else None,
        "ood_tests": f"{sum(r.passed for r in ood)}/{len(ood)}" if ood else None,
    }


def _current_report(plan: BuildPlan):
    """The point's report.json when it records exactly the current inputs (passed or not), else None."""
    from traitgraph.evaluate.report import REPORT_JSON, read_report
    from traitgraph.evaluate.run import eval_inputs

    try:
        report = read_report(plan.out.root / REPORT_JSON)
        return report if report.inputs == eval_inputs(plan) else None
    except UserError:
        return None


def _build_point(plan: BuildPlan) -> tuple[list[str], Any, bool]:
    """Train what the cache lacks, link unless the last link is current, evaluate unless the report
    is current; never raise on gates. Returns (trained nodes, report, whether it evaluated)."""
    from traitgraph.builder.tasks import link_action, train_node_action
    from traitgraph.evaluate.report import write_report
    from traitgraph.evaluate.run import evaluate_build

    trained = [n for n in plan.spec.build_order() if not plan.node_is_built(n)]
    for node_id in plan.spec.build_order():
        train_node_action(plan, node_id)
    if not plan.link_is_current():
        link_action(plan)
    report = _current_report(plan)
    if report is not None:
        return trained, report, False
    return trained, write_report(evaluate_build(plan, progress=True), plan.out.root), True


def _run_point(plan: BuildPlan, name: str, settings: dict[str, Any]) -> PointResult:
    t0 = time.perf_counter()
    plan.out.root.mkdir(parents=True, exist_ok=True)
    log = plan.out.root / "sweep.log"
    try:
        with (
            OutputLock(plan.out),
            open(log, "w", encoding="utf-8") as fh,
            contextlib.redirect_stdout(fh),
            contextlib.redirect_stderr(fh),
        ):
            trained, report, evaluated = _build_point(plan)
        metrics = point_metrics(report)
        return PointResult(
            name=name,
            settings=settings,
            ok=True,
            trained=trained,
            evaluated=evaluated,
            seconds=round(time.perf_counter() - t0, 1),
            **metrics,
        )
    except UserError as exc:  # SpecError and BuildError included
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 (a broken point is reported, not fatal; traceback in its log)
        with open(log, "a", encoding="utf-8") as fh:
            traceback.print_exc(file=fh)
        error = f"{type(exc).__name__}: {exc} (traceback in {log})"
    return PointResult(name=name, settings=settings, ok=False, error=error, seconds=round(time.perf_counter() - t0, 1))


def run_sweep(
    specs_dir: str | Path,
    out_dir: str | Path,
    sets: list[tuple[str, list[Any]]],
    *,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> SweepResult:
    """Build and evaluate every point of the grid of ``sets``; write sweep.json, sweep.md and sweep.png.

    Every point's specs are checked before the first one is built, so a bad
    path or value is a :class:`UserError` before any work.
    """
    from tqdm import tqdm

    from traitgraph.evaluate.sweep_report import pareto_front, write_sweep

    spec = load_specs(specs_dir)
    points = grid(sets)
    specs = [apply_point(spec, p) for p in points]
    fingerprint = base_fingerprint_of(spec)
    root = Path(out_dir) / SWEEP_DIR
    width = max(2, len(str(len(points))))
    results = []
    with tqdm(total=len(points), desc="sweep", unit="point", disable=not progress, file=sys.stderr) as bar:
        for i, (point, point_spec) in enumerate(zip(points, specs), start=1):
            name = f"p{i:0{width}d}"
            bar.set_postfix_str(f"{name} " + " ".join(f"{k}={v}" for k, v in point.items()))
            plan = BuildPlan(
                spec=point_spec,
                fingerprint=fingerprint,
                hashes=node_hashes(point_spec, fingerprint),
                cache=VectorCache(cache_dir),
                out=OutputLayout(root / name),
            )
            result = _run_point(plan, name, point)
            results.append(result)
            bar.write(_one_line(result))
            bar.update(1)
    sweep = SweepResult(specs=str(specs_dir), paths=[p for p, _ in sets], points=results)
    sweep = sweep.model_copy(update={"pareto": pareto_front(sweep.points)})
    write_sweep(sweep, root)
    return sweep


def _one_line(p: PointResult) -> str:
    settings = " ".join(f"{k}={v}" for k, v in p.settings.items())
    if not p.ok:
        return f"{p.name} {settings}: FAILED: {p.error}"
    kept = "n/a" if p.mean_kept is None else f"{p.mean_kept:.2f}"
    gates = "passed" if p.passed else "gates failed: " + ", ".join(p.failed_gates)
    return (
        f"{p.name} {settings}: mean kept {kept}, general text {p.loss_change_pct:+.2f}%, "
        f"prompts {p.prompts_kept}, tests {p.tests or 'n/a'} (ood {p.ood_tests or 'n/a'}), {gates} ({p.seconds:.0f}s)"
    )
