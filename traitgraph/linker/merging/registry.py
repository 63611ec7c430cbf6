"""Merge methods by the name the spec uses (``merge.method``), and their streaming form.

Every method is one sparsification step applied to each task vector and one
way of combining the results, as in mergekit's "generalized task arithmetic":

===================  ================  ==========================  ======================
name                 sparsify          combine                     paper
===================  ================  ==========================  ======================
``task_arithmetic``  none              λ · Σ w_i τ_i               Ilharco et al. 2022
``ties``             top-k magnitude   elect sign, disjoint mean   Yadav et al. 2023
``dare_ties``        random drop       elect sign, disjoint mean   Yu et al. 2023
``dare_linear``      random drop       λ · Σ w_i τ̃_i               Yu et al. 2023
===================  ================  ==========================  ======================

:class:`TensorMerge` computes any of them over one tensor in row chunks,
reading one chunk of every task vector at a time, so the linker's memory is
bounded by a chunk per vector (plus one whole vector while TIES fits its
trim threshold) instead of the whole tensor per vector. Its result equals the
pure functions (:func:`~.ties.ties`, ...) on the whole tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from traitgraph.errors import UserError
from traitgraph.linker.merging.dare import dare_linear, dare_ties, drop_and_rescale
from traitgraph.linker.merging.task_arithmetic import (
    NORMALIZE_CHOICES,
    Normalize,
    WeightedSum,
    linear_divisor,
    task_arithmetic,
)
from traitgraph.linker.merging.ties import SIGN_VOTE_CHOICES, DisjointMerge, MagnitudeTrim, SignVote, ties

if TYPE_CHECKING:
    from traitgraph.graph.schema import MergeSettings


@dataclass(frozen=True)
class MergeMethod:
    """One registered method: how it sparsifies, whether it elects signs, its paper."""

    name: str
    sparsify: Literal["none", "magnitude", "random"]
    consensus: bool
    paper: str
    function: Callable[..., torch.Tensor]


METHODS: dict[str, MergeMethod] = {
    m.name: m
    for m in (
        MergeMethod("task_arithmetic", "none", False, "Ilharco et al. 2022, arXiv 2212.04089", task_arithmetic),
        MergeMethod("ties", "magnitude", True, "Yadav et al. 2023, arXiv 2306.01708", ties),
        MergeMethod("dare_ties", "random", True, "Yu et al. 2023, arXiv 2311.03099", dare_ties),
        MergeMethod("dare_linear", "random", False, "Yu et al. 2023, arXiv 2311.03099", dare_linear),
    )
}


def get_method(name: str) -> MergeMethod:
    """The method registered under ``name``; a :class:`UserError` listing the known ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"unknown merge method {name!r}; known: {', '.join(METHODS)}") from None


@dataclass(frozen=True)
class MergeOptions:
    """Everything a merge computes with, per tensor. :class:`MergeSettings` maps onto it
    (:meth:`from_settings`); ``traitgraph merge`` builds it from a mergekit YAML and may
    use mergekit's ``signed_weights`` divisor, which the spec language does not offer."""

    method: str = "ties"
    density: float = 0.2
    lambda_: float = 1.0
    sign_vote: SignVote = "weighted"
    normalize: Normalize = "count"
    seed: int = 0

    def __post_init__(self) -> None:
        get_method(self.method)
        if not 0.0 < self.density <= 1.0:
            raise UserError(f"density must be in (0, 1], got {self.density}")
        if self.sign_vote not in SIGN_VOTE_CHOICES:
            raise UserError(f"sign_vote must be one of {', '.join(SIGN_VOTE_CHOICES)}, got {self.sign_vote!r}")
        if self.normalize not in NORMALIZE_CHOICES:
            raise UserError(f"normalize must be one of {', '.join(NORMALIZE_CHOICES)}, got {self.normalize!r}")

    @classmethod
    def from_settings(cls, settings: MergeSettings) -> MergeOptions:
        """The spec's merge settings. ``sign_vote`` and ``normalize`` belong to the sign
        election, so the linear methods (task_arithmetic, dare_linear) add without a divisor,
        W = W_base + λ Σ w_i τ_i, whatever ``normalize`` says."""
        linear = not get_method(settings.method).consensus
        return cls(
            method=settings.method,
            density=settings.density,
            lambda_=settings.lambda_,
            sign_vote=settings.sign_vote,
            normalize="none" if linear else settings.normalize,
            seed=settings.seed,
        )


