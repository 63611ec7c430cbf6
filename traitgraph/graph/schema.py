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
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

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

    # allow_inf_nan=False: every float field refuses NaN and infinity by name ("finite number")
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)


#: largest seed: torch and numpy take seeds below 2**63
MAX_SEED = 2**63 - 1
#: largest |weight| and λ: far above any useful value, far below float32 overflow
MAX_SCALE = 1000.0


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
    def _one_context(self) -> Example:
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


#: ``no_repetition``: a reply fails when one n-gram of this many words ...
REPETITION_NGRAM = 3
#: ... occurs more than this many times in it.
REPETITION_MAX_COUNT = 2


class Expectation(Strict):
    """Checks on the model's greedy reply to an eval case (a behaviour test).

    Text checks ignore case and collapse whitespace. Example::

        expect:
          contains_any: [congratulations, well done]
          avoids: [sorry to hear]
          max_words: 60
          no_repetition: true
    """

    contains_any: tuple[str, ...] = Field(
        default=(), description="The reply contains at least one of these phrases, e.g. `[sorry, can't]`."
    )
    contains_all: tuple[str, ...] = Field(
        default=(), description="The reply contains every one of these phrases, e.g. `[Paris]`."
    )
    avoids: tuple[str, ...] = Field(
        default=(), description="The reply contains none of these phrases, e.g. `[instead, have you considered]`."
    )
    matches: str | None = Field(
        default=None,
        min_length=1,
        description="A Python regular expression searched in the reply, case-insensitively, e.g. `\\?`.",
    )
    max_words: int | None = Field(default=None, gt=0, description="The reply has at most this many words, e.g. `40`.")
    no_repetition: bool = Field(
        default=False,
        description=f"`true`: no run of {REPETITION_NGRAM} words occurs more than "
        f"{REPETITION_MAX_COUNT} times in the reply.",
    )

    @field_validator("contains_any", "contains_all", "avoids")
    @classmethod
    def _no_blank_phrase(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(not phrase.strip() for phrase in v):
            raise ValueError("a phrase is empty (it would match every reply)")
        return v

    @field_validator("matches")
    @classmethod
    def _valid_regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return v

    @model_validator(mode="after")
    def _some_check(self) -> Expectation:
        checks = (self.contains_any, self.contains_all, self.avoids, self.matches, self.max_words, self.no_repetition)
        if not any(checks):
            raise ValueError(
                "no check given; use contains_any, contains_all, avoids, matches, max_words or no_repetition"
            )
        return self


class EvalCase(Example):
    """A held-out case: never trained on. ``rejected`` is the unwanted reply,
    for the preference margin log p(response) - log p(rejected); ``expect``
    checks what the model actually says (eval only: never part of a training hash)."""

    rejected: str | None = Field(default=None, min_length=1, description="An unwanted reply, for contrastive scoring.")
    expect: Expectation | None = Field(
        default=None, description="Checks on the greedy reply (a behaviour test), e.g. `{contains_any: [sorry]}`."
    )


# --------------------------------------------------------------------------- settings


OptimizerName = Literal["apollo", "apollo_mini", "adamw"]


class OptimizerSettings(Strict):
    """The optimizer and its knobs. ``apollo`` and ``apollo_mini`` are presets of
    APOLLO (Zhu et al. 2024, arXiv 2412.05270); ``adamw`` is the baseline."""

    name: OptimizerName = Field(default="apollo_mini", description="Registry name.")
    rank: int | None = Field(default=None, ge=1, description="Projection rank (APOLLO; default 256, Mini: 1).")
    scale_type: Literal["channel", "tensor"] | None = Field(
        default=None, description="Scaling granularity (APOLLO: channel, Mini: tensor)."
    )
    scale: float | None = Field(default=None, gt=0, description="Gradient scale factor α (APOLLO: 1, Mini: 128).")
    update_proj_gap: int = Field(default=200, ge=1, description="Steps between fresh random projections.")
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
    source: Literal["general", "other_nodes", "base_replies", "contrast"] = Field(
        default="general",
        description="`general`: the shipped replay corpus (disjoint from the retention text); `other_nodes`: examples of the other nodes with a positive weight; `base_replies`: the shipped replay prompts answered by the base model itself (greedy), so ordinary requests keep their ordinary answers; `contrast`: those prompts and the other nodes' one-message example contexts, all answered by the base, so the node also leaves the other behaviours' situations as the base answers them.",
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
        default=0.2,
        gt=0.0,
        le=0.5,
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
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Share of τ pulled back toward the start weights after every step (0: off).",
    )
    kl: float = Field(
        default=0.0,
        ge=0.0,
        description="Weight of KL(start ‖ model) on the replay rows' next-token distributions (0: off; needs replay).",
    )

    @model_validator(mode="after")
    def _one_pull(self) -> AnchorSettings:
        if self.l2 == 0 and self.kl == 0:
            raise ValueError("an anchor with `l2: 0` and `kl: 0` does nothing; set one of them or remove `anchor`")
        return self


#: Where a node's dream file lives by default, relative to the specs dir; ``{node}`` is the node id.
DREAM_FILE_DEFAULT = "data/{node}.dream.jsonl"


class DreamSettings(Strict):
    """``training.dream``: the node trains on a dream file too, written by ``traitgraph dream``
    (see docs/dream.md). The file's examples are a training input like an ``examples_file``;
    these settings only say how ``traitgraph dream`` writes it, so they are in no training hash."""

    file: str = Field(
        default=DREAM_FILE_DEFAULT,
        min_length=1,
        description="The dream file, relative to the specs dir, inside it; `{node}` is the node's id.",
    )
    n: int = Field(default=16, ge=1, le=10_000, description="Examples kept, the best scored first.")
    shots: int = Field(default=4, ge=1, le=64, description="Node examples shown to the teacher as earlier turns.")
    candidates: int = Field(
        default=48, ge=1, le=10_000, description="Contexts from the graph walk the teacher answers."
    )
    new_contexts: int = Field(
        default=16,
        ge=0,
        le=1000,
        description="New contexts the teacher writes on shipped everyday topics (0: none).",
    )
    rephrase: int = Field(
        default=8, ge=0, le=1000, description="Contexts the teacher rewrites in other words (0: none)."
    )
    max_new_tokens: int = Field(default=64, ge=1, le=4096, description="Longest reply, in tokens.")
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="Seed of every choice (topics, joined contexts).")
    generator: str | None = Field(
        default=None,
        min_length=1,
        description="The teacher, in the forms `base` takes (relative to the specs dir); null: the base.",
    )
    score: Literal["teacher", "vector"] = Field(
        default="teacher",
        description="`teacher`: how much the demonstrations wrote the reply; `vector`: how much the node's "
        "own task vector raises it over the base.",
    )

    @field_validator("file")
    @classmethod
    def _relative_file(cls, v: str) -> str:
        if v.startswith("/") or v.startswith("~"):
            raise ValueError("give a path relative to the specs dir, e.g. data/{node}.dream.jsonl")
        return v

    def record(self) -> dict:
        """How the file is written, as its header records it (every setting but ``file``).

        >>> sorted(DreamSettings().record())[:3]
        ['candidates', 'generator', 'max_new_tokens']
        """
        return self.model_dump(mode="json", exclude={"file"})


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
#: Training fields that never enter a hash or a record: ``dream`` says how a file is written,
#: and the file's examples are what trains (they are hashed with the node's examples).
UNHASHED_TRAINING_FIELDS = ("dream",)


