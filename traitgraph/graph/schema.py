"""The spec language: one pydantic model per file format.

Two kinds of file live under a specs directory::

    specs/personality.yaml      -> Personality
    specs/nodes/<id>.yaml       -> NodeSpec

Every model forbids unknown keys (a typo is an error, not a silently ignored
setting), is frozen (a validated spec is a value), and documents each field.
Range checks live here, next to the fields they guard; checks that need the
whole graph (edges, cycles) live in :mod:`traitgraph.graph.validate`.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NODE_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
NODE_ID_RE = re.compile(NODE_ID_PATTERN)

#: Edge kinds. Only ``refines`` orders the build; the others are documentation
#: that tools (the graph picture, the interference report) use.
EdgeKind = Literal["related", "refines", "conflicts"]
EDGE_KINDS: dict[str, str] = {
    "related": "the behaviours go together; no effect on training",
    "refines": "this node trains on top of the target's task vector, so it depends on it",
    "conflicts": "the behaviours pull against each other; the interference report watches the pair",
}
#: Edge kinds that make one node's training depend on another's.
DEPENDENCY_EDGE_KINDS = frozenset({"refines"})


class Strict(BaseModel):
    """Base of every spec model: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --------------------------------------------------------------------------- examples


class Message(Strict):
    """One chat turn of a context."""

    role: Literal["system", "user", "assistant"] = Field(description="Who speaks.")
    content: str = Field(min_length=1, description="What is said.")


class Example(Strict):
    """A context and the response wanted after it.

    The context is either ``context`` (one user message, the common case) or
    ``messages`` (a whole conversation so far). Loss is taken on ``response``
    only (the decision tokens).
    """

    context: str | None = Field(default=None, min_length=1, description="The user's message.")
    messages: tuple[Message, ...] | None = Field(
        default=None, description="A conversation so far, instead of `context`."
    )
    response: str = Field(min_length=1, description="The assistant's wanted reply.")

    @model_validator(mode="after")
    def _one_context(self) -> "Example":
        if (self.context is None) == (self.messages is None):
            raise ValueError("give exactly one of `context` (a user message) or `messages` (a chat)")
        if self.messages is not None:
            if not self.messages:
                raise ValueError("`messages` is empty")
            if self.messages[-1].role != "user":
                raise ValueError("the last of `messages` must be a user turn")
        return self

    def chat(self) -> list[dict[str, str]]:
        """The context as chat messages (without the response)."""
        if self.messages is not None:
            return [{"role": m.role, "content": m.content} for m in self.messages]
        return [{"role": "user", "content": self.context or ""}]


class EvalCase(Example):
    """A held-out case: never trained on. ``rejected`` is the unwanted reply,
    for the preference margin log p(response) - log p(rejected)."""

    rejected: str | None = Field(
        default=None, min_length=1, description="An unwanted reply, for contrastive scoring."
    )


# --------------------------------------------------------------------------- settings


OptimizerName = Literal["apollo", "apollo_mini", "adamw"]


class OptimizerSettings(Strict):
    """The optimizer and its knobs. ``apollo`` and ``apollo_mini`` are presets of
    APOLLO (Zhu et al. 2024, arXiv 2412.05270); ``adamw`` is the baseline."""

    name: OptimizerName = Field(default="apollo_mini", description="Registry name.")
    rank: int | None = Field(
        default=None, ge=1, description="Projection rank (APOLLO; default 256, Mini: 1)."
    )
    scale_type: Literal["channel", "tensor"] | None = Field(
        default=None, description="Scaling granularity (APOLLO: channel, Mini: tensor)."
    )
    scale: float | None = Field(
        default=None, gt=0, description="Gradient scale factor α (APOLLO: 1, Mini: 128)."
    )
    update_proj_gap: int = Field(
        default=200, ge=1, description="Steps between fresh random projections."
    )
    betas: tuple[float, float] = Field(default=(0.9, 0.999), description="Adam moment decays.")
    eps: float = Field(default=1e-8, gt=0, description="Adam epsilon.")
    weight_decay: float = Field(default=0.0, ge=0, description="Decoupled weight decay.")
    norm_growth_limit: float | None = Field(
        default=1.01, gt=1, description="APOLLO's norm-growth limiter γ; null turns it off."
    )

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError("each beta must be in [0, 1)")
        return v


