"""Iso-C and Iso-CTS (Marczak, Magistri, Cygert, Twardowski, Bagdanov & van de Weijer,
"No Task Left Behind: Isotropic Model Merging with Common and Task-Specific
Subspaces", ICML 2025, arXiv 2502.04959).

**Iso-C** flattens the spectrum of the summed task matrix, so no direction of
the sum dominates the others. For each 2-D tensor::

    M = Σ_i w_i τ_i = U Σ Vᵀ            (thin SVD, k = min(rows, cols))
    delta = λ · U (σ̄ I) Vᵀ              σ̄ = mean of the k singular values

With ``rank`` r (an option of ours, not in the paper: ``merge.rank``), only
the top r singular directions of M are kept and flattened::

    delta = λ · U_r (σ̄_r I) V_rᵀ        σ̄_r = mean of the top r singular values

The paper's task vectors are full-rank fine-tunes; ours are a few small steps
on a few examples, whose sum has a handful of strong directions and a long
tail of weak ones. Flattening the whole spectrum lifts that tail to the mean;
a rank keeps the flattening on the directions the nodes wrote. The result has
rank r per matrix, so a LoRA adapter of rank ≥ r carries it exactly.

**Iso-CTS** keeps a common subspace of M and gives each task its own
directions outside it. With c = ⌊f·k⌋ for ``common_space_fraction`` f,
t = round((k − c)/n)·n, then c = k − t and s = (k − c)/n per task::

    U_c, Σ_c, V_c = the top c singular triplets of M
    per task: τ_i' = w_i τ_i − U_c U_cᵀ (w_i τ_i) = U_i Σ_i V_iᵀ   (projected off the common space)
    Û = [U_1[:, :s] … U_n[:, :s]  U_c],  Σ̂ and V̂ likewise
    U⊥, V⊥ = orthogonal factors of Û and V̂ (Procrustes)
    delta = λ · U⊥ (mean(Σ̂) I) V⊥ᵀ

Tensors that are not 2-D take the mean (1/n) Σ w_i τ_i, as the reference code
does (Iso-C's reference uses the sum's SVD for matrices and the mean for
the rest, and so do we). An Iso-CTS matrix with k < n falls back to Iso-C.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from traitgraph.linker.merging.tsv import (
    WORK,
    finish,
    mean,
    orthogonal_factor,
    top_triplets,
    weighted,
)


def iso_c(
    task_tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    lambda_: float = 1.0,
    rank: int | None = None,
) -> torch.Tensor:
    """The Iso-C merged delta (float32) of one tensor, so that W = W_base + delta.

    >>> iso_c([torch.tensor([[3.0, 0.0], [0.0, 1.0]])], [1.0])   # spectrum (3, 1) -> (2, 2)
    tensor([[2., 0.],
            [0., 2.]])
    >>> iso_c([torch.tensor([[3.0, 0.0], [0.0, 1.0]])], [1.0], rank=1) + 0.0   # (3, 1) -> (3, 0)
    tensor([[3., 0.],
            [0., 0.]])
    """
    taus = weighted(task_tensors, weights)
    if taus[0].dim() != 2:
        return finish(mean(taus), lambda_)
    total = torch.stack(taus).sum(dim=0)
    u, s, vt = top_triplets(total, min(total.shape) if rank is None else min(rank, *total.shape))
    return finish((u * s.mean()) @ vt, lambda_)


def common_and_task_ranks(k: int, n: int, common_space_fraction: float) -> tuple[int, int]:
    """(c, s): the common subspace's rank and each task's, with c + n·s = k.

    >>> common_and_task_ranks(64, 3, 0.8)
    (52, 4)
    """
    common = int(k * common_space_fraction)
    task_total = round((k - common) / n) * n
    common = k - task_total
    return common, (k - common) // n


def iso_cts(
    task_tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    lambda_: float = 1.0,
    common_space_fraction: float = 0.8,
) -> torch.Tensor:
    """The Iso-CTS merged delta (float32) of one tensor, so that W = W_base + delta.

    >>> a = torch.tensor([[2.0, 0.0], [0.0, 0.0]]); b = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    >>> iso_cts([a, b], [1.0, 1.0], common_space_fraction=0.5)
    tensor([[2., 0.],
            [0., 2.]])
    """
    taus = weighted(task_tensors, weights)
    n = len(taus)
    if taus[0].dim() != 2:
        return finish(mean(taus), lambda_)
    rows, cols = taus[0].shape
    k = min(rows, cols)
    if k < n:
        return iso_c(taus, [1.0] * n, lambda_)
    common, per_task = common_and_task_ranks(k, n, common_space_fraction)
    u, s, vt = torch.linalg.svd(torch.stack(taus).sum(dim=0), full_matrices=False)
    u_c, s_c, vt_c = u[:, :common], s[:common], vt[:common, :]
    u_hat, s_hat, v_hat = torch.zeros(rows, k, dtype=WORK), torch.zeros(k, dtype=WORK), torch.zeros(k, cols, dtype=WORK)
    for i, tau in enumerate(taus):
        u_i, s_i, vt_i = torch.linalg.svd(tau - u_c @ (u_c.T @ tau), full_matrices=False)
        u_hat[:, i * per_task : (i + 1) * per_task] = u_i[:, :per_task]
        s_hat[i * per_task : (i + 1) * per_task] = s_i[:per_task]
        v_hat[i * per_task : (i + 1) * per_task, :] = vt_i[:per_task, :]
    start = n * per_task
    u_hat[:, start : start + common], s_hat[start : start + common], v_hat[start : start + common, :] = u_c, s_c, vt_c
    u_orth, vt_orth = orthogonal_factor(u_hat), orthogonal_factor(v_hat.T).T
    return finish((u_orth * s_hat.mean()) @ vt_orth, lambda_)