class TrainingSettings(Strict):
    """How one node is trained. Personality-wide defaults; a node may override
    any field (see :class:`TrainingOverrides`)."""

    optimizer: OptimizerSettings = Field(default_factory=OptimizerSettings)
    learning_rate: float = Field(default=3e-5, gt=0, le=1.0, description="Peak learning rate.")
    steps: int = Field(default=8, gt=0, le=100_000, description="Optimizer steps.")
    batch_size: int = Field(default=8, gt=0, le=4096, description="Examples per step.")
    warmup_steps: int = Field(default=0, ge=0, description="Linear warm-up steps.")
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="Seed for data order and projections.")
    context: Literal["frozen", "full"] = Field(
        default="frozen",
        description="`frozen`: context runs without gradient through a KV cache; `full`: masked backprop.",
    )
    max_length: int = Field(default=512, gt=8, description="Longest tokenised example; a longer one is an error.")
    grad_clip: float | None = Field(default=1.0, gt=0, description="Max global grad norm; null: off.")
    divergence_factor: float = Field(
        default=4.0, gt=1.0, description="Stop when the smoothed loss exceeds this × its start."
    )
    replay: ReplaySettings = Field(default_factory=ReplaySettings)
    vector_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description=(
            "Task-vector dtype on disk. `auto`: bfloat16 for bases of 1B parameters or more, else float32 "
            "(exact); bfloat16 halves the size and rounds τ."
        ),
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        default="cpu",
        description="Where to train: `auto` takes cuda, then mps, then cpu on the machine planning the build.",
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
    dream: DreamSettings | None = Field(
        default=None,
        description="Train on a dream file too, written by `traitgraph dream` (docs/dream.md); null: off.",
    )

    @field_validator("trainable")
    @classmethod
    def _trainable_globs(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return _trainable_patterns(v)

    def record(self) -> dict:
        """The settings as JSON data, optional fields left out while unset and ``dream`` always
        (hashes and metadata use this).

        >>> "monitor" in TrainingSettings().record(), TrainingSettings().record()["steps"]
        (False, 8)
        >>> "dream" in TrainingSettings(dream=DreamSettings()).record()
        False
        """
        data = self.model_dump(mode="json", exclude=set(UNHASHED_TRAINING_FIELDS))
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


def _block_overrides(settings: type[Strict]) -> type[Strict]:
    """A block of ``training:`` as a node writes it: each field of ``settings`` optional, with
    its range checks; the block's cross-field checks (an anchor pulls somewhere) run on the
    block merged with the personality's (:meth:`TrainingOverrides.apply`)."""
    fields = {
        name: (
            (Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation) | None,
            Field(default=None, alias=info.alias, description=info.description),
        )
        for name, info in settings.model_fields.items()
    }
    name = settings.__name__.removesuffix("Settings") + "Overrides"
    return create_model(
        name, __base__=Strict, __doc__=f"Per-node {settings.__name__}; unset fields keep the personality's.", **fields
    )


ReplayOverrides = _block_overrides(ReplaySettings)
MonitorOverrides = _block_overrides(MonitorSettings)
AnchorOverrides = _block_overrides(AnchorSettings)
DreamOverrides = _block_overrides(DreamSettings)


class TrainingOverrides(Strict):
    """Per-node training overrides; unset fields keep the personality's value."""

    optimizer: OptimizerOverrides | None = None
    learning_rate: float | None = Field(default=None, gt=0, le=1.0)
    steps: int | None = Field(default=None, gt=0, le=100_000)
    batch_size: int | None = Field(default=None, gt=0, le=4096)
    warmup_steps: int | None = Field(default=None, ge=0)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    context: Literal["frozen", "full"] | None = None
    max_length: int | None = Field(default=None, gt=8)
    grad_clip: float | None = Field(default=None, gt=0)
    divergence_factor: float | None = Field(default=None, gt=1.0)
    replay: ReplayOverrides | None = None
    vector_dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = None
    device: Literal["auto", "cpu", "cuda", "mps"] | None = None
    monitor: MonitorOverrides | None = None
    trainable: tuple[str, ...] | None = None
    anchor: AnchorOverrides | None = None
    dream: DreamOverrides | None = None

    @field_validator("trainable")
    @classmethod
    def _trainable_globs(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return _trainable_patterns(v)

    def apply(self, defaults: TrainingSettings) -> TrainingSettings:
        """The effective settings: ``defaults`` with every field the node writes replaced.

        A block (``optimizer``, ``replay``, ``monitor``, ``anchor``, ``dream``) is merged
        field by field: ``replay: {source: general}`` keeps the personality's ``fraction``.
        ``null`` on a block turns it off for the node (``replay: null`` is no replay); a
        ``null`` field keeps the personality's value. A block's own checks run on the
        merged block: a pydantic ``ValidationError`` when it is invalid (the loader
        reports it against the node).

        >>> base = TrainingSettings(replay=ReplaySettings(fraction=0.5, source="base_replies"))
        >>> TrainingOverrides.model_validate({"replay": {"source": "general"}}).apply(base).replay.fraction
        0.5
        >>> TrainingOverrides.model_validate({"replay": None}).apply(base).replay.fraction
        0.0
        """
        merged = defaults.model_dump()
        for key, value in self.model_dump(exclude_unset=True).items():
            if key in TRAINING_BLOCKS:
                merged[key] = _merged_block(key, merged[key], value)
            elif value is not None:
                merged[key] = value
        return TrainingSettings.model_validate(merged)


#: Fields of ``training:`` that are blocks of their own: a node's override merges into them field by field.
TRAINING_BLOCKS = ("optimizer", "replay", "monitor", "anchor", "dream")


def _merged_block(key: str, defaults: dict | None, written: dict | None) -> dict | None:
    """A block of the personality's training settings with the fields a node writes laid over it."""
    if written is None:  # `anchor: null`: off for this node
        if key == "optimizer":  # cannot be off: the personality's
            return defaults
        return ReplaySettings().model_dump() if key == "replay" else None  # replay off is fraction 0
    return {**(defaults or {}), **{k: v for k, v in written.items() if v is not None}}


MergeMethodName = Literal[
    "ties",
    "task_arithmetic",
    "dare_ties",
    "dare_linear",
    "della",
    "breadcrumbs",
    "breadcrumbs_ties",
    "tsv_m",
    "iso_c",
    "iso_cts",
]


class ConsolidateSpec(Strict):
    """``merge.consolidate``: distil the linked checkpoint toward each node alone and the base."""

    steps: int = Field(
        default=0,
        ge=0,
        le=10000,
        description="Distillation steps after linking (0: off). Each takes one node's examples and general text.",
    )
    learning_rate: float = Field(default=1e-5, gt=0.0, le=1.0, description="AdamW learning rate of the distillation.")
    batch_size: int = Field(
        default=8, ge=1, le=4096, description="Rows of a node's examples per step, and of general text."
    )
    general_weight: float = Field(
        default=1.0, ge=0.0, le=MAX_SCALE, description="Weight of the KL to the base on general text."
    )
    general_lines: int = Field(
        default=64, ge=1, le=100000, description="Lines of the shipped replay corpus used as general text."
    )
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="Seed of the order examples are drawn in.")


class MergeSettings(Strict):
    """How task vectors are linked into one checkpoint (see README, "Linking").

    ``W = W_base + λ · merge({w_i · τ_i})``; a negative node weight subtracts
    that node's behaviour.
    """

    method: MergeMethodName = Field(default="ties", description="Registry name of the merge method.")
    density: float = Field(
        default=0.2, gt=0.0, le=1.0, description="Fraction of each τ kept by the trim (TIES, DARE, DELLA, Breadcrumbs)."
    )
    lambda_: float = Field(
        default=1.0, alias="lambda", gt=0.0, le=MAX_SCALE, description="Scale applied to the merged task vector."
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
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="Seed of DARE's and DELLA's drop masks.")
    epsilon: float = Field(
        default=0.15,
        gt=0.0,
        lt=0.5,
        description="DELLA: keep probabilities run from density − epsilon (smallest |τ| of a row) to density + epsilon.",
    )
    gamma: float = Field(
        default=0.01,
        ge=0.0,
        lt=1.0,
        description="Breadcrumbs: fraction of each τ's largest entries dropped (density is the fraction kept).",
    )
    rescale: bool = Field(
        default=True, description="DELLA: rescale each pruned τ to its original L1 norm (as mergekit)."
    )
    common_space_fraction: float = Field(
        default=0.8,
        ge=0.0,
        le=1.0,
        description="Iso-CTS: share of each matrix's rank given to the common subspace of the summed τ.",
    )
    rank: int | None = Field(
        default=None,
        ge=1,
        le=65536,
        description=(
            "Iso-C: keep only the top `rank` singular directions of each summed matrix before flattening "
            "(null: all, as the paper). A LoRA export of at least this rank is then exact."
        ),
    )

    @model_validator(mode="after")
    def _della_probabilities(self) -> MergeSettings:
        inside = 0.0 < self.density - self.epsilon and self.density + self.epsilon < 1.0
        if self.method == "della" and self.density < 1.0 and not inside:
            raise ValueError(
                f"della keeps entries with probability density ± epsilon, which must lie in (0, 1); "
                f"density {self.density}, epsilon {self.epsilon}: lower epsilon"
            )
        return self

    consolidate: ConsolidateSpec = Field(
        default_factory=ConsolidateSpec,
        description='Distillation after linking (README, "Consolidation"); off unless `steps` > 0.',
    )

    @model_validator(mode="after")
    def _rank_is_iso_c(self) -> MergeSettings:
        if self.rank is not None and self.method != "iso_c":
            raise ValueError(f"rank applies to method iso_c only, not {self.method}; remove it or use iso_c")
        return self

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Output dtype; `auto` keeps the base's."
    )
    max_shard_size: str = Field(
        default="2GB",
        pattern=r"^\d+(\.\d+)?\s*(B|KB|MB|GB|KiB|MiB|GiB)$",
        description="Largest safetensors shard before splitting, e.g. `500MB`.",
    )


