"""Task arithmetic (Ilharco et al., "Editing Models with Task Arithmetic", 2022, arXiv 2212.04089).

A task vector τ = W_finetuned − W_base is one direction of change. Task
vectors add, scale and negate::

    delta = λ · Σ_i w_i τ_i            W = W_base + delta

A negative weight w_i subtracts behaviour i (the paper's negation). The sum is
exact and order-free up to float rounding; nothing is trimmed or elected, so
two vectors that pull one weight in opposite directions cancel (see
:mod:`.ties` for the remedy).

``normalize`` is here only for mergekit compatibility (its ``task_arithmetic``
with ``normalize: true`` divides by Σ w_i); the linker always uses ``none``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

#: Divisors of a merge: by the count of contributing vectors, by the sum of their
#: |weights|, by the signed sum of their weights (mergekit's formula), or none.
Normalize = Literal["count", "weights", "signed_weights", "none"]
NORMALIZE_CHOICES: tuple[str, ...] = ("count", "weights", "signed_weights", "none")


class WeightedSum:
    """Σ_i w_i τ_i, one task vector (or one chunk of it) at a time.

    >>> acc = WeightedSum()
    >>> acc.add(torch.tensor([1.0, 2.0]), 0.5); acc.add(torch.tensor([1.0, -2.0]), -1.0)
    >>> acc.result()
    tensor([-0.5000,  3.0000])
    """

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None

    def add(self, tau: torch.Tensor, weight: float) -> None:
        contribution = tau * weight
        self.total = contribution if self.total is None else self.total.add_(contribution)

    def result(self, like: torch.Tensor | None = None) -> torch.Tensor:
        if self.total is None:
            if like is None:
                raise ValueError("nothing was added")
            return torch.zeros_like(like, dtype=torch.float32)
        return self.total


def linear_divisor(weights: Sequence[float], normalize: Normalize) -> float:
    """The one divisor of a linear merge, taken over *all* inputs (as mergekit does).

    ``count``: n; ``weights``: Σ|w_i|; ``signed_weights``: Σ w_i (mergekit; a sum
    within 1e-8 of zero counts as 1); ``none``: 1.
    """
    if normalize == "none":
        return 1.0
    if normalize == "count":
        return float(max(len(weights), 1))
    if normalize == "weights":
        total = sum(abs(w) for w in weights)
        return total if total > 0 else 1.0
    if normalize == "signed_weights":
        total = float(torch.tensor(list(weights), dtype=torch.float32).sum())
        return total if abs(total) >= 1e-8 else 1.0
    raise ValueError(f"unknown normalize {normalize!r}; one of {', '.join(NORMALIZE_CHOICES)}")


def task_arithmetic(
    task_tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    lambda_: float = 1.0,
    normalize: Normalize = "none",
) -> torch.Tensor:
    """The merged delta λ · Σ w_i τ_i (float32), so that W = W_base + delta.

    >>> tau = torch.tensor([1.0, -2.0])
    >>> task_arithmetic([tau, tau], [1.0, -1.0])          # a vector and its negation cancel
    tensor([0., 0.])
    """
    if len(task_tensors) != len(weights):
        raise ValueError(f"{len(task_tensors)} task tensors but {len(weights)} weights")
    acc = WeightedSum()
    for tau, w in zip(task_tensors, weights):
        acc.add(tau.to(torch.float32), float(w))
    delta = acc.result()
    divisor = linear_divisor(weights, normalize)
    if divisor != 1.0:
        delta = delta / divisor
    if lambda_ != 1.0:
        delta = delta * lambda_
    return delta
