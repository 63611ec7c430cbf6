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
``della``            rank-weighted     elect sign, disjoint mean   Deep et al. 2024
                     random drop
``breadcrumbs``      drop largest and  λ · Σ w_i τ̃_i               Davari & Belilovsky 2023
                     smallest
``breadcrumbs_ties`` as breadcrumbs    elect sign, disjoint mean   Davari & Belilovsky 2023
``tsv_m``            top ⌊k/n⌋ singu-  whitened sum of the low-    Gargiulo et al. 2025
                     lar triplets      rank task matrices
``iso_c``            none              flat spectrum of Σ w_i τ_i  Marczak et al. 2025
``iso_cts``          common + per-     flat spectrum               Marczak et al. 2025
                     task subspaces
===================  ================  ==========================  ======================

The last five need each input's whole tensor (a row rank, a sort, or an SVD):
:func:`merge_whole` runs them on one tensor at a time, all inputs' copies of
that tensor in memory together (n × the largest tensor), never the whole model.

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
from traitgraph.linker.merging.breadcrumbs import breadcrumbs, breadcrumbs_ties
from traitgraph.linker.merging.dare import dare_linear, dare_ties, drop_and_rescale
from traitgraph.linker.merging.della import della
from traitgraph.linker.merging.iso import iso_c, iso_cts
from traitgraph.linker.merging.task_arithmetic import (
    NORMALIZE_CHOICES,
    Normalize,
    WeightedSum,
    linear_divisor,
    task_arithmetic,
)
from traitgraph.linker.merging.ties import SIGN_VOTE_CHOICES, DisjointMerge, MagnitudeTrim, SignVote, ties
from traitgraph.linker.merging.tsv import tsv_m

if TYPE_CHECKING:
    from traitgraph.graph.schema import MergeSettings


@dataclass(frozen=True)
class MergeMethod:
    """One registered method: how it sparsifies, whether it elects signs, its paper, and
    whether it needs each input's whole tensor at once (``whole``: see :func:`merge_whole`)."""

    name: str
    sparsify: Literal["none", "magnitude", "random", "outliers", "magprune", "spectral"]
    consensus: bool
    paper: str
    function: Callable[..., torch.Tensor]
    whole: bool = False


