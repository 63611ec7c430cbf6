"""The training monitor: score held-out data every few steps, keep the best step's weights.

With ``training.monitor`` set, training is checked every ``every`` steps (and
at its last step) on two held-out sets::

    validation  the node's examples held out by the graph's seeded split
    general     the general-text probe: replay-corpus lines, never the retention set

**The criterion.** A check is *within the ceiling* when its general loss is at
most ``(1 + max_general_rise_pct/100) ×`` the general loss before training.
The kept check is the one with the lowest validation loss among those within
the ceiling; if no check is, the one with the lowest general loss. In one key:
``(0, validation)`` within the ceiling, ``(1, general)`` outside it; smallest
wins. Training stops early after ``patience`` checks in a row without a new
kept check, and τ is taken from the kept check's weights.

The trajectory itself is unchanged by monitoring: scoring runs without
gradient and draws no random numbers.

>>> m = Monitor(settings, validation, probe, pad)             # doctest: +SKIP
>>> m.begin(model); stop = m.check(model, step=4, named=named)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from traitgraph.compiler.data import EncodedExample, batches_in_order
from traitgraph.compiler.losses import response_token_losses
from traitgraph.graph.schema import MonitorSettings

CRITERION = (
    "lowest validation loss among checks whose general-text loss rose at most max_general_rise_pct "
    "over the start; if none did, lowest general-text loss"
)


@torch.no_grad()
def mean_response_loss(model, encoded: Sequence[EncodedExample], pad: int, batch_size: int = 8) -> float:
    """Mean per-token loss of the response tokens of ``encoded`` (in eval mode, no gradient)."""
    rows = sorted(encoded, key=len)  # similar lengths together: less padding, same result
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for batch in batches_in_order(rows, batch_size, pad):
            total += float(response_token_losses(model, batch).sum())
            count += batch.n_tokens
    finally:
        model.train(was_training)
    return total / count


@dataclass(frozen=True)
class Check:
    """One monitor check: the step, the two losses, and whether it is within the ceiling."""

    step: int
    validation: float
    general: float
    within_ceiling: bool

    def rank(self) -> tuple[int, float]:
        """Smaller is better (see module doc)."""
        return (0, self.validation) if self.within_ceiling else (1, self.general)


@dataclass
class Monitor:
    """Scores, keeps the best step's weights, and says when to stop (see module doc)."""

    settings: MonitorSettings
    validation: list[EncodedExample]
    probe: list[EncodedExample]
    pad: int
    start: tuple[float, float] | None = None
    checks: list[Check] = field(default_factory=list)
    best: Check | None = None
    stopped_early: bool = False
    _kept: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _since_best: int = 0

    def due(self, step: int, last_step: int) -> bool:
        return step % self.settings.every == 0 or step == last_step

    def _score(self, model) -> tuple[float, float]:
        return mean_response_loss(model, self.validation, self.pad), mean_response_loss(model, self.probe, self.pad)

    def begin(self, model) -> None:
        """Score the starting weights (the reference for the ceiling)."""
        self.start = self._score(model)

    def check(self, model, step: int, named: list[tuple[str, torch.nn.Parameter]]) -> bool:
        """Score step ``step``; keep its weights if it is the best so far. True: stop now."""
        validation, general = self._score(model)
        ceiling = self.start[1] * (1 + self.settings.max_general_rise_pct / 100)
        check = Check(step, validation, general, general <= ceiling)
        self.checks.append(check)
        if self.best is None or check.rank() < self.best.rank():
            self.best, self._since_best = check, 0
            self._kept = {name: p.detach().clone() for name, p in named}
            return False
        self._since_best += 1
        self.stopped_early = self._since_best >= self.settings.patience
        return self.stopped_early

    def restore(self, named: list[tuple[str, torch.nn.Parameter]]) -> None:
        """Put the kept check's weights back into the model (before τ is taken)."""
        with torch.no_grad():
            for name, p in named:
                p.copy_(self._kept[name])
        self._kept = {}

    def record(self) -> dict:
        """The curves and the choice, for the task vector's metadata and the report."""
        return {
            "every": self.settings.every,
            "criterion": CRITERION,
            "start": {"validation": self.start[0], "general": self.start[1]},
            "checks": [asdict(c) for c in self.checks],
            "best_step": self.best.step if self.best else None,
            "stopped_early": self.stopped_early,
            "validation_examples": len(self.validation),
            "probe_lines": len(self.probe),
        }
