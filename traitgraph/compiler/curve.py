"""The training loss curve, raw and smoothed (an exponential moving average).

The smoothed value is updated once per step (never recomputed over the whole
curve), and drives the divergence guard and the reported final loss.

>>> c = LossCurve(); c.add(2.0); c.add(1.0)
>>> [round(x, 2) for x in c.smoothed]
[2.0, 1.7]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

#: Weight of the newest loss in the smoothed loss.
SMOOTHING = 0.3


@dataclass
class LossCurve:
    """Raw per-step losses and their running smoothed values."""

    raw: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        """Append one step's loss and its smoothed value."""
        self.raw.append(value)
        prev = self.smoothed[-1] if self.smoothed else None
        self.smoothed.append(value if prev is None else (1 - SMOOTHING) * prev + SMOOTHING * value)

    def __len__(self) -> int:
        return len(self.raw)


def smoothed(curve: Sequence[float]) -> list[float]:
    """The smoothed values of a whole curve (what :class:`LossCurve` builds step by step)."""
    c = LossCurve()
    for x in curve:
        c.add(x)
    return c.smoothed


def oscillation(curve: Sequence[float]) -> float:
    """max/min of the smoothed loss over the last third of training (1.0 = flat).

    >>> oscillation([2.0, 2.0, 2.0])
    1.0
    """
    smooth = smoothed(curve)
    tail = smooth[len(smooth) - max(1, len(smooth) // 3) :]
    lo = min(tail)
    return float(max(tail) / lo) if lo > 0 else float("inf")