class ReplaySettings(Strict):
    """Interleaved replay: mix other text into each batch to protect what the
    base already knows. Off unless ``fraction`` > 0."""

    fraction: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Share of each batch drawn from the replay source."
    )
    source: Literal["general", "other_nodes"] = Field(
        default="general",
        description="`general`: the shipped replay corpus (disjoint from the retention text); `other_nodes`: examples of the other nodes with a positive weight.",
    )


class MonitorSettings(Strict):
    """A held-out monitor that keeps the τ of the best step (see docs/training.md).

    Every ``every`` steps it scores a validation split of the node's examples
    (held out from training by a seeded rule) and a general-text probe drawn
    from the replay corpus (never the retention set). The kept step is the one
    with the lowest validation loss among the checks whose general-text loss
    rose by at most ``max_general_rise_pct`` over the start; training stops
    after ``patience`` checks in a row without a new best.
    """

    every: int = Field(default=4, ge=1, le=100_000, description="Steps between checks.")
    validation_fraction: float = Field(
        default=0.2, gt=0.0, le=0.5,
        description="Share of the node's examples held out for validation (at least one; seeded by `seed`).",
    )
    general_lines: int = Field(
        default=32, ge=1, le=1000, description="Lines of the replay corpus scored as the general-text probe."
    )
    max_general_rise_pct: float = Field(
        default=2.0, ge=0.0, description="Ceiling on the probe's loss rise (percent of its start) for a kept step."
    )
    patience: int = Field(default=2, ge=1, description="Stop after this many checks in a row without a new best.")


class AnchorSettings(Strict):
    """Hold training near where it started (see docs/training.md). At least one of
    the two pulls must be on."""

    l2: float = Field(
        default=0.0, ge=0.0, lt=1.0,
        description="Share of τ pulled back toward the start weights after every step (0: off).",
    )
    kl: float = Field(
        default=0.0, ge=0.0,
        description="Weight of KL(start ‖ model) on the replay rows' next-token distributions (0: off; needs replay).",
    )

    @model_validator(mode="after")
    def _one_pull(self) -> AnchorSettings:
        if self.l2 == 0 and self.kl == 0:
            raise ValueError("an anchor with `l2: 0` and `kl: 0` does nothing; set one of them or remove `anchor`")
        return self


