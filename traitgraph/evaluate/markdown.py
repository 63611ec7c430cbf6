"""The report as markdown: ``OUT/report.md`` and the tables printed in a terminal.

>>> print(_cell("a | b  c"))
a \\| b c
"""

from __future__ import annotations

from traitgraph.evaluate.behaviour_report import tests_section, tests_table
from traitgraph.evaluate.schema import EvalReport


def _f(x: float | None, fmt: str = "{:+.2f}") -> str:
    return "–" if x is None else fmt.format(x)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|") or "*(empty)*"


def behaviour_table(report: EvalReport) -> str:
    rows = [
        "| node | weight | measure | base | alone | linked | gain alone | gain linked | directed gain (linked) "
        "| wins base → linked | loss base → linked | verdict |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for n in report.nodes:
        if n.base is None or n.alone is None or n.linked is None:
            rows.append(f"| {n.id} | {n.weight:+g} | – | | | | | | | | | {n.verdict} |")
            continue
        key = "margin" if n.measure == "margin" else "logprob"
        wins = f"{_pct(n.base.win_rate)} → {_pct(n.linked.win_rate)}" if n.measure == "margin" else "–"
        rows.append(
            f"| {n.id} | {n.weight:+g} | {n.measure} | {getattr(n.base, key):+.2f} | {getattr(n.alone, key):+.2f} "
            f"| {getattr(n.linked, key):+.2f} | {_f(n.gain_alone)} | {_f(n.gain_linked)} "
            f"| **{_f(n.directed_gain_linked)}** | {wins} | {n.base.loss:.3f} → {n.linked.loss:.3f} | {n.verdict} |"
        )
    return "\n".join(rows)


def retention_table(report: EvalReport) -> str:
    r = report.retention
    n = len(r.prompts)
    lines = [
        "| measure | base | built | change |",
        "|---|---:|---:|---:|",
        f"| general-text loss ({r.lines} lines, {r.tokens} tokens) | {r.base_loss:.4f} | {r.linked_loss:.4f} "
        f"| {r.change_pct:+.1f}% (budget {report.settings.max_retention_loss_pct:.1f}%) |",
    ]
    if n:
        lines.append(
            f"| general prompts answered ({n}) | {sum(p.base_ok for p in r.prompts)}/{n} "
            f"| {sum(p.built_ok for p in r.prompts)}/{n} | {100 * (r.built_accuracy - r.base_accuracy):+.0f} pts |"
        )
    return "\n".join(lines)


def interference_table(report: EvalReport) -> str:
    rows = ["| node | directed gain alone | directed gain linked | kept by the merge |", "|---|---:|---:|---:|"]
    for n in report.nodes:
        rows.append(f"| {n.id} | {_f(n.directed_gain_alone)} | {_f(n.directed_gain_linked)} | {_pct(n.kept)} |")
    return "\n".join(rows)


def gates_table(report: EvalReport) -> str:
    rows = ["| gate | result | detail |", "|---|---|---|"]
    rows += [f"| {g.name} | {'pass' if g.passed else '**FAIL**'} | {_cell(g.message, 300)} |" for g in report.gates]
    return "\n".join(rows)


def _header(report: EvalReport) -> list[str]:
    status = "PASSED" if report.passed else f"FAILED ({len(report.failures())} gate(s))"
    out = [
        f"# {report.personality}: build report",
        "",
        f"**{status}**: base `{report.base}`, checkpoint `{report.checkpoint}`, "
        f"traitgraph {report.traitgraph_version}, evaluated in {report.seconds:.0f} s "
        f"({report.threads} thread{'s' if report.threads != 1 else ''}).",
        "",
    ]
    from traitgraph.evaluate.kept_words import headline, kept_table

    out += [*headline(report), "", *kept_table(report), ""]
    out += [f"- note: {n}" for n in report.notes]
    out += ["", "## Gates", "", gates_table(report), ""]
    if "graph" in report.figures:
        out += ["## Personality graph", "", f"![personality graph]({report.figures['graph']})", ""]
    return out


def _behaviour_section(report: EvalReport) -> list[str]:
    out = [
        "## Behaviour",
        "",
        "Scores on each node's held-out eval cases under three models: the **base**, the base plus the "
        "node's own weighted task vector **alone** (base + w·τ), and the **linked** checkpoint. "
        "*margin* = log p(wanted) − log p(rejected), each summed over the response tokens with the chat "
        "template applied (nats), averaged over cases; a node without `rejected` replies is measured by "
        "the summed log p(wanted) instead. *gain* = measure(model) − measure(base). *directed gain* = "
        "sign(weight) × gain: for a negative-weight node the behaviour its examples teach should fall, "
        "so positive always means *moved as intended*. "
        f"Gate: directed gain (linked) ≥ {report.settings.min_behaviour_gain:.2f}.",
        "",
        behaviour_table(report),
        "",
    ]
    if "behaviour" in report.figures:
        out += [f"![behaviour gain]({report.figures['behaviour']})", ""]
    return out


def _retention_section(report: EvalReport) -> list[str]:
    out = [
        "## Retention",
        "",
        "Mean per-token loss on held-out general text, and greedy answers to general prompts "
        "(a hit when the answer appears in the reply, case-insensitively).",
        "",
        retention_table(report),
        "",
    ]
    r = report.retention
    if r.lost or r.gained:
        out += ["Prompts that flipped:", "", "| prompt | expected | base | built |", "|---|---|---|---|"]
        for p in r.lost + r.gained:
            mark = "lost" if p.base_ok else "gained"
            out.append(
                f"| {_cell(p.prompt)} ({mark}) | {_cell(p.answer)} | {_cell(p.base_output)} | {_cell(p.built_output)} |"
            )
        out.append("")
    elif r.prompts:
        out += ["No prompt flipped.", ""]
    if "retention" in report.figures:
        out += [f"![retention]({report.figures['retention']})", ""]
    return out


def _pairs_table(inter) -> list[str]:
    out = [
        f"Pairs of weighted task vectors (w·τ): cosine of the whole vectors, overlap of the entries "
        f"TIES keeps at density {inter.density:g}, and the share of those shared entries whose signs "
        f"disagree (independent vectors: cosine ≈ 0, overlap ≈ {inter.density / (2 - inter.density):.0%}, "
        "conflict ≈ 50%).",
        "",
        "| pair | cosine | overlap | sign conflict |",
        "|---|---:|---:|---:|",
    ]
    for i, a in enumerate(inter.names):
        for j in range(i + 1, len(inter.names)):
            c = inter.conflict[i][j]
            out.append(
                f"| {a} × {inter.names[j]} | {inter.cosine[i][j]:+.3f} | {inter.overlap[i][j]:.1%} "
                f"| {'–' if c is None else f'{c:.1%}'} |"
            )
    out.append("")
    return out


def _interference_section(report: EvalReport) -> list[str]:
    out = [
        "## Merge interference",
        "",
        "How much of each node's effect survived linking: its directed gain in the linked checkpoint "
        "as a fraction of its directed gain alone (TIES trims, elects signs and averages, so less than "
        "100% is expected; more than 100% means other nodes pushed the same way).",
        "",
        interference_table(report),
        "",
    ]
    if report.interference is not None:
        out += _pairs_table(report.interference)
    if "interference" in report.figures:
        out += [f"![interference]({report.figures['interference']})", ""]
    return out


def _consolidation_section(report: EvalReport) -> list[str]:
    record = report.consolidation
    if not record:
        return []
    out = [
        "## Consolidation",
        "",
        f"`merge.consolidate` distilled the linked weights for {record['steps']} steps toward each node alone "
        "(on its examples) and the base (on general text). KL(teacher ‖ checkpoint) on the response tokens, "
        "lower is closer; the tables above score the consolidated checkpoint.",
        "",
        "| teacher | plain merge | consolidated |",
        "|---|---:|---:|",
    ]
    out += [f"| {n} | {b:.4f} | {record['kl_after'][n]:.4f} |" for n, b in record["kl_before"].items()]
    out.append("")
    if "consolidation" in report.figures:
        out += [f"![consolidation]({report.figures['consolidation']})", ""]
    return out


def _training_section(report: EvalReport) -> list[str]:
    trained = [n for n in report.nodes if n.training is not None]
    if not trained:
        return []
    out = ["## Training", "", "| node | steps | final loss | oscillation |", "|---|---:|---:|---:|"]
    out += [
        f"| {n.id} | {n.training.steps} | {n.training.final_loss:.4f} | {n.training.oscillation:.2f} |" for n in trained
    ]
    out.append("")
    if "loss_curves" in report.figures:
        out += [f"![loss curves]({report.figures['loss_curves']})", ""]
    return out


def _samples_section(report: EvalReport) -> list[str]:
    samples = [n for n in report.nodes if n.samples]
    if not samples:
        return []
    out = ["## Samples", "", f"Greedy, {report.settings.max_new_tokens} new tokens at most.", ""]
    for n in samples:
        out += [f"### {n.id} (weight {n.weight:+g})", "", "| prompt | base | built |", "|---|---|---|"]
        out += [f"| {_cell(x.prompt)} | {_cell(x.base, 400)} | {_cell(x.built, 400)} |" for x in n.samples]
        out.append("")
    return out


def render_markdown(report: EvalReport) -> str:
    """``report.md``: tables in markdown and the figures, section by section."""
    out: list[str] = []
    for section in (
        _header,
        _behaviour_section,
        tests_section,
        _retention_section,
        _interference_section,
        _consolidation_section,
        _training_section,
        _samples_section,
    ):
        out += section(report)
    t = report.timings
    if t:
        out += ["## Timing", "", " · ".join(f"{k} {v:.1f} s" for k, v in t.items()), ""]
    return "\n".join(out)


def print_summary(report: EvalReport) -> str:
    """The tables, as text for a terminal (the same markdown)."""
    return "\n\n".join(
        [
            f"{report.personality}: {'PASSED' if report.passed else 'FAILED'} ({report.seconds:.0f} s)",
            behaviour_table(report),
            *([tests_table(report)] if report.tests is not None and report.tests.built else []),
            retention_table(report),
            gates_table(report),
        ]
    )
