"""The sweep's outputs: ``sweep.json``, ``sweep.md`` (one row per point) and ``sweep.png``.

The picture puts each point at (general-text loss change, mean kept): right
is more forgetting, up is more of each node's effect kept. The Pareto front
(the points no other point beats on both) is joined by a line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from traitgraph.atomic import write_text_atomic

SWEEP_JSON, SWEEP_MD, SWEEP_PNG = "sweep.json", "sweep.md", "sweep.png"


def pareto_front(points: Sequence) -> list[str]:
    """Names of the points no other point beats: kept at least as high and loss change at
    least as low, one of them strictly. Failed points and points without a kept are left out.

    >>> from types import SimpleNamespace as P
    >>> pareto_front([P(name="a", ok=True, mean_kept=0.5, loss_change_pct=1.0),
    ...               P(name="b", ok=True, mean_kept=0.9, loss_change_pct=4.0),
    ...               P(name="c", ok=True, mean_kept=0.4, loss_change_pct=2.0)])
    ['a', 'b']
    """
    scored = [p for p in points if p.ok and p.mean_kept is not None and p.loss_change_pct is not None]

    def beaten(p) -> bool:
        return any(
            q.mean_kept >= p.mean_kept
            and q.loss_change_pct <= p.loss_change_pct
            and (q.mean_kept > p.mean_kept or q.loss_change_pct < p.loss_change_pct)
            for q in scored
        )

    return [p.name for p in scored if not beaten(p)]


def _cell(value, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def render_sweep_markdown(sweep) -> str:
    """The table of ``sweep.md``: one row per point, the Pareto front marked with ★."""
    lines = [
        f"# Sweep of {sweep.specs}",
        "",
        (
            "kept = directed linked gain / directed gain of the node alone (mean and worst node); "
            "general text = loss change against the base; prompts = general prompts the base "
            "answers that the point still answers; tests = behaviour tests of the nodes' eval and ood "
            "cases passed (ood: those of the ood cases). ★ = on the Pareto front (kept up, loss change down)."
        ),
        "",
        "| point | "
        + " | ".join(f"`{p}`" for p in sweep.paths)
        + " | mean kept | min kept | general text | prompts | tests | ood tests | gates | s |",
        "|---" * (len(sweep.paths) + 9) + "|",
    ]
    front = set(sweep.pareto)
    for p in sweep.points:
        values = " | ".join(str(p.settings.get(path)) for path in sweep.paths)
        name = f"{p.name} ★" if p.name in front else p.name
        if not p.ok:
            lines.append(f"| {name} | {values} | failed: {p.error.splitlines()[0]} | | | | | | | {p.seconds:.0f} |")
            continue
        gates = "passed" if p.passed else "failed: " + ", ".join(p.failed_gates)
        lines.append(
            f"| {name} | {values} | {_cell(p.mean_kept, '.2f')} | {_cell(p.min_kept, '.2f')} | "
            f"{_cell(p.loss_change_pct, '+.2f')}% | {p.prompts_kept} | {p.tests or '–'} | {p.ood_tests or '–'} "
            f"| {gates} | {p.seconds:.0f} |"
        )
    lines += ["", "Each point's report: `sweep/<point>/report.md`; its build log: `sweep/<point>/sweep.log`.", ""]
    return "\n".join(lines)


def plot_sweep(sweep, png: Path) -> Path | None:
    """Mean kept against general-text loss change, one dot per point, the Pareto front joined."""
    from traitgraph.evaluate.plots import _pyplot, _save

    scored = [p for p in sweep.points if p.ok and p.mean_kept is not None and p.loss_change_pct is not None]
    if not scored:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    front = sorted((p for p in scored if p.name in sweep.pareto), key=lambda p: p.loss_change_pct)
    ax.scatter([p.loss_change_pct for p in scored], [p.mean_kept for p in scored], color="#8a8f98", zorder=2)
    ax.plot(
        [p.loss_change_pct for p in front],
        [p.mean_kept for p in front],
        "o-",
        color="#2a9d4b",
        label="Pareto front",
        zorder=3,
    )
    for p in scored:
        ax.annotate(p.name, (p.loss_change_pct, p.mean_kept), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("general-text loss change vs base (%)")
    ax.set_ylabel("mean kept (linked gain / alone gain)")
    ax.set_title("sweep: behaviour kept vs retention")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return _save(fig, png)


def write_sweep(sweep, root: Path) -> None:
    """``sweep.png``, ``sweep.md``, then ``sweep.json`` (last), each atomically."""
    root.mkdir(parents=True, exist_ok=True)
    plot_sweep(sweep, root / SWEEP_PNG)
    write_text_atomic(root / SWEEP_MD, render_sweep_markdown(sweep))
    write_text_atomic(root / SWEEP_JSON, json.dumps(sweep.model_dump(mode="json"), indent=1) + "\n")