class TensorMerge:
    """One tensor's merge, computed chunk by chunk in flat (row-major) order.

    >>> m = TensorMerge(MergeOptions("ties", density=0.5), weights=[1.0], numel=4)
    >>> m.fit(0, torch.tensor([3.0, 1.0, 2.0, 1.0]))            # TIES only: |τ_0|, whole
    >>> m.merge_chunk([torch.tensor([3.0, -1.0])], start=0)       # then the chunks in order
    tensor([3., 0.])
    >>> m.merge_chunk([torch.tensor([2.0, -1.0])], start=2)
    tensor([2., 0.])

    ``weights``, ``densities`` and ``seeds`` have one entry per input; an input
    that lacks this tensor passes ``None`` chunks (a zero task vector).
    """

    def __init__(
        self,
        options: MergeOptions,
        weights: Sequence[float],
        numel: int,
        densities: Sequence[float] | None = None,
        seeds: Sequence[int] | None = None,
    ) -> None:
        self.options = options
        self.method = get_method(options.method)
        self.weights = [float(w) for w in weights]
        self.numel = numel
        n = len(self.weights)
        self.densities = [options.density] * n if densities is None else [float(d) for d in densities]
        self.seeds = [0] * n if seeds is None else [int(s) for s in seeds]
        self._trims: list[MagnitudeTrim | None] = [None] * n
        self._divisor = linear_divisor(self.weights, options.normalize) if not self.method.consensus else 1.0

    @property
    def needs_magnitudes(self) -> bool:
        """Whether :meth:`fit` must see each whole |τ_i| before the first chunk (TIES's trim)."""
        return self.method.sparsify == "magnitude"

    def fit(self, index: int, magnitudes: torch.Tensor) -> None:
        """Fit input ``index``'s trim threshold on its whole |τ| (any shape, float32)."""
        self._trims[index] = MagnitudeTrim.fit(magnitudes, self.densities[index])

    def _sparsify(self, index: int, chunk: torch.Tensor, start: int) -> torch.Tensor:
        kind = self.method.sparsify
        if kind == "magnitude":
            trim = self._trims[index]
            if trim is None:
                raise RuntimeError(f"input {index}: fit() was not called before the first chunk")
            return trim.apply(chunk)
        if kind == "random":
            return drop_and_rescale(chunk, self.densities[index], self.seeds[index], start, self.numel)
        return chunk

    def merge_chunk(self, chunks: Iterable[torch.Tensor | None], start: int) -> torch.Tensor:
        """The merged delta (float32, λ applied) of flat entries ``[start, start + chunk size)``.

        ``chunks`` (one per input, in order) may be a generator: each is used and
        dropped before the next is asked for, so only one input's chunk is alive.
        """
        combine = DisjointMerge(self.options.sign_vote, self.options.normalize) if self.method.consensus else WeightedSum()
        count, seen = 0, False
        for index, chunk in enumerate(chunks):
            count += 1
            if chunk is None:
                continue
            seen = True
            combine.add(self._sparsify(index, chunk.to(torch.float32), start), self.weights[index])
            del chunk
        if count != len(self.weights):
            raise ValueError(f"{count} chunks for {len(self.weights)} inputs")
        if not seen:
            raise ValueError("every chunk is None: copy the base instead of merging")
        delta = combine.result()
        if self._divisor != 1.0:
            delta = delta / self._divisor
        if self.options.lambda_ != 1.0:
            delta = delta * self.options.lambda_
        return delta
