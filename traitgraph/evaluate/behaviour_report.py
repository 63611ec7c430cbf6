"""The report's behaviour-test and out-of-distribution sections, and their figure.

Drawn from an :class:`~traitgraph.evaluate.report.EvalReport` alone (so
``traitgraph report`` redraws them from ``report.json``):

* a table per node: tests, pass rates of the base, the node alone and the
  build, the tests linking lost and won, and every failing reply of the built
  model with the checks it failed;
* the node margins on their ``ood`` cases, base → alone → linked;
* ``figures/tests.png``: pass rate per node, base, alone and built side by side.

>>> "\\n".join(tests_section(report))      # doctest: +SKIP
'## Behaviour tests ...'
"""

from __future__ import annotations

from traitgraph.evaluate.behaviour_tests import group_label


def _rate(passed: int, total: int) -> str:
    return "–" if total == 0 else f"{passed}/{total} ({passed / total:.0%})"


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|") or "*(empty)*"


def tests_table(report) -> str:
    """``| node | tests | base | alone | built | failing (built) |``, one row per node and the general
    prompts (*alone*: the node's own tests under base + w·τ; "–" for the general prompts and old reports)."""
    tests = report.tests
    rows = ["| node | tests | base | alone | built | failing (built) |", "|---|---:|---:|---:|---:|---|"]
    for group, base, alone, built in tests.rows():
        failing = [r.case for r in tests.built if r.group == group and not r.passed]
        rows.append(
            f"| {group_label(group)} | {built[1]} | {_rate(*base)} | {_rate(*(alone or (0, 0)))} "
            f"| **{_rate(*built)}** | {', '.join(failing) or '–'} |"
        )
    passed_base = sum(r.passed for r in tests.base)
    passed_built = sum(r.passed for r in tests.built)
    rows.append(
        f"| all | {len(tests.built)} | {_rate(passed_base, len(tests.base))} | "
        f"{_rate(sum(r.passed for r in tests.alone), len(tests.alone))} "
        f"| **{_rate(passed_built, len(tests.built))}** | |"
    )
    return "\n".join(rows)


def merge_lines(report) -> list[str]:
    """What linking changed in words: the tests a node passes alone and the build fails, and back."""
    tests = report.tests
    if not tests.alone:
        return []
    lost, won = tests.lost_by_merge(), tests.won_by_merge()
    alone_passed = sum(r.passed for r in tests.alone)
    nodes = {r.group for r in tests.alone}
    built_passed = sum(r.passed for r in tests.built if r.group in nodes)
    return [
        f"**Kept in words:** the nodes pass {alone_passed}/{len(tests.alone)} of their own tests alone "
        f"and {built_passed}/{len(tests.alone)} linked; linking lost {len(lost)} "
        f"({', '.join(lost) or 'none'}) and won {len(won)} ({', '.join(won) or 'none'}).",
        "",
    ]


def failing_table(report) -> list[str]:
    """Every failing test of the built model: its prompt, the reply, the failed checks, and
    whether the base and the node alone passed it."""
    failed = [r for r in report.tests.built if not r.passed]
    if not failed:
        return ["Every behaviour test passed.", ""]
    base = {r.id: r.passed for r in report.tests.base}
    alone = {r.id: r.passed for r in report.tests.alone}
    rows = ["| test | prompt | built reply | failed checks | base | alone |", "|---|---|---|---|---|---|"]
    rows += [
        f"| {_cell(r.id)} | {_cell(r.prompt)} | {_cell(r.reply, 300)} | {_cell('; '.join(r.failures), 300)} "
        f"| {_BASE.get(base.get(r.id), '–')} | {_BASE.get(alone.get(r.id), '–')} |"
        for r in failed
    ]
    return [
        "Failing replies of the built model (*base*, *alone*: whether the base and the node alone passed "
        "the same test):",
        "",
        *rows,
        "",
    ]


_BASE = {True: "passed", False: "failed too"}


def ood_table(report) -> str:
    """The nodes' scores on their ``ood`` cases (same measure as the behaviour table)."""
    rows = [
        "| node | cases | measure | base | alone | linked | directed gain alone | directed gain linked | verdict |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for n in report.nodes:
        o = n.ood
        if o is None or o.base is None or o.alone is None or o.linked is None:
            continue
        key = "margin" if o.measure == "margin" else "logprob"
        rows.append(
            f"| {n.id} | {o.n_cases} | {o.measure} | {getattr(o.base, key):+.2f} | {getattr(o.alone, key):+.2f} "
            f"| {getattr(o.linked, key):+.2f} | {o.directed_gain_alone:+.2f} | **{o.directed_gain_linked:+.2f}** "
            f"| {o.verdict} |"
        )
    return "\n".join(rows)


def tests_section(report) -> list[str]:
    """Markdown lines of the behaviour-test and out-of-distribution sections (none without data)."""
    out: list[str] = []
    if report.tests is not None and report.tests.built:
        s = report.settings
        out += [
            "## Behaviour tests",
            "",
            "What the model *says*: the greedy reply to each eval and ood case with `expect:` (at most "
            f"{s.max_new_tokens} new tokens) and to each general prompt (its answer expected in the reply), "
            "checked under the base, each node alone (its own tests only, base + w·τ; the *all* row's alone "
            "cell counts the nodes' tests, without the general prompts) and the built checkpoint. "
            f"Gate: pass rate ≥ {s.min_test_pass_rate:.0%} "
            "overall and per node (0% is off)"
            + (
                f"; per node: {', '.join(f'{k} {v:.0%}' for k, v in sorted(s.node_test_pass_rate.items()))}"
                if s.node_test_pass_rate
                else ""
            )
            + ".",
            "",
            tests_table(report),
            "",
            *merge_lines(report),
        ]
        if "tests" in report.figures:
            out += [f"![behaviour tests]({report.figures['tests']})", ""]
        out += failing_table(report)
    if any(n.ood is not None for n in report.nodes):
        out += [
            "## Out-of-distribution cases",
            "",
            "Each node's `ood` cases (topics and phrasings unlike its examples and eval cases), scored "
            "like the behaviour table above.",
            "",
            ood_table(report),
            "",
        ]
    return out