METHODS: dict[str, MergeMethod] = {
    m.name: m
    for m in (
        MergeMethod("task_arithmetic", "none", False, "Ilharco et al. 2022, arXiv 2212.04089", task_arithmetic),
        MergeMethod("ties", "magnitude", True, "Yadav et al. 2023, arXiv 2306.01708", ties),
        MergeMethod("dare_ties", "random", True, "Yu et al. 2023, arXiv 2311.03099", dare_ties),
        MergeMethod("dare_linear", "random", False, "Yu et al. 2023, arXiv 2311.03099", dare_linear),
        MergeMethod("della", "magprune", True, "Deep et al. 2024, arXiv 2406.11617", della, whole=True),
        MergeMethod(
            "breadcrumbs", "outliers", False, "Davari & Belilovsky 2023, arXiv 2312.06795", breadcrumbs, whole=True
        ),
        MergeMethod(
            "breadcrumbs_ties",
            "outliers",
            True,
            "Davari & Belilovsky 2023, arXiv 2312.06795",
            breadcrumbs_ties,
            whole=True,
        ),
        MergeMethod("tsv_m", "spectral", False, "Gargiulo et al. 2025, arXiv 2412.00081", tsv_m, whole=True),
        MergeMethod("iso_c", "spectral", False, "Marczak et al. 2025, arXiv 2502.04959", iso_c, whole=True),
        MergeMethod("iso_cts", "spectral", False, "Marczak et al. 2025, arXiv 2502.04959", iso_cts, whole=True),
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
    epsilon: float = 0.15
    gamma: float = 0.01
    rescale: bool = True
    common_space_fraction: float = 0.8
    rank: int | None = None

    def __post_init__(self) -> None:
        get_method(self.method)
        if not 0.0 < self.density <= 1.0:
            raise UserError(f"density must be in (0, 1], got {self.density}")
        if not 0.0 <= self.gamma < 1.0:
            raise UserError(f"gamma must be in [0, 1), got {self.gamma}")
        if not 0.0 <= self.common_space_fraction <= 1.0:
            raise UserError(f"common_space_fraction must be in [0, 1], got {self.common_space_fraction}")
        if self.rank is not None and self.rank < 1:
            raise UserError(f"rank must be at least 1, got {self.rank}")
        if self.method == "della":
            check_della_epsilon(self.density, self.epsilon)
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
            epsilon=settings.epsilon,
            gamma=settings.gamma,
            rescale=settings.rescale,
            common_space_fraction=settings.common_space_fraction,
            rank=settings.rank,
        )


def check_della_epsilon(density: float, epsilon: float) -> None:
    """DELLA's keep probabilities density ± ε must lie in (0, 1) (unless density is 1: no drop)."""
    if density < 1.0 and not (0.0 < density - epsilon and density + epsilon < 1.0):
        raise UserError(
            f"della: epsilon {epsilon} with density {density} puts a keep probability outside (0, 1); "
            f"choose epsilon < {min(density, 1.0 - density):g}"
        )


def merge_whole(
    options: MergeOptions,
    task_tensors: Sequence[torch.Tensor | None],
    weights: Sequence[float],
    densities: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
) -> torch.Tensor:
    """The merged delta (float32, λ applied) of one whole tensor, for the ``whole`` methods.

    An input that lacks the tensor passes ``None``: a zero task vector for the sparsifying
    methods, and no task at all for the SVD methods (it claims no share of the rank, and the
    mean of the tensors that are not matrices is over the inputs that have them).

    >>> merge_whole(MergeOptions("iso_c"), [torch.tensor([[3.0, 0.0], [0.0, 1.0]]), None], [1.0, 1.0])
    tensor([[2., 0.],
            [0., 2.]])
    """
    like = next((t for t in task_tensors if t is not None), None)
    if like is None:
        raise ValueError("every input is None: copy the base instead of merging")
    taus = [torch.zeros(like.shape) if t is None else t.to(torch.float32) for t in task_tensors]
    n, o = len(taus), options
    densities = [o.density] * n if densities is None else list(densities)
    name = o.method
    if METHODS[name].sparsify == "spectral":
        present = [i for i, t in enumerate(task_tensors) if t is not None]
        taus, weights = [taus[i] for i in present], [weights[i] for i in present]
    if name == "tsv_m":
        return tsv_m(taus, weights, o.lambda_)
    if name == "iso_c":
        return iso_c(taus, weights, o.lambda_, o.rank)
    if name == "iso_cts":
        return iso_cts(taus, weights, o.lambda_, o.common_space_fraction)
    if name == "breadcrumbs":
        return breadcrumbs(taus, weights, densities, o.gamma, o.lambda_, o.normalize)
    if name == "breadcrumbs_ties":
        return breadcrumbs_ties(taus, weights, densities, o.gamma, o.lambda_, o.sign_vote, o.normalize)
    if name == "della":
        for d in densities:
            check_della_epsilon(d, o.epsilon)
        return della(
            taus,
            weights,
            densities,
            o.epsilon,
            o.lambda_,
            o.sign_vote,
            o.normalize,
            rescale=o.rescale,
            seeds=seeds,
            seed=o.seed,
        )
    raise ValueError(f"{name} is merged chunk by chunk (TensorMerge), not whole")


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
        if self.method.whole:
            raise ValueError(f"{options.method} needs whole tensors: use merge_whole, not TensorMerge")
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
        combine = (
            DisjointMerge(self.options.sign_vote, self.options.normalize) if self.method.consensus else WeightedSum()
        )
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
