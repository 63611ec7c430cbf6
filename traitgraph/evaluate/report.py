"""The evaluation report: one pydantic document (``OUT/report.json``) and its rendering
(``OUT/report.md`` with PNG figures under ``OUT/figures/``).

``report.json`` holds every number behind every table and figure, so
``traitgraph report`` redraws the whole report from it without a model.
Every file is written atomically; ``report.json`` is written last, so a
report that says it passed always has its figures beside it.

Units: a *margin* is log p(wanted) − log p(rejected), each summed over the
response tokens with the chat template applied (nats). A *gain* is
margin(model) − margin(base). The *directed gain* is sign(weight) × gain: a
node with a negative weight is meant to move its own examples' behaviour
down, so a positive directed gain always means "moved as intended".

>>> report = EvalReport.model_validate_json(Path("out/report.json").read_text())  # doctest: +SKIP
>>> write_report(report, Path("out"))                                            # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from traitgraph.atomic import write_text_atomic
from traitgraph.errors import BuildError
from traitgraph.graph.schema import EvalSettings

FORMAT = "traitgraph.eval_report/1"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
FIGURES_DIR = "figures"


class _Model(BaseModel):
    """Unknown keys are errors; derived values (``computed_field``) are written to JSON for
    machines but recomputed, not trusted, when the JSON is read back."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _drop_derived(cls, data: Any) -> Any:
        if isinstance(data, dict) and cls.model_computed_fields.keys() & data.keys():
            data = {k: v for k, v in data.items() if k not in cls.model_computed_fields}
        return data


# --------------------------------------------------------------------------- behaviour


class ModelScore(_Model):
    """One node's eval cases under one model."""

    loss: float = Field(description="Mean per-token loss of the wanted responses (all cases, token-weighted).")
    logprob: float = Field(description="Mean summed log p(wanted response) per case.")
    margin: float | None = Field(
        default=None, description="Mean preference margin over the cases that have `rejected`."
    )
    win_rate: float | None = Field(
        default=None, description="Fraction of those cases where the wanted response is more likely."
    )


class CaseRow(_Model):
    """One eval case under the three models."""

    prompt: str
    has_rejected: bool
    base: float = Field(description="Margin (or log p(wanted) without `rejected`) under the base.")
    alone: float = Field(description="... under base + w·τ of this node alone.")
    linked: float = Field(description="... under the linked checkpoint.")


class Sample(_Model):
    """A greedy generation from the base and from the built model."""

    prompt: str
    base: str
    built: str


class TrainingTrace(_Model):
    """What the node's task-vector metadata says about its training."""

    steps: int
    final_loss: float
    oscillation: float
    loss_curve: list[float]
    monitor: dict[str, Any] | None = None
    """The training monitor's checks and kept step (``training.monitor``), when it was on."""


class NodeResult(_Model):
    """The behaviour score of one node."""

    id: str
    description: str = ""
    weight: float
    direction: Literal[1, -1] = Field(description="sign(weight): the direction the behaviour should move.")
    measure: Literal["margin", "logprob", "none"] = Field(
        description="`margin` when some cases have `rejected`; else the summed log p(wanted); "
        "`none` without eval cases."
    )
    n_cases: int
    n_contrastive: int = Field(description="Cases with a `rejected` reply.")
    base: ModelScore | None = None
    alone: ModelScore | None = None
    linked: ModelScore | None = None
    gain_alone: float | None = Field(default=None, description="measure(base + w·τ) − measure(base).")
    gain_linked: float | None = Field(default=None, description="measure(linked) − measure(base).")
    kept: float | None = Field(
        default=None,
        description="directed gain linked / directed gain alone: how much of the node's effect the merge "
        "kept (undefined when the node alone did not move as intended).",
    )
    cases: list[CaseRow] = Field(default_factory=list)
    samples: list[Sample] = Field(default_factory=list)
    training: TrainingTrace | None = None

    @computed_field
    @property
    def directed_gain_alone(self) -> float | None:
        return None if self.gain_alone is None else self.direction * self.gain_alone

    @computed_field
    @property
    def directed_gain_linked(self) -> float | None:
        return None if self.gain_linked is None else self.direction * self.gain_linked

    @computed_field
    @property
    def verdict(self) -> str:
        g = self.directed_gain_linked
        if g is None:
            return "not measured (no eval cases)"
        return "moved as intended" if g > 0 else ("did not move" if g == 0 else "moved against intent")


# --------------------------------------------------------------------------- retention


class PromptResult(_Model):
    """One general prompt: the greedy answers of the base and of the built model."""

    prompt: str
    answer: str
    base_output: str
    built_output: str
    base_ok: bool
    built_ok: bool


