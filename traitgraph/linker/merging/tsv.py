"""TSV-Merge (Gargiulo, Crisostomi, Bucarelli, Scardapane, Silvestri & Rodolà, "Task
Singular Vectors: Reducing Task Interference in Model Merging", CVPR 2025,
arXiv 2412.00081).

For each 2-D tensor (every weight matrix, embeddings included, as the
authors do for every 2-D parameter), with the n weighted task matrices
w_i τ_i = U_i Σ_i V_iᵀ (thin SVD) and k = min(rows, cols), r = ⌊k/n⌋::

    Û = [U_1[:, :r] … U_n[:, :r] 0]      (rows × k; zero columns past n·r)
    Σ̂ = diag(Σ_1[:r] … Σ_n[:r] 0)
    V̂ = [V_1[:, :r] … V_n[:, :r] 0]
    U⊥ = P Qᵀ where Û = P S Qᵀ           (the orthogonal factor: whitening)
    V⊥ = likewise for V̂
    delta = λ · U⊥ Σ̂ V⊥ᵀ

Each task keeps its top r singular directions, and the whitening
(Procrustes) step decorrelates the directions of different tasks. Tensors
that are not 2-D (norm weights, biases) take the mean (1/n) Σ w_i τ_i, as the
reference code does; so does a matrix with k < n (no rank to share).
A negative weight flips the sign of its singular vectors, so it still
subtracts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


#: The SVD methods compute in float64 (the SVDs of near-degenerate spectra lose digits in
#: float32) and return float32 like every merge method.
WORK = torch.float64


def weighted(task_tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> list[torch.Tensor]:
    """[w_i τ_i] in float64, one per input."""
    if len(task_tensors) != len(weights):
        raise ValueError(f"{len(task_tensors)} task tensors but {len(weights)} weights")
    return [t.to(WORK) * float(w) for t, w in zip(task_tensors, weights)]


def mean(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """(1/n) Σ tensors: how the SVD methods merge tensors that are not matrices."""
    return torch.stack(list(tensors)).mean(dim=0)


def finish(delta: torch.Tensor, lambda_: float) -> torch.Tensor:
    """λ · delta in float32."""
    return (delta * lambda_).to(torch.float32)


def orthogonal_factor(matrix: torch.Tensor) -> torch.Tensor:
    """The nearest matrix with orthonormal columns (Procrustes): P Qᵀ of matrix = P S Qᵀ.

    >>> q = orthogonal_factor(torch.tensor([[2.0, 0.0], [0.0, 0.5]]))
    >>> q
    tensor([[1., 0.],
            [0., 1.]])
    """
    p, _, qt = torch.linalg.svd(matrix, full_matrices=False)
    return p @ qt


def tsv_m(task_tensors: Sequence[torch.Tensor], weights: Sequence[float], lambda_: float = 1.0) -> torch.Tensor:
    """The TSV-M merged delta (float32) of one tensor, so that W = W_base + delta.

    >>> a = torch.tensor([[2.0, 0.0], [0.0, 0.0]]); b = torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    >>> tsv_m([a, b], [1.0, 1.0])                      # orthogonal tasks add
    tensor([[2., 0.],
            [0., 3.]])
    """
    taus = weighted(task_tensors, weights)
    n = len(taus)
    if taus[0].dim() != 2 or min(taus[0].shape) < n:
        return finish(mean(taus), lambda_)
    rows, cols = taus[0].shape
    k = min(rows, cols)
    r = k // n
    u_hat = torch.zeros(rows, k, dtype=WORK)
    s_hat = torch.zeros(k, dtype=WORK)
    v_hat = torch.zeros(k, cols, dtype=WORK)  # Vᵀ rows
    for i, tau in enumerate(taus):
        u, s, vt = torch.linalg.svd(tau, full_matrices=False)  # (rows, k), (k,), (k, cols)
        u_hat[:, i * r : (i + 1) * r] = u[:, :r]
        s_hat[i * r : (i + 1) * r] = s[:r]
        v_hat[i * r : (i + 1) * r, :] = vt[:r, :]
    u_orth = orthogonal_factor(u_hat)
    vt_orth = orthogonal_factor(v_hat.T).T
    return finish((u_orth * s_hat) @ vt_orth, lambda_)
