"""The evaluation report's schema: one pydantic document, ``OUT/report.json``.

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
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from traitgraph.errors import BuildError
from traitgraph.evaluate.behaviour_tests import BehaviourTestReport
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
    trimmed: ModelScore | None = Field(
        default=None, description="Under base + w·own_trim(τ): the merge's own sparsification of this node alone."
    )
    gain_trimmed: float | None = Field(default=None, description="measure(base + w·own_trim(τ)) − measure(base).")
    kept_by_trim: float | None = Field(
        default=None, description="directed gain trimmed / directed gain alone: what the node's own trim kept."
    )
    kept_by_merge: float | None = Field(
        default=None, description="directed gain linked / directed gain trimmed: what combining with the others kept."
    )
    gain_joint: float | None = Field(
        default=None, description="measure(base + τ_joint) − measure(base) (eval.joint_reference)."
    )
    kept_of_joint: float | None = Field(
        default=None, description="directed gain linked / directed gain under the joint reference."
    )
    cases: list[CaseRow] = Field(default_factory=list)
    samples: list[Sample] = Field(default_factory=list)
    training: TrainingTrace | None = None
    ood: NodeResult | None = Field(
        default=None, description="The same scores on the node's `ood` (out-of-distribution) cases."
    )

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
    def from_result(cls, result) -> Interference:
        def rows(m):
            return [[None if math.isnan(x) else float(x) for x in row] for row in m]

        return cls(
            names=list(result.names),
            density=result.density,
            entries=result.entries,
            cosine=rows(result.cosine),
            overlap=rows(result.overlap),
            conflict=rows(result.conflict),
        )

    def to_result(self):
        from traitgraph.linker.interference import InterferenceResult

        def rows(m):
            return [[float("nan") if x is None else x for x in row] for row in m]

        return InterferenceResult(
            list(self.names), self.density, rows(self.cosine), rows(self.overlap), rows(self.conflict), self.entries
        )


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
    consolidation: dict[str, Any] | None = Field(
        default=None,
        description="The link's merge.consolidate record (checkpoint/consolidation.json): KL to each node "
        "alone and to the base, before and after distilling; None when the build did not consolidate.",
    )
    tests: BehaviourTestReport | None = Field(default=None, description="Behaviour tests (`expect:`), base and built.")
    gates: list[Gate]
    passed: bool
    seconds: float = Field(description="Wall time of the evaluation.")
    threads: int = Field(default=0, description="torch threads it ran on.")
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per phase.")
    figures: dict[str, str] = Field(default_factory=dict, description="Figure name -> path relative to OUT.")
    notes: list[str] = Field(default_factory=list, description="What could not be measured, and why.")

    def failures(self) -> list[Gate]:
        return [g for g in self.gates if not g.passed]

    @computed_field
    @property
    def mean_kept(self) -> float | None:
        """The mean of the nodes' ``kept``: the report's headline."""
        values = [n.kept for n in self.nodes if n.kept is not None]
        return sum(values) / len(values) if values else None


def read_report(path: str | Path) -> EvalReport:
    """Load ``report.json``; a missing or foreign file is a :class:`BuildError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BuildError(
            f"no evaluation report at {path}; run `traitgraph eval` (or `traitgraph build`) first"
        ) from None
    try:
        return EvalReport.model_validate_json(text)
    except ValueError as exc:
        raise BuildError(
            f"{path}: not a traitgraph evaluation report ({exc.__class__.__name__}); run `traitgraph eval` again"
        ) from None