class Retention(_Model):
    """How much general ability the build kept."""

    text_source: str = Field(description="The general text file (`shipped` for the packaged one).")
    lines: int
    tokens: int
    base_loss: float = Field(description="Mean per-token loss of the general text under the base.")
    linked_loss: float
    prompts: list[PromptResult] = Field(default_factory=list)

    @computed_field
    @property
    def change_pct(self) -> float:
        return 100.0 * (self.linked_loss - self.base_loss) / self.base_loss

    @computed_field
    @property
    def base_accuracy(self) -> float:
        return sum(p.base_ok for p in self.prompts) / max(len(self.prompts), 1)

    @computed_field
    @property
    def built_accuracy(self) -> float:
        return sum(p.built_ok for p in self.prompts) / max(len(self.prompts), 1)

    @property
    def lost(self) -> list[PromptResult]:
        """Prompts the base answered and the built model no longer does."""
        return [p for p in self.prompts if p.base_ok and not p.built_ok]

    @property
    def gained(self) -> list[PromptResult]:
        return [p for p in self.prompts if p.built_ok and not p.base_ok]


# --------------------------------------------------------------------------- the whole report


class Interference(_Model):
    """Pairwise overlap of the linked task vectors, as :mod:`traitgraph.linker.interference`
    measures it (n × n matrices in the order of ``names``; ``None`` where undefined)."""

    names: list[str]
    density: float
    entries: int
    cosine: list[list[float]]
    overlap: list[list[float]]
    conflict: list[list[float | None]]

    @classmethod
    def from_result(cls, result) -> "Interference":
        def rows(m):
            return [[None if math.isnan(x) else float(x) for x in row] for row in m]

        return cls(names=list(result.names), density=result.density, entries=result.entries,
                   cosine=rows(result.cosine), overlap=rows(result.overlap), conflict=rows(result.conflict))

    def to_result(self):
        from traitgraph.linker.interference import InterferenceResult

        def rows(m):
            return [[float("nan") if x is None else x for x in row] for row in m]

        return InterferenceResult(list(self.names), self.density, rows(self.cosine), rows(self.overlap),
                                  rows(self.conflict), self.entries)


class Gate(_Model):
    """One budget of ``eval:`` checked against the build."""

    name: str
    passed: bool
    message: str


class GraphPicture(_Model):
    """The personality graph as it was evaluated (for redrawing without the specs)."""

    nodes: list[dict[str, Any]]
    edges: list[dict[str, Any]]


class EvalReport(_Model):
    """``OUT/report.json``."""

    format: Literal["traitgraph.eval_report/1"] = FORMAT
    traitgraph_version: str
    personality: str
    base: str
    checkpoint: str
    settings: EvalSettings
    inputs: dict[str, Any] = Field(description="What the report depends on (the eval task's up-to-date key).")
    graph: GraphPicture
    nodes: list[NodeResult]
    retention: Retention
    interference: Interference | None = None
    gates: list[Gate]
    passed: bool
    seconds: float = Field(description="Wall time of the evaluation.")
    threads: int = Field(default=0, description="torch threads it ran on.")
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per phase.")
    figures: dict[str, str] = Field(default_factory=dict, description="Figure name -> path relative to OUT.")
    notes: list[str] = Field(default_factory=list, description="What could not be measured, and why.")

    def failures(self) -> list[Gate]:
        return [g for g in self.gates if not g.passed]


