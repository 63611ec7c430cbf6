"""The report's figures, drawn from an :class:`~traitgraph.evaluate.report.EvalReport` alone.

Each function draws one PNG atomically (temp file, then rename) and returns
its path; :func:`draw_figures` draws every figure the report has data for.
Colours follow the graph picture: green for a node that adds a behaviour,
red for one that subtracts it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import networkx as nx

from traitgraph.atomic import atomic_path
from traitgraph.graph.draw import NEGATIVE, POSITIVE, draw_graph

GREY = "#8a8f98"
#: A node alone (base + w·τ), a paler shade of the built model's green.
ALONE = "#a8d5b0"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, png: Path) -> Path:
    plt = _pyplot()
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return png


def _colour(direction: int) -> str:
    return POSITIVE if direction > 0 else NEGATIVE


def graph_from_report(report) -> nx.DiGraph:
    g = nx.DiGraph(name=report.personality)
    for node in report.graph.nodes:
        g.add_node(node["id"], **{k: v for k, v in node.items() if k != "id"})
    for edge in report.graph.edges:
        g.add_edge(edge["from"], edge["to"], kind=edge["kind"])
    return g


def monitor_series(record: dict) -> tuple[list[int], list[float], list[float], int | None]:
    """``(steps, validation loss, general-text change in %, kept step)`` of a monitor record,
    the start (step 0) included.

    >>> monitor_series({"start": {"validation": 2.0, "general": 4.0}, "best_step": 2,
    ...                 "checks": [{"step": 2, "validation": 1.5, "general": 4.2}]})
    ([0, 2], [2.0, 1.5], [0.0, 5.0], 2)
    """
    g0 = record["start"]["general"]
    checks = [{"step": 0, **record["start"]}, *record["checks"]]
    return (
        [c["step"] for c in checks],
        [c["validation"] for c in checks],
        [round(100.0 * (c["general"] - g0) / g0, 6) for c in checks],
        record.get("best_step"),
    )


def _plot_monitors(ax_loss, ax_general, nodes, cmap) -> None:
    """Validation loss (dotted, beside the training loss) and the general-text probe's change,
    the kept step marked with a star."""
    for i, n in enumerate(nodes):
        if n.training.monitor is None:
            continue
        steps, validation, general, best = monitor_series(n.training.monitor)
        ax_loss.plot(steps, validation, color=cmap(i % 10), lw=1.2, ls=":", marker="o", ms=3)
        ax_general.plot(steps, general, color=cmap(i % 10), lw=1.2, marker="o", ms=3, label=n.id)
        if best in steps:
            k = steps.index(best)
            ax_loss.plot([best], [validation[k]], "k*", ms=11)
            ax_general.plot([best], [general[k]], "k*", ms=11)
    ax_general.axhline(0.0, color="grey", lw=0.8)
    ax_general.set_xlabel("step")
    ax_general.set_ylabel("general-text probe loss, % change")
    ax_general.set_title("Monitor: general-text probe (★ kept step)")
    ax_general.grid(alpha=0.3)
    ax_general.legend(fontsize=8, frameon=False)


def plot_loss_curves(report, png: Path) -> Path | None:
    """Training loss per step of every node (from each τ's metadata); with a training
    monitor, also its validation loss and, beside it, the general-text probe, kept step starred."""
    nodes = [n for n in report.nodes if n.training is not None and n.training.loss_curve]
    if not nodes:
        return None
    plt = _pyplot()
    monitored = any(n.training.monitor is not None for n in nodes)
    fig, axes = plt.subplots(1, 2 if monitored else 1, figsize=(14 if monitored else 8, 4.5), squeeze=False)
    ax = axes[0][0]
    cmap = plt.get_cmap("tab10")
    for i, n in enumerate(nodes):
        curve = n.training.loss_curve
        ax.plot(
            range(1, len(curve) + 1),
            curve,
            color=cmap(i % 10),
            lw=1.8,
            ls="-" if n.direction > 0 else "--",
            label=f"{n.id} ({n.weight:+g})",
        )
    if monitored:
        _plot_monitors(ax, axes[0][1], nodes, cmap)
    ax.set_xlabel("step")
    ax.set_ylabel(("training and validation" if monitored else "training") + " loss (response tokens)")
    ax.set_title(
        "Training loss per node (dashed: negative weight" + ("; dotted: validation, ★ kept)" if monitored else ")")
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return _save(fig, png)


def plot_behaviour(report, png: Path) -> Path | None:
    """Directed gain per node, alone (base + w·τ) beside linked, coloured by intended direction."""
    nodes = [n for n in report.nodes if n.gain_linked is not None]
    if not nodes:
        return None
    plt = _pyplot()
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(nodes) + 2), 5.5))
    width = 0.38
    for i, n in enumerate(nodes):
        c = _colour(n.direction)
        for x, value, style in (
            (i - width / 2, n.directed_gain_alone, dict(alpha=0.45, hatch="//", edgecolor=c)),
            (i + width / 2, n.directed_gain_linked, {}),
        ):
            ax.bar(x, value, width, color=c, **style)
            ax.annotate(
                f"{value:+.2f}",
                (x, value),
                ha="center",
                va="bottom" if value >= 0 else "top",
                fontsize=7,
                xytext=(0, 2 if value >= 0 else -2),
                textcoords="offset points",
            )
    ax.axhline(0, color="black", lw=0.8)
    floor = report.settings.min_behaviour_gain
    if floor != 0:
        ax.axhline(floor, color=GREY, ls=":", lw=1.2)
    ax.set_xticks(range(len(nodes)), [n.id for n in nodes], rotation=20, ha="right")
    ax.set_ylabel("directed gain (nats): sign(w) × Δ margin")
    ax.set_title("Directed behaviour gain per node (> 0: moved as intended)")
    ax.margins(y=0.15)
    ax.legend(
        handles=[
            Patch(facecolor="white", edgecolor="black", hatch="//", label="alone (base + w·τ)"),
            Patch(facecolor="black", label="linked checkpoint"),
            Patch(color=POSITIVE, label="weight > 0: behaviour should rise"),
            Patch(color=NEGATIVE, label="weight < 0: behaviour should fall"),
        ],
        fontsize=8,
        frameon=False,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.18),
        ncol=2,
    )
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, png)


def plot_retention(report, png: Path) -> Path:
    """General-text loss and general-prompt accuracy, base vs built."""
    plt = _pyplot()
    r = report.retention
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 4))
    ax1.bar(
        ["base", "built"],
        [r.base_loss, r.linked_loss],
        color=[GREY, POSITIVE if r.change_pct <= report.settings.max_retention_loss_pct else NEGATIVE],
    )
    budget = r.base_loss * (1 + report.settings.max_retention_loss_pct / 100)
    ax1.axhline(budget, color=NEGATIVE, ls="--", lw=1, label=f"budget +{report.settings.max_retention_loss_pct:g}%")
    ax1.set_ylim(0, max(budget, r.linked_loss) * 1.3)
    ax1.set_title(f"general-text loss ({r.change_pct:+.1f}%)")
    ax1.legend(fontsize=8, frameon=False, loc="upper left")
    if r.prompts:
        ax2.bar(["base", "built"], [100 * r.base_accuracy, 100 * r.built_accuracy], color=[GREY, POSITIVE])
        ax2.set_ylim(0, 105)
        ax2.set_title(f"general prompts answered (n={len(r.prompts)})")
        ax2.set_ylabel("%")
    else:
        ax2.axis("off")
    return _save(fig, png)


def plot_interference(report, png: Path) -> Path | None:
    """The linker's interference heatmaps (cosine; sign conflict with overlap) of the linked vectors."""
    from traitgraph.linker.interference import plot_interference as draw

    if report.interference is None or len(report.interference.names) < 2:
        return None
    return draw(report.interference.to_result(), png)


def draw_figures(report, figures_dir: Path) -> dict[str, Path]:
    """Every figure the report has data for: name -> PNG path."""

    figures_dir = Path(figures_dir)
    out: dict[str, Path] = {}
    g = graph_from_report(report)
    with warnings.catch_warnings():  # matplotlib's tight-layout notice for wide node labels
        warnings.simplefilter("ignore", UserWarning)
        out["graph"] = draw_graph(g, figures_dir / "graph.png", title=f"{report.personality} ({len(g)} nodes)")
    for name, fn in (
        ("behaviour", plot_behaviour),
        ("retention", plot_retention),
        ("interference", plot_interference),
        ("loss_curves", plot_loss_curves),
        ("tests", plot_test_pass_rates),
        ("consolidation", plot_consolidation),
    ):
        path = fn(report, figures_dir / f"{name}.png")
        if path is not None:
            out[name] = path
    return out


def plot_test_pass_rates(report, png: Path) -> Path | None:
    """Pass rate per node (and the general prompts): base, node alone and built side by side."""
    if report.tests is None or not report.tests.built:
        return None
    from traitgraph.evaluate.behaviour_tests import group_label

    rows = report.tests.rows()
    plt = _pyplot()
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(rows) + 2), 4.5))
    width = 0.27
    for i, (_, base, alone, built) in enumerate(rows):
        bars = ((i - width, base, GREY), (i, alone, ALONE), (i + width, built, POSITIVE))
        for x, counts, colour in bars:
            if counts is None:  # the general prompts have no "alone"
                continue
            passed, total = counts
            value = 100 * passed / total if total else 0.0
            ax.bar(x, value, width, color=colour)
            ax.annotate(
                f"{passed}/{total}",
                (x, value),
                ha="center",
                va="bottom",
                fontsize=6,
                xytext=(0, 2),
                textcoords="offset points",
            )
    handles = [
        Patch(color=GREY, label="base"),
        Patch(color=ALONE, label="node alone"),
        Patch(color=POSITIVE, label="built"),
    ]
    floor = report.settings.min_test_pass_rate
    if floor > 0:
        handles.append(ax.axhline(100 * floor, color="black", ls=":", lw=1.2, label=f"gate {floor:.0%}"))
    ax.set_xticks(range(len(rows)), [group_label(g) for g, *_ in rows], rotation=20, ha="right")
    ax.set_ylim(0, 115)
    ax.set_ylabel("tests passed (%)")
    ax.set_title("Behaviour tests passed per node: base, node alone, built")
    ax.legend(handles=handles, fontsize=8, frameon=False, loc="upper right", ncol=4)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, png)


def plot_consolidation(report, png: Path) -> Path | None:
    """KL to each node alone and to the base, before and after ``merge.consolidate``."""
    record = report.consolidation
    if not record:
        return None
    names = list(record["kl_before"])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names) + 2), 4.5))
    width = 0.38
    for i, name in enumerate(names):
        ax.bar(i - width / 2, record["kl_before"][name], width, color=GREY)
        ax.bar(i + width / 2, record["kl_after"][name], width, color=POSITIVE)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("KL(teacher ‖ linked), response tokens")
    ax.set_title(f"Consolidation ({record['steps']} steps): distance to each node alone and to the base")
    from matplotlib.patches import Patch

    ax.legend(
        handles=[Patch(color=GREY, label="plain merge"), Patch(color=POSITIVE, label="consolidated")],
        fontsize=8,
        frameon=False,
    )
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, png)