def _trainable_patterns(v: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if v is not None:
        if not v:
            raise ValueError("give at least one glob, e.g. 'model.layers.*.mlp.*', or remove `trainable`")
        if any(not p.strip() for p in v):
            raise ValueError("an empty glob matches nothing")
    return v


#: Training fields added after the first release: left out of hashes and
#: records while unset, so specs that do not use them keep their hashes.
OPTIONAL_TRAINING_FIELDS = ("monitor", "trainable", "anchor")


class TrainingSettings(Strict):
    """How one node is trained. Personality-wide defaults; a node may override
    any field (see :class:`TrainingOverrides`)."""

    optimizer: OptimizerSettings = Field(default_factory=OptimizerSettings)
    learning_rate: float = Field(default=3e-5, gt=0, le=1.0, description="Peak learning rate.")
    steps: int = Field(default=8, gt=0, le=100_000, description="Optimizer steps.")
    batch_size: int = Field(default=8, gt=0, le=4096, description="Examples per step.")
    warmup_steps: int = Field(default=0, ge=0, description="Linear warm-up steps.")
    seed: int = Field(default=0, ge=0, description="Seed for data order and projections.")
    context: Literal["frozen", "full"] = Field(
        default="frozen",
        description="`frozen`: context runs without gradient through a KV cache; `full`: masked backprop.",
    )
    max_length: int = Field(
        default=512, gt=8, description="Longest tokenised example; a longer one is an error."
    )
    grad_clip: float | None = Field(default=1.0, gt=0, description="Max global grad norm; null: off.")
    divergence_factor: float = Field(
        default=4.0, gt=1.0, description="Stop when the smoothed loss exceeds this × its start."
    )
    replay: ReplaySettings = Field(default_factory=ReplaySettings)
    vector_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32",
        description="Task-vector dtype on disk. float32 is exact; bfloat16 halves the size and rounds τ.",
    )
    monitor: MonitorSettings | None = Field(
        default=None, description="Held-out monitor that keeps the best step and stops early; null: off."
    )
    trainable: tuple[str, ...] | None = Field(
        default=None,
        description="Globs over parameter names (fnmatch, e.g. `model.layers.1[5-9].mlp.*`); only matching "
        "tensors train and appear in τ. null: every parameter.",
    )
    anchor: AnchorSettings | None = Field(default=None, description="Pull toward the start weights; null: off.")

    @field_validator("trainable")
    @classmethod
    def _trainable_globs(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return _trainable_patterns(v)

    def record(self) -> dict:
        """The settings as JSON data, optional fields left out while unset (hashes and metadata use this).

        >>> "monitor" in TrainingSettings().record(), TrainingSettings().record()["steps"]
        (False, 8)
        """
        data = self.model_dump(mode="json")
        for name in OPTIONAL_TRAINING_FIELDS:
            if data.get(name, "absent") is None:
                del data[name]
        return data


class OptimizerOverrides(Strict):
    """Per-node optimizer overrides; unset fields keep the personality's value."""

    name: OptimizerName | None = None
    rank: int | None = Field(default=None, ge=1)
    scale_type: Literal["channel", "tensor"] | None = None
    scale: float | None = Field(default=None, gt=0)
    update_proj_gap: int | None = Field(default=None, ge=1)
    betas: tuple[float, float] | None = None
    eps: float | None = Field(default=None, gt=0)
    weight_decay: float | None = Field(default=None, ge=0)
    norm_growth_limit: float | None = Field(default=None, gt=1)


class TrainingOverrides(Strict):
    """Per-node training overrides; unset fields keep the personality's value."""

    optimizer: OptimizerOverrides | None = None
    learning_rate: float | None = Field(default=None, gt=0, le=1.0)
    steps: int | None = Field(default=None, gt=0, le=100_000)
    batch_size: int | None = Field(default=None, gt=0, le=4096)
    warmup_steps: int | None = Field(default=None, ge=0)
    seed: int | None = Field(default=None, ge=0)
    context: Literal["frozen", "full"] | None = None
    max_length: int | None = Field(default=None, gt=8)
    grad_clip: float | None = Field(default=None, gt=0)
    divergence_factor: float | None = Field(default=None, gt=1.0)
    replay: ReplaySettings | None = None
    vector_dtype: Literal["float32", "bfloat16", "float16"] | None = None
    monitor: MonitorSettings | None = None
    trainable: tuple[str, ...] | None = None
    anchor: AnchorSettings | None = None

    @field_validator("trainable")
    @classmethod
    def _trainable_globs(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return _trainable_patterns(v)

    def apply(self, defaults: TrainingSettings) -> TrainingSettings:
        """The effective settings: ``defaults`` with every set field replaced."""
        patch = self.model_dump(exclude_none=True)
        merged = defaults.model_dump()
        merged["optimizer"].update(patch.pop("optimizer", {}))
        merged.update(patch)
        return TrainingSettings.model_validate(merged)


MergeMethodName = Literal["ties", "task_arithmetic", "dare_ties", "dare_linear"]


class MergeSettings(Strict):
    """How task vectors are linked into one checkpoint (see README, "Linking").

    ``W = W_base + λ · merge({w_i · τ_i})``; a negative node weight subtracts
    that node's behaviour.
    """

    method: MergeMethodName = Field(default="ties", description="Registry name of the merge method.")
    density: float = Field(
        default=0.2, gt=0.0, le=1.0, description="Fraction of each τ kept by the trim (TIES/DARE)."
    )
    lambda_: float = Field(
        default=1.0, alias="lambda", gt=0.0, description="Scale applied to the merged task vector."
    )
    sign_vote: Literal["weighted", "unweighted"] = Field(
        default="weighted",
        description="TIES sign election on weighted vectors (mergekit) or unweighted ones (PEFT).",
    )
    normalize: Literal["weights", "count", "none"] = Field(
        default="count",
        description=(
            "TIES disjoint-mean divisor: `count` of agreeing vectors (PEFT, the paper), `weights` = sum of "
            "agreeing |w| (mergekit when all weights are positive), or `none`. Linear methods ignore it."
        ),
    )
    seed: int = Field(default=0, ge=0, description="Seed of DARE's drop mask.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Output dtype; `auto` keeps the base's."
    )
    max_shard_size: str = Field(
        default="2GB", pattern=r"^\d+(\.\d+)?\s*(B|KB|MB|GB|KiB|MiB|GiB)$",
        description="Largest safetensors shard before splitting, e.g. `500MB`.",
    )


class EvalSettings(Strict):
    """Evaluation and its gates (see README, "Evaluation")."""

    max_retention_loss_pct: float = Field(
        default=10.0, ge=0.0,
        description="Fail the build when general-text loss rises by more than this percent.",
    )
    min_behaviour_gain: float = Field(
        default=0.0,
        description="Fail when a node's preference margin moves by less than this in its intended direction.",
    )
    max_new_tokens: int = Field(default=48, gt=0, description="Tokens per sample generation in the report.")
    general_text: str | None = Field(
        default=None, description="Path (relative to the specs dir) of a general text file; default: shipped set."
    )


# --------------------------------------------------------------------------- files


class Personality(Strict):
    """``specs/personality.yaml``: the base model and every default."""

    name: str = Field(min_length=1, description="The personality's name.")
    description: str = Field(default="", description="What this personality is for.")
    base: str = Field(
        default="smollm2-135m-instruct",
        min_length=1,
        description=(
            "The base model: the name of an embedded model (`smollm2-135m-instruct`), a local "
            "Hugging Face directory (relative to the specs dir or absolute), or a hub id."
        ),
    )
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    merge: MergeSettings = Field(default_factory=MergeSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)


class Edge(Strict):
    """A typed edge from this node to another."""

    to: str = Field(description="The other node's id.")
    kind: EdgeKind = Field(description="One of: " + ", ".join(EDGE_KINDS) + ".")


class NodeSpec(Strict):
    """``specs/nodes/<id>.yaml``: one behaviour."""

    id: str = Field(pattern=NODE_ID_PATTERN, description="Equal to the file stem; a-z, 0-9, `-`, `_`.")
    description: str = Field(min_length=1, description="The behaviour, in one or two sentences.")
    weight: float = Field(
        default=1.0, description="Strength α at link time; negative subtracts the behaviour."
    )
    examples: tuple[Example, ...] = Field(default=(), description="Training examples.")
    examples_file: str | None = Field(
        default=None,
        description="A JSONL file of more examples, relative to this node file, inside the specs dir.",
    )
    eval: tuple[EvalCase, ...] = Field(default=(), description="Held-out eval cases (never trained on).")
    edges: tuple[Edge, ...] = Field(default=(), description="Edges to other nodes.")
    training: TrainingOverrides | None = Field(default=None, description="Per-node training overrides.")

    @field_validator("weight")
    @classmethod
    def _finite_nonzero(cls, v: float) -> float:
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError("weight must be a finite number")
        if v == 0:
            raise ValueError("weight 0 links nothing; delete the node or give it a weight")
        return v