class EvalSettings(Strict):
    """Evaluation and its gates (see README, "Evaluation")."""

    max_retention_loss_pct: float = Field(
        default=1.0,
        ge=0.0,
        description="Fail the build when general-text loss rises by more than this percent.",
    )
    max_general_prompts_lost: int = Field(
        default=0,
        ge=0,
        description="Fail the build when it loses more than this many general prompts the base answers.",
    )
    joint_reference: bool = Field(
        default=False,
        description="Also train one task vector on every positive node's examples together (the summed steps, "
        "cached like a node) and report each node's linked gain as a fraction of its gain under it.",
    )
    min_behaviour_gain: float = Field(
        default=0.0,
        description="Fail when a node's preference margin moves by less than this in its intended direction.",
    )
    max_new_tokens: int = Field(
        default=48, gt=0, description="Most new tokens per greedy reply: the report's samples and the behaviour tests."
    )
    general_text: str | None = Field(
        default=None, description="Path (relative to the specs dir) of a general text file; default: shipped set."
    )
    min_test_pass_rate: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Fail when the behaviour tests' pass rate, overall or of any node, is below this (0: off).",
    )
    node_test_pass_rate: dict[str, float] = Field(
        default_factory=dict,
        description="Per-node floors replacing `min_test_pass_rate` for those nodes, e.g. `{voice: 0.5}`.",
    )

    @field_validator("node_test_pass_rate")
    @classmethod
    def _rates_in_range(cls, v: dict[str, float]) -> dict[str, float]:
        bad = sorted(k for k, rate in v.items() if not 0.0 <= rate <= 1.0)
        if bad:
            raise ValueError(f"a pass rate is a fraction in [0, 1]; check {', '.join(bad)}")
        return v