def read_report(path: str | Path) -> EvalReport:
    """Load ``report.json``; a missing or foreign file is a :class:`BuildError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BuildError(f"no evaluation report at {path}; run `traitgraph eval` (or `traitgraph build`) first") from None
    try:
        return EvalReport.model_validate_json(text)
    except ValueError as exc:
        raise BuildError(f"{path}: not a traitgraph evaluation report ({exc.__class__.__name__}); run `traitgraph eval` again") from None


# --------------------------------------------------------------------------- gates


def check_gates(
    settings: EvalSettings, nodes: list[NodeResult], retention: Retention
) -> list[Gate]:
    """The budgets of ``eval:``: general-text loss rise and each node's directed gain (linked)."""
    change = retention.change_pct
    budget = settings.max_retention_loss_pct
    gates = [
        Gate(
            name="retention",
            passed=change <= budget,
            message=(
                f"retention: general-text loss {'rose' if change >= 0 else 'fell'} {abs(change):.1f}% "
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
                message=f"node '{node.id}': directed gain {g:+.2f} {'>=' if ok else '<'} {floor:.2f}",
            )
        )
    return gates


def gate_failure_message(report: EvalReport, out_root: Path) -> str:
    failed = report.failures()
    lines = [f"evaluation failed {len(failed)} of {len(report.gates)} gates (report: {out_root / REPORT_MD}):"]
    lines += [f"  - {g.message}" for g in failed]
    lines.append(
        "    hint: lower a node's weight or the merge density, add replay, or change the budget in "
        "personality.yaml `eval:`"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------- markdown


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
        wins = (
            f"{_pct(n.base.win_rate)} → {_pct(n.linked.win_rate)}" if n.measure == "margin" else "–"
        )
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
        rows.append(
            f"| {n.id} | {_f(n.directed_gain_alone)} | {_f(n.directed_gain_linked)} | {_pct(n.kept)} |"
        )
    return "\n".join(rows)


def gates_table(report: EvalReport) -> str:
    rows = ["| gate | result | detail |", "|---|---|---|"]
    rows += [f"| {g.name} | {'pass' if g.passed else '**FAIL**'} | {_cell(g.message, 300)} |" for g in report.gates]
    return "\n".join(rows)


def render_markdown(report: EvalReport) -> str:
    """``report.md``: tables in markdown and the figures."""
    fig = report.figures
    s = report.settings
    status = "PASSED" if report.passed else f"FAILED ({len(report.failures())} gate(s))"
    out: list[str] = [
        f"# {report.personality}: build report",
        "",
        f"**{status}**: base `{report.base}`, checkpoint `{report.checkpoint}`, "
        f"traitgraph {report.traitgraph_version}, evaluated in {report.seconds:.0f} s "
        f"({report.threads} thread{'s' if report.threads != 1 else ''}).",
        "",
    ]
    out += [f"- note: {n}" for n in report.notes]
    out += ["", "## Gates", "", gates_table(report), ""]
    if "graph" in fig:
        out += ["## Personality graph", "", f"![personality graph]({fig['graph']})", ""]
    out += [
        "## Behaviour",
        "",
        "Scores on each node's held-out eval cases under three models: the **base**, the base plus the "
        "node's own weighted task vector **alone** (base + w·τ), and the **linked** checkpoint. "
        "*margin* = log p(wanted) − log p(rejected), each summed over the response tokens with the chat "
        "template applied (nats), averaged over cases; a node without `rejected` replies is measured by "
        "the summed log p(wanted) instead. *gain* = measure(model) − measure(base). *directed gain* = "
        "sign(weight) × gain: for a negative-weight node the behaviour its examples teach should fall, "
        f"so positive always means *moved as intended*. Gate: directed gain (linked) ≥ {s.min_behaviour_gain:.2f}.",
        "",
        behaviour_table(report),
        "",
    ]
    if "behaviour" in fig:
        out += [f"![behaviour gain]({fig['behaviour']})", ""]
    out += [
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
    if "retention" in fig:
        out += [f"![retention]({fig['retention']})", ""]
    out += [
        "## Merge interference",
        "",
        "How much of each node's effect survived linking: its directed gain in the linked checkpoint "
        "as a fraction of its directed gain alone (TIES trims, elects signs and averages, so less than "
        "100% is expected; more than 100% means other nodes pushed the same way).",
        "",
        interference_table(report),
        "",
    ]
    inter = report.interference
    if inter is not None:
        out += [
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
    if "interference" in fig:
        out += [f"![interference]({fig['interference']})", ""]
    trained = [n for n in report.nodes if n.training is not None]
    if trained:
        out += ["## Training", "", "| node | steps | final loss | oscillation |", "|---|---:|---:|---:|"]
        out += [
            f"| {n.id} | {n.training.steps} | {n.training.final_loss:.4f} | {n.training.oscillation:.2f} |"
            for n in trained
        ]
        out.append("")
        if "loss_curves" in fig:
            out += [f"![loss curves]({fig['loss_curves']})", ""]
    samples = [n for n in report.nodes if n.samples]
    if samples:
        out += ["## Samples", "", f"Greedy, {s.max_new_tokens} new tokens at most.", ""]
        for n in samples:
            out += [f"### {n.id} (weight {n.weight:+g})", "", "| prompt | base | built |", "|---|---|---|"]
            out += [f"| {_cell(x.prompt)} | {_cell(x.base, 400)} | {_cell(x.built, 400)} |" for x in n.samples]
            out.append("")
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
            retention_table(report),
            gates_table(report),
        ]
    )


# --------------------------------------------------------------------------- writing


def write_report(report: EvalReport, out_root: str | Path) -> EvalReport:
    """Draw the figures, then write ``report.md`` and ``report.json`` (last), atomically.

    Returns the report with its ``figures`` filled in.
    """
    from traitgraph.evaluate.plots import draw_figures

    out_root = Path(out_root)
    figures = draw_figures(report, out_root / FIGURES_DIR)
    report = report.model_copy(update={"figures": {k: str(v.relative_to(out_root)) for k, v in figures.items()}})
    write_text_atomic(out_root / REPORT_MD, render_markdown(report))
    write_text_atomic(out_root / REPORT_JSON, json.dumps(report.model_dump(mode="json"), indent=1) + "\n")
    return report
