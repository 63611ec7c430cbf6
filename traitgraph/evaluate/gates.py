"""The gates: the budgets of ``eval:`` checked against an evaluated build.

>>> from traitgraph.evaluate.schema import Retention
>>> (gate,) = check_gates(EvalSettings(max_retention_loss_pct=10.0), [],
...     Retention(text_source="shipped", lines=1, tokens=1, base_loss=2.0, linked_loss=2.5))
>>> gate.message
'retention: general-text loss rose 25.0% > budget 10.0%'
"""

from __future__ import annotations

from pathlib import Path

from traitgraph.evaluate.schema import REPORT_MD, EvalReport, Gate, NodeResult, Retention
from traitgraph.graph.schema import EvalSettings


def check_gates(settings: EvalSettings, nodes: list[NodeResult], retention: Retention) -> list[Gate]:
    """The budgets of ``eval:``: general-text loss rise and each node's directed gain (linked)."""
    change = retention.change_pct
    budget = settings.max_retention_loss_pct
    gates = [
        Gate(
            name="retention",
            passed=change <= budget,
            message=(
                f"retention: general-text loss is NaN, not a number (budget {budget:.1f}%)"
                if change != change
                else f"retention: general-text loss {'rose' if change >= 0 else 'fell'} {abs(change):.1f}% "
                f"{'<=' if change <= budget else '>'} budget {budget:.1f}%"
            ),
        )
    ]
    floor = settings.min_behaviour_gain
    for node in nodes:
        g = node.directed_gain_linked
        if g is None:
            continue
        ok = g >= floor
        gates.append(
            Gate(
                name=f"node:{node.id}",
                passed=ok,
                message=f"node '{node.id}': directed gain is NaN, not a number (floor {floor:.2f})"
                if g != g
                else f"node '{node.id}': directed gain {g:+.2f} {'>=' if ok else '<'} {floor:.2f}",
            )
        )
    if retention.prompts:  # forgetting that the loss hides: facts the base knew
        from traitgraph.evaluate.kept_words import prompts_gate_message

        lost, allowed = len(retention.lost), settings.max_general_prompts_lost
        gates.append(Gate(name="prompts", passed=lost <= allowed, message=prompts_gate_message(retention, allowed)))
    return gates


FORGETTING_HINT = (
    "lower a node's weight or the merge's lambda or density, add replay, or change the budget in "
    "personality.yaml `eval:`"
)
WEAKNESS_HINT = (
    "raise the node's weight or the merge's lambda, train it longer (steps, learning_rate), or lower "
    "`eval.min_behaviour_gain`"
)
TESTS_HINT = (
    "read the failing replies in the report; strengthen the nodes as for a weak gain, or lower "
    "`eval.min_test_pass_rate` / `node_test_pass_rate`"
)


def failure_hints(failed: list[Gate]) -> list[str]:
    """What to try, for the kinds of gate that failed (forgetting, a weak node, behaviour tests)."""
    kinds = {g.name.split(":")[0] for g in failed}
    hints = [FORGETTING_HINT] if kinds & {"retention", "prompts"} else []
    hints += [WEAKNESS_HINT] if "node" in kinds else []
    hints += [TESTS_HINT] if "tests" in kinds else []
    return hints


def gate_failure_message(report: EvalReport, out_root: Path) -> str:
    failed = report.failures()
    lines = [f"evaluation failed {len(failed)} of {len(report.gates)} gates (report: {out_root / REPORT_MD}):"]
    lines += [f"  - {g.message}" for g in failed]
    lines += [f"    hint: {hint}" for hint in failure_hints(failed)]
    return "\n".join(lines)
