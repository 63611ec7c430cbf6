"""One node resolved into everything its training needs: a :class:`TrainingTarget`.

The graph knows the whole personality; the compiler sees one frozen value::

    spec + node id + base fingerprint ──resolve_target──> TrainingTarget
        node id, node file, located examples, effective settings, training hash,
        parents (id, hash) in ``refines`` order, replay pool, sign of the weight

so training never calls back into spec loading or hashing, and the value the
builder caches on (``training_hash``) is the value the compiler trains. This
module imports only the schema at load time: the compiler may import it.

>>> spec = load_specs("specs")                                        # doctest: +SKIP
>>> target = resolve_target(spec, "listening", base.fingerprint)      # doctest: +SKIP
>>> target.settings.steps, len(target.examples), target.parents       # doctest: +SKIP
(8, 20, ())
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from traitgraph.errors import UserError
from traitgraph.graph.replay import (
    LocatedExample,
    ReplayPool,
    general_probe,
    located_examples,
    replay_pool,
)
from traitgraph.graph.schema import TrainingSettings

if TYPE_CHECKING:
    from traitgraph.graph.load import Spec


def _split_key(seed: int, located: LocatedExample) -> str:
    data = json.dumps([seed, located.example.model_dump(mode="json", exclude_none=True)], sort_keys=True)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def validation_split(
    examples: tuple[LocatedExample, ...], fraction: float, seed: int
) -> tuple[tuple[LocatedExample, ...], tuple[LocatedExample, ...]]:
    """``(train, validation)``: the ``max(1, round(fraction · n))`` examples with the
    smallest ``sha256([seed, example])`` are held out; both keep the file order.

    The rule depends only on the seed and each example's content, so adding an
    example moves at most that example between the halves of an unchanged seed.

    >>> train, val = validation_split(located, 0.2, seed=0)   # doctest: +SKIP
    >>> len(train), len(val)                                  # doctest: +SKIP
    (16, 4)
    """
    n_val = max(1, round(fraction * len(examples)))
    ranked = sorted(range(len(examples)), key=lambda i: (_split_key(seed, examples[i]), i))
    held = set(ranked[:n_val])
    train = tuple(ex for i, ex in enumerate(examples) if i not in held)
    return train, tuple(ex for i, ex in enumerate(examples) if i in held)


@dataclass(frozen=True)
class TrainingTarget:
    """A node ready to train (see module doc). Equal inputs give equal targets."""

    node_id: str
    node_file: Path
    """The node's spec file, for error messages."""
    examples: tuple[LocatedExample, ...]
    """Inline examples, then those of ``examples_file``."""
    settings: TrainingSettings
    """Effective settings: personality defaults merged with the node's overrides."""
    training_hash: str
    parents: tuple[tuple[str, str], ...] = ()
    """``(node id, training hash)`` of each node it ``refines``, in order; the
    caller passes their task vectors in the same order."""
    replay: ReplayPool = field(default_factory=ReplayPool)
    weight_sign: int = 1
    """+1 or -1: whether linking adds or subtracts this node's vector."""
    validation: tuple[LocatedExample, ...] = ()
    """Examples held out for the monitor (never trained on); empty when it is off."""
    probe_text: tuple[str, ...] = ()
    """The monitor's general-text probe (replay corpus lines, not the retention set)."""

    @property
    def parent_ids(self) -> list[str]:
        return [p for p, _ in self.parents]


def resolve_target(
    spec: Spec, node_id: str, base_fingerprint: str, hashes: dict[str, str] | None = None
) -> TrainingTarget:
    """The :class:`TrainingTarget` of ``node_id``; ``hashes`` (from
    :func:`~traitgraph.graph.hashing.node_hashes`) saves recomputing them."""
    if hashes is None:
        # Imported here, so that the compiler importing this module stays light.
        from traitgraph.graph.hashing import node_hashes

        hashes = node_hashes(spec, base_fingerprint)
    node = spec.nodes[node_id]
    settings = spec.training_settings(node_id)
    if settings.anchor is not None and settings.anchor.kl > 0 and settings.replay.fraction <= 0:
        raise UserError(
            f"{node.file}: node '{node_id}', field training.anchor.kl: the KL anchor is taken on replay rows, "
            "and replay is off; set `replay: {fraction: 0.25}` (or similar) or use `anchor: {l2: ...}`"
        )
    examples, validation = located_examples(node), ()
    if settings.monitor is not None:
        if len(examples) < 2:
            raise UserError(
                f"{node.file}: node '{node_id}', field training.monitor: the monitor holds out validation "
                f"examples, so the node needs at least 2 examples (it has {len(examples)}); add examples "
                "or remove `monitor`"
            )
        examples, validation = validation_split(examples, settings.monitor.validation_fraction, settings.seed)
    return TrainingTarget(
        node_id=node_id,
        node_file=Path(node.file),
        examples=examples,
        settings=settings,
        training_hash=hashes[node_id],
        parents=tuple((dep, hashes[dep]) for dep in spec.dependencies(node_id)),
        replay=replay_pool(spec, node_id, settings),
        weight_sign=1 if node.spec.weight > 0 else -1,
        validation=validation,
        probe_text=general_probe(settings),
    )
