"""TIES-Merging (Yadav et al., "TIES-Merging: Resolving Interference When Merging
Models", NeurIPS 2023, arXiv 2306.01708).

Three steps per tensor, on task vectors τ_1..τ_n with weights w_1..w_n:

1. **Trim**: keep the k = max(1, ⌊density · numel⌋) entries of largest |τ_i|
   in each tensor, zero the rest (:class:`MagnitudeTrim`). We trim *per tensor*
   (as mergekit and PEFT do); the original repository trims over the whole
   flattened model. Ties at the threshold are broken by position (the first
   entries in flat order are kept), so exactly k entries survive; mergekit
   breaks them with an unstable sort, so the two can keep different entries
   among equal magnitudes (common when τ is a difference of two stored models).
2. **Elect** a sign per entry: γ = sign(Σ_i v_i), with γ = +1 where the sum is
   0. The votes v_i are the trimmed vectors either weighted or not:

   ==============  ===============  ========================================
   sign_vote       v_i              used by
   ==============  ===============  ========================================
   ``weighted``    w_i · trim(τ_i)  mergekit; the direction i pushes the model
   ``unweighted``  trim(τ_i)        PEFT (``peft.utils.merge_utils.ties``)
   ==============  ===============  ========================================

3. **Disjoint mean** over the agreeing vectors A = {i : sign(v_i) = γ}::

       delta = λ · Σ_{i∈A} w_i · trim(τ_i) / D

   ==================  ====================  =================================
   normalize           D                     used by
   ==================  ====================  =================================
   ``count``           |A|                   PEFT; the paper's disjoint mean
   ``weights``         Σ_{i∈A} |w_i|         mergekit, when every w_i > 0
   ``signed_weights``  Σ_{i∈A} w_i           mergekit's literal formula
   ``none``            1                     mergekit with ``normalize: false``
   ==================  ====================  =================================

   D = 0 (no agreeing vector, or signed weights that cancel) counts as 1.

traitgraph's default is ``weighted`` + ``count``: one node of weight −w gives
delta = −w · trim(τ) (its behaviour pushed below the base), and a node's weight
keeps its meaning as an absolute strength. mergekit's ``signed_weights``
divides −w · τ by −w and *adds* the behaviour instead; ``weights`` keeps the
sign but discards the strength of a lone vector (delta = −trim(τ) for any w).
The unweighted vote lets a negatively weighted vector vote for the opposite of
what it contributes.

Everything here is a pure function of tensors. :class:`MagnitudeTrim` and
:class:`DisjointMerge` also work chunk by chunk, which is how the streaming
linker uses them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from traitgraph.linker.merging.task_arithmetic import NORMALIZE_CHOICES, Normalize

SignVote = Literal["weighted", "unweighted"]
SIGN_VOTE_CHOICES: tuple[str, ...] = ("weighted", "unweighted")


def keep_count(numel: int, density: float) -> int:
    """How many entries the trim keeps: max(1, ⌊density · numel⌋), all at density ≥ 1 (as mergekit)."""
    if density >= 1.0 or numel == 0:
        return numel
    return min(numel, max(1, int(density * numel)))


@dataclass
class MagnitudeTrim:
    """Top-k by magnitude of one tensor, applied to its chunks in flat order.

    ``fit`` finds the k-th largest magnitude (the threshold) and how many of
    the entries equal to it still fit into k; ``apply`` keeps every entry above
    the threshold and the first ``ties_left`` entries equal to it, so chunks
    must be passed exactly once, in order. Memory: one copy of |τ| while
    fitting (``torch.kthvalue``, O(n), instead of a full sort).

    >>> trim = MagnitudeTrim.fit(torch.tensor([3.0, -1.0, 2.0, -1.0]).abs(), density=0.5)
    >>> trim.apply(torch.tensor([3.0, -1.0, 2.0, -1.0]))
    tensor([3., 0., 2., 0.])
    """

    threshold: float
    ties_left: int
    keep_all: bool = False

    @classmethod
    def fit(cls, magnitudes: torch.Tensor, density: float) -> MagnitudeTrim:
        flat = magnitudes.reshape(-1)
        numel = flat.numel()
        k = keep_count(numel, density)
        if k >= numel:
            return cls(threshold=0.0, ties_left=0, keep_all=True)
        threshold, above = _kth_largest(flat, k)
        return cls(threshold=threshold, ties_left=k - above)

    def apply(self, chunk: torch.Tensor) -> torch.Tensor:
        """``chunk`` (the next entries in flat order) with the trimmed entries zeroed."""
        if self.keep_all:
            return chunk
        magnitude = chunk.abs()
        keep = magnitude > self.threshold
        if self.ties_left > 0:
            tie = (magnitude == self.threshold).reshape(-1)
            positions = tie.nonzero().reshape(-1)[: self.ties_left]
            self.ties_left -= positions.numel()
            keep.reshape(-1)[positions] = True
        return torch.where(keep, chunk, torch.zeros((), dtype=chunk.dtype))


#: Tensors at least this large find their threshold through a sampled bracket (exact, ~3× faster).
_BRACKET_MIN = 1 << 16


def _kth_largest(flat: torch.Tensor, k: int) -> tuple[float, int]:
    """(the k-th largest value of ``flat``, how many values are strictly larger). Exact.

    Large tensors: a strided sample of n/16 values (at most 2^20) brackets the answer,
    [lo, hi], with a margin of 8 standard errors of the sample quantile; one pass counts
    the values above ``hi`` and collects those inside the bracket (1-3% of them), and
    ``kthvalue`` runs on that small set. Falls back to ``kthvalue`` on everything
    when the answer is outside the bracket (never seen, but cheap to allow).
    """
    n = flat.numel()
    if n >= _BRACKET_MIN:
        sample = flat[:: max(16, n // (1 << 20))]
        s, q = sample.numel(), 1.0 - k / n
        margin = int(8 * math.sqrt(s * q * (1 - q))) + 16
        lo = float(torch.kthvalue(sample, max(1, int(q * s) - margin)).values)
        hi = float(torch.kthvalue(sample, min(s, int(q * s) + margin)).values)
        above_hi, parts = 0, []
        for block in flat.split(1 << 20):  # in blocks: the masks stay small
            above_hi += int((block > hi).sum())
            parts.append(block[(block >= lo) & (block <= hi)])
        inside = torch.cat(parts)
        rank = k - above_hi  # the answer's rank from the top among `inside`
        if 0 < rank <= inside.numel():
            value = torch.kthvalue(inside, inside.numel() - rank + 1).values
            return float(value), above_hi + int((inside > value).sum())
    value = torch.kthvalue(flat, n - k + 1).values
    return float(value), int((flat > value).sum())


def trim(tau: torch.Tensor, density: float) -> torch.Tensor:
    """τ with all but its k largest-magnitude entries zeroed (TIES step 1).

    >>> trim(torch.tensor([0.1, -5.0, 0.3, 2.0]), density=0.5)
    tensor([ 0., -5.,  0.,  2.])
    """
    return MagnitudeTrim.fit(tau.abs(), density).apply(tau)


class DisjointMerge:
    """TIES's sign election and disjoint mean, one (trimmed) task vector at a time.

    Keeps five running sums per entry instead of the stacked vectors, so
    memory does not grow with the number of vectors: the vote Σ v_i, and for
    each sign s ∈ {+, −} the contributions Σ w_i τ_i and divisors Σ d_i of the
    vectors whose vote has sign s. The elected sign then picks one side.
    """

    def __init__(self, sign_vote: SignVote = "weighted", normalize: Normalize = "count") -> None:
        if sign_vote not in SIGN_VOTE_CHOICES:
            raise ValueError(f"unknown sign_vote {sign_vote!r}; one of {', '.join(SIGN_VOTE_CHOICES)}")
        if normalize not in NORMALIZE_CHOICES:
            raise ValueError(f"unknown normalize {normalize!r}; one of {', '.join(NORMALIZE_CHOICES)}")
        self.sign_vote = sign_vote
        self.normalize = normalize
        self._sums: dict[str, torch.Tensor] | None = None

    def add(self, tau: torch.Tensor, weight: float) -> None:
        """Add one trimmed (or dropped) task vector τ_i with weight w_i."""
        weighted = tau * weight
        if self.sign_vote == "weighted":
            vote, flip = weighted, False
        else:  # the vote is τ_i itself: its sign agrees with w_i·τ_i's unless w_i < 0
            vote, flip = tau, weight < 0
        # w_i·τ_i on the side of its vote's sign (clamps: cheaper than where + compare)
        upper, lower = weighted.clamp(min=0), weighted.clamp(max=0)
        parts = {
            "vote": vote.clone() if vote is tau else vote,
            "pos": lower if flip else upper,
            "neg": upper if flip else lower,
        }
        if self.normalize != "none":
            d = {"count": 1.0, "weights": abs(weight), "signed_weights": weight}[self.normalize]
            parts["pos_div"] = (vote > 0).to(weighted.dtype)
            parts["neg_div"] = (vote < 0).to(weighted.dtype)
            if d != 1.0:
                parts["pos_div"].mul_(d)
                parts["neg_div"].mul_(d)
        if self._sums is None:
            self._sums = parts
        else:
            for key, value in parts.items():
                self._sums[key].add_(value)

    def result(self) -> torch.Tensor:
        """The disjoint mean (before λ); zeros where no vector agrees."""
        if self._sums is None:
            raise ValueError("nothing was added")
        s = self._sums
        elected_positive = s["vote"] >= 0  # γ = +1 where the vote sums to zero (mergekit, PEFT)
        merged = torch.where(elected_positive, s["pos"], s["neg"])
        if self.normalize != "none":
            divisor = torch.where(elected_positive, s["pos_div"], s["neg_div"])
            merged = merged.div_(divisor.masked_fill_(divisor == 0, 1.0))
        return merged


def _per_input(value: float | Sequence[float], n: int, what: str) -> list[float]:
    if isinstance(value, (int, float)):
        return [float(value)] * n
    values = [float(v) for v in value]
    if len(values) != n:
        raise ValueError(f"{n} task tensors but {len(values)} {what}")
    return values


def ties(
    task_tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    density: float | Sequence[float],
    lambda_: float = 1.0,
    sign_vote: SignVote = "weighted",
    normalize: Normalize = "count",
) -> torch.Tensor:
    """The TIES-merged delta (float32), so that W = W_base + delta.

    ``density`` is one fraction or one per task tensor (mergekit's per-model
    density). See the module docstring for the exact formula of each option.

    >>> a, b = torch.tensor([2.0, 1.0, -1.0]), torch.tensor([-1.0, 3.0, -3.0])
    >>> ties([a, b], [1.0, 1.0], density=1.0)        # elect +, +, −; mean of the agreeing
    tensor([ 2.,  2., -2.])
    """
    densities = _per_input(density, len(task_tensors), "densities")
    trimmed = (trim(tau.to(torch.float32), d) for tau, d in zip(task_tensors, densities))
    return elect_and_merge(trimmed, weights, lambda_, sign_vote, normalize)


def elect_and_merge(
    sparse_tensors: Iterable[torch.Tensor],
    weights: Sequence[float],
    lambda_: float = 1.0,
    sign_vote: SignVote = "weighted",
    normalize: Normalize = "count",
) -> torch.Tensor:
    """Steps 2 and 3 (sign election, disjoint mean, λ) on already sparsified tensors; used by
    :func:`ties` (after the trim) and by DARE-TIES (after the random drop)."""
    merge = DisjointMerge(sign_vote, normalize)
    for tau, w in zip(sparse_tensors, weights, strict=True):  # one weight per tensor
        merge.add(tau, float(w))
    delta = merge.result()
    return delta * lambda_ if lambda_ != 1.0 else delta
