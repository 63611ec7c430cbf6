"""The report's headline in words: the mean kept, the trim and merge shares, and what was lost.

Pure functions of an evaluated report (see :mod:`traitgraph.evaluate.honest` for
how kept, kept by trim and kept by merge are measured).
"""

from __future__ import annotations

from collections.abc import Sequence


def mean_kept(nodes: Sequence) -> float | None:
    """The mean of the nodes' ``kept`` (over those where it is defined)."""
    values = [n.kept for n in nodes if n.kept is not None]
    return sum(values) / len(values) if values else None


def headline(report) -> list[str]:
    """The first lines of report.md: mean kept, the trim and merge shares, and what was lost, in words."""
    lines = []
    kept = mean_kept(report.nodes)
    if kept is None:
        lines.append("**Kept**: not measured (no node moved as intended on its own).")
    else:
        per_node = ", ".join(f"{n.id} {n.kept:.2f}" for n in report.nodes if n.kept is not None)
        lines.append(f"**Mean kept: {kept:.2f}** of each node's own effect survives the merge ({per_node}).")
    trims = [n.kept_by_trim for n in report.nodes if getattr(n, "kept_by_trim", None) is not None]
    merges = [n.kept_by_merge for n in report.nodes if getattr(n, "kept_by_merge", None) is not None]
    if trims and merges:
        lines.append(
            f"Its own trim keeps {sum(trims) / len(trims):.2f} of a node's effect on average; combining "
            f"with the other nodes keeps {sum(merges) / len(merges):.2f} of what the trim left."
        )
    joint = [n.kept_of_joint for n in report.nodes if getattr(n, "kept_of_joint", None) is not None]
    if joint:
        lines.append(
            f"Against the joint reference (one model trained on every positive node's examples), the build "
            f"keeps {sum(joint) / len(joint):.2f} of its gain on average."
        )
    lines.append(lost_in_words(report.retention))
    return lines


def kept_table(report) -> list[str]:
    """Per node: directed gains alone, trimmed and linked, and the three kept ratios (markdown)."""
    rows = [n for n in report.nodes if n.measure != "none"]
    if not rows:
        return []
    lines = [
        "| node | gain alone | gain trimmed | gain linked | kept by trim | kept by merge | kept |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(v, fmt):
        return "–" if v is None else format(v, fmt)

    for n in rows:
        directed = [None if g is None else n.direction * g for g in (n.gain_alone, n.gain_trimmed, n.gain_linked)]
        lines.append(
            f"| {n.id} | "
            + " | ".join(cell(g, "+.2f") for g in directed)
            + " | "
            + " | ".join(cell(k, ".2f") for k in (n.kept_by_trim, n.kept_by_merge, n.kept))
            + " |"
        )
    return lines


def prompts_gate_message(retention, allowed: int) -> str:
    """The general-prompts gate's message, naming the first prompts lost.

    >>> from types import SimpleNamespace as R
    >>> prompts_gate_message(R(lost=[R(prompt="Capital of France?", answer="Paris")]), 0)
    'retention: lost 1 general prompt(s) the base answers > budget 0 (Capital of France? -> Paris)'
    """
    lost = retention.lost
    named = ", ".join(f"{p.prompt} -> {p.answer}" for p in lost[:3]) + (", ..." if len(lost) > 3 else "")
    verdict = "<=" if len(lost) <= allowed else ">"
    return f"retention: lost {len(lost)} general prompt(s) the base answers {verdict} budget {allowed}" + (
        f" ({named})" if lost else ""
    )


def lost_in_words(retention) -> str:
    """What the build forgot, as a sentence."""
    answered = sum(p.base_ok for p in retention.prompts)
    lost = retention.lost
    change = retention.change_pct
    text = f"General-text loss {'rose' if change >= 0 else 'fell'} {abs(change):.2f}%"
    if not lost:
        return f"**Lost: nothing.** The build still answers all {answered} general prompts the base answers; {text[0].lower() + text[1:]}."
    items = "; ".join(f'"{p.prompt}" (expected {p.answer})' for p in lost[:5]) + ("; ..." if len(lost) > 5 else "")
    return f"**Lost: {len(lost)} of {answered} general prompts** the base answers: {items}. {text}."
