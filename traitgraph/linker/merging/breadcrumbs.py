"""Model Breadcrumbs (Davari & Belilovsky, "Model Breadcrumbs: Scaling Multi-Task Model
Merging with Sparse Masks", ECCV 2024, arXiv 2312.06795).

Each task vector drops its *largest* entries (outliers that move one weight
far) as well as its smallest, per tensor. With n = numel, mergekit's
parametrisation, which we follow, keeps ``⌊density·n⌋`` entries after
removing the ``⌊gamma·n⌋`` largest::

    order |τ_i| ascending (ties by position)
    n_bot = max(0, n − ⌊density·n⌋ − ⌊gamma·n⌋)
    keep positions n_bot … n_bot + ⌊density·n⌋ − 1 of that order
    τ̃_i = mask ⊙ τ_i                                   (no rescale)

then ``breadcrumbs`` adds them, ``delta = λ Σ w_i τ̃_i``, and
``breadcrumbs_ties`` runs TIES's sign election and disjoint mean
(:func:`.ties.elect_and_merge`). Every tensor shape, 1-D included, is treated
as one flat list of entries, as in the paper and mergekit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from traitgraph.linker.merging.task_arithmetic import Normalize, task_arithmetic
from traitgraph.linker.merging.ties import SignVote, _per_input, elect_and_merge


def outlier_trim(tau: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """τ with its ⌊gamma·n⌋ largest and its smallest entries zeroed, ⌊density·n⌋ kept.

    >>> outlier_trim(torch.tensor([0.1, -5.0, 0.3, 2.0, -0.2]), density=0.4, gamma=0.2)
    tensor([0.0000, 0.0000, 0.3000, 2.0000, 0.0000])
    """
    if density >= 1.0:
        return tau
    numel = tau.numel()
    keep_n = int(density * numel)
    bottom = max(0, numel - keep_n - int(gamma * numel))
    order = torch.sort(tau.abs().reshape(-1).to(torch.float32), stable=True).indices  # ascending
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[order[bottom : bottom + keep_n]] = True
    return torch.where(mask.reshape(tau.shape), tau, torch.zeros((), dtype=tau.dtype))


def breadcrumbs(
    task_tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    density: float | Sequence[float],
    gamma: float = 0.01,
    lambda_: float = 1.0,
    normalize: Normalize = "none",
) -> torch.Tensor:
    """λ Σ w_i · outlier_trim(τ_i): Model Breadcrumbs on task arithmetic (float32).
    ``normalize`` (mergekit's ``normalize: true`` = ``signed_weights``) divides by Σ w_i.

    >>> breadcrumbs([torch.tensor([1.0, 9.0, 3.0, 2.0])], [0.5], density=0.5, gamma=0.25)
    tensor([0.0000, 0.0000, 1.5000, 1.0000])
    """
    densities = _per_input(density, len(task_tensors), "densities")
    trimmed = [outlier_trim(t.to(torch.float32), d, gamma) for t, d in zip(task_tensors, densities)]
    return task_arithmetic(trimmed, weights, lambda_, normalize)


def breadcrumbs_ties(
    task_tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    density: float | Sequence[float],
    gamma: float = 0.01,
    lambda_: float = 1.0,
    sign_vote: SignVote = "weighted",
    normalize: Normalize = "count",
) -> torch.Tensor:
    """Breadcrumbs' outlier trim, then TIES's sign election and disjoint mean (float32).

    >>> breadcrumbs_ties([torch.tensor([1.0, -2.0]), torch.tensor([3.0, 4.0])], [1.0, 1.0], density=1.0)
    tensor([2., 4.])
    """
    densities = _per_input(density, len(task_tensors), "densities")
    trimmed = (outlier_trim(t.to(torch.float32), d, gamma) for t, d in zip(task_tensors, densities))
    return elect_and_merge(trimmed, weights, lambda_, sign_vote, normalize)