class RaySettings(Strict):
    """Train each node as a Ray task (see docs/scaling.md); doit still schedules.
    Never part of a hash: where a vector was computed does not change it on the cpu."""

    address: str | None = Field(
        default=None,
        description="Cluster to join (`auto`, `HOST:PORT`, `ray://HOST:10001`); null starts a local Ray.",
    )
    num_cpus: float = Field(default=1, ge=0, description="CPUs each training task reserves.")
    num_gpus: float = Field(default=0, ge=0, description="GPUs each training task reserves.")
    memory: int | None = Field(default=None, gt=0, description="Bytes of memory each training task reserves.")
    max_retries: int = Field(default=3, ge=0, description="Retries of a task whose worker died.")
    transfer: Literal["object_store", "shared_cache"] = Field(
        default="object_store",
        description=(
            "`object_store`: the vector comes back to the driver, which writes the cache; `shared_cache`: "
            "workers write into the cache directory, which every node mounts at the same path."
        ),
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
    ray: RaySettings | None = Field(default=None, description="Train on a Ray cluster (off when absent).")


class Edge(Strict):
    """A typed edge from this node to another."""

    to: str = Field(description="The other node's id.")
    kind: EdgeKind = Field(description="One of: " + ", ".join(EDGE_KINDS) + ".")


class NodeSpec(Strict):
    """``specs/nodes/<id>.yaml``: one behaviour."""

    id: str = Field(pattern=NODE_ID_PATTERN, description="Equal to the file stem; a-z, 0-9, `-`, `_`.")
    description: str = Field(min_length=1, description="The behaviour, in one or two sentences.")
    weight: float = Field(default=1.0, description="Strength α at link time; negative subtracts the behaviour.")
    examples: tuple[Example, ...] = Field(default=(), description="Training examples.")
    examples_file: str | None = Field(
        default=None,
        description="A JSONL file of more examples, relative to this node file, inside the specs dir.",
    )
    eval: tuple[EvalCase, ...] = Field(default=(), description="Held-out eval cases (never trained on).")
    ood: tuple[EvalCase, ...] = Field(
        default=(),
        description="Out-of-distribution eval cases: topics and phrasings unlike the examples and `eval`.",
    )
    edges: tuple[Edge, ...] = Field(default=(), description="Edges to other nodes.")
    training: TrainingOverrides | None = Field(default=None, description="Per-node training overrides.")

    @field_validator("weight")
    @classmethod
    def _finite_nonzero(cls, v: float) -> float:
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError("weight must be a finite number")
        if v == 0:
            raise ValueError("weight 0 links nothing; delete the node or give it a weight")
        if abs(v) > MAX_SCALE:
            raise ValueError(f"weight must be between -{MAX_SCALE:g} and {MAX_SCALE:g}, got {v:g}")
        return v
