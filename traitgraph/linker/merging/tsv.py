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

One difference from the reference code, on purpose: a task whose matrix has
rank below r has singular values ≈ 0 among its top r, and any orthonormal
basis of that near-null space is an equally valid set of "singular vectors".
The reference keeps whichever LAPACK returns, and they take part in the
whitening, which rotates every other direction: its output then moves by
~1e-4 when the input moves by 1e-12. Here directions with
σ ≤ 1e-7 · σ_max of their task are dropped before the whitening (their
columns are zero), so the merge is a function of the task vectors. Where every
task has full rank r (as trained task vectors do) the two agree.
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


#: Singular directions of a task below this fraction of its largest are dropped before the
#: whitening (see the module docstring).
NULL_TOLERANCE = 1e-7
#: A Gram matrix whose eigenvalues spread wider than this is left to the SVD (see below).
GRAM_CONDITION = 1e-10


def orthogonal_factor(matrix: torch.Tensor) -> torch.Tensor:
    """The nearest matrix with orthonormal columns (Procrustes): P Qᵀ of matrix = P S Qᵀ.

    Computed as M (MᵀM)^(-1/2) on the nonzero columns (the zero ones stay zero: the
    methods give them no singular value), which is the SVD's answer; when MᵀM is
    near-singular (two tasks sharing a direction) the SVD itself is used.

    >>> q = orthogonal_factor(torch.tensor([[2.0, 0.0], [0.0, 0.5]]))
    >>> q
    tensor([[1., 0.],
            [0., 1.]])
    """
    nonzero = matrix.abs().sum(dim=0) > 0
    columns = matrix[:, nonzero]
    values, vectors = torch.linalg.eigh(columns.T @ columns) if columns.shape[1] else (None, None)
    if values is None or values.min() <= GRAM_CONDITION * values.max():
        p, _, qt = torch.linalg.svd(matrix, full_matrices=False)
        return p @ qt
    out = torch.zeros_like(matrix)
    out[:, nonzero] = columns @ ((vectors * values.rsqrt()) @ vectors.T)
    return out


def top_triplets(tau: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top ``rank`` singular triplets (U, σ, Vᵀ) of a matrix, as ``torch.linalg.svd`` gives them.

    Through the smaller Gram matrix (eigh) and a QR of τV: about twice as fast as a full
    SVD. The singular vectors of values below ~1e-8 σ_max are as arbitrary as the SVD's
    (any orthonormal basis of that near-null space), and they carry no weight.

    >>> u, s, vt = top_triplets(torch.diag(torch.tensor([1.0, 3.0, 2.0])).double(), 2)
    >>> s
    tensor([3., 2.], dtype=torch.float64)
    """
    if tau.shape[0] < tau.shape[1]:
        v, s, ut = top_triplets(tau.T, rank)
        return ut.T, s, v.T
    _, vectors = torch.linalg.eigh(tau.T @ tau)  # ascending
    v = vectors[:, -rank:].flip(1) if rank else vectors[:, :0]
    q, r = torch.linalg.qr(tau @ v)  # τV = U Σ: R is diagonal up to rounding
    signs = torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(tau.dtype)
    return q * signs, torch.diagonal(r).abs(), v.T


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
        u, s, vt = top_triplets(tau, r)  # (rows, r), (r,), (r, cols)
        weightless = s <= NULL_TOLERANCE * s.max().clamp(min=torch.finfo(WORK).tiny)
        u[:, weightless], s[weightless], vt[weightless, :] = 0.0, 0.0, 0.0
        u_hat[:, i * r : (i + 1) * r] = u[:, :r]
        s_hat[i * r : (i + 1) * r] = s[:r]
        v_hat[i * r : (i + 1) * r, :] = vt[:r, :]
    u_orth = orthogonal_factor(u_hat)
    vt_orth = orthogonal_factor(v_hat.T).T
    return finish((u_orth * s_hat) @ vt_orth, lambda_)
