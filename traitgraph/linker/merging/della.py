"""DELLA-Merging (Deep, Bhardwaj, Majumder & Poria, "DELLA-Merging: Reducing Interference
in Model Merging through Magnitude-Based Sampling", 2024, arXiv 2406.11617).

MagPrune drops entries at random like DARE, but the keep probability grows
with the entry's magnitude rank within its row (the last dimension; a 1-D
tensor is one row). For a row of c entries with ranks r = 1 … c by |τ|
ascending (ties by position)::

    p_keep(r) = density − ε + 2ε · (r − 1)/(c − 1)       (p_keep = density when c = 1)
    m = [u < p_keep]                                      u: seeded uniform draws
    τ̃_i = m ⊙ τ_i · ‖τ_i‖₁ / ‖m ⊙ τ_i‖₁                  (``rescale``; as mergekit)

so the mean keep rate is ``density`` and the biggest entries are the likeliest
to survive. The rescale keeps each tensor's L1 norm, as mergekit's
``rescale: true`` does (skipped when either norm is below 1e-7); the paper
instead divides each kept entry by its own p_keep. Then TIES's sign election
and disjoint mean combine the τ̃_i (:func:`.ties.elect_and_merge`), which is
mergekit's ``della``.

The draws are :func:`.dare.uniform_draws` seeded per (merge seed, tensor,
node), so a DELLA merge is reproducible; mergekit's draws are unseeded, so
its DELLA results differ from ours in which entries are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from traitgraph.linker.merging.dare import _seeds, uniform_draws
from traitgraph.linker.merging.task_arithmetic import Normalize
from traitgraph.linker.merging.ties import SignVote, _per_input, elect_and_merge

#: Norms below this are not rescaled (mergekit's ``rescaled_masked_tensor`` eps).
RESCALE_EPS = 1e-7


def keep_probabilities(tau: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """MagPrune's p_keep of every entry of ``tau`` (same shape), ranked within rows.

    >>> keep_probabilities(torch.tensor([[0.1, -3.0, 2.0]]), density=0.5, epsilon=0.2)
    tensor([[0.3000, 0.7000, 0.5000]])
    """
    if not (0.0 < density - epsilon and density + epsilon < 1.0) and density < 1.0:
        raise ValueError(f"epsilon {epsilon} must keep density ± epsilon inside (0, 1) (density {density})")
    rows = tau.reshape(1, -1) if tau.dim() < 2 else tau.reshape(-1, tau.shape[-1])  # (R, c)
    columns = rows.shape[1]
    if columns == 1:
        return torch.full(tau.shape, float(density))
    order = torch.argsort(rows.abs().to(torch.float32), dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(columns).expand_as(order).contiguous())  # 0 … c−1
    probs = (density - epsilon) + ranks.to(torch.float32) / (columns - 1) * (2 * epsilon)
    return probs.reshape(tau.shape)


def magprune(tau: torch.Tensor, density: float, epsilon: float, seed: int, rescale: bool = True) -> torch.Tensor:
    """One task vector after MagPrune (float32); ``density`` ≥ 1 keeps it whole.

    >>> magprune(torch.tensor([1.0, -2.0]), density=1.0, epsilon=0.1, seed=0)
    tensor([ 1., -2.])
    """
    tau = tau.to(torch.float32)
    if density >= 1.0:
        return tau
    draws = uniform_draws(tau.numel(), seed).reshape(tau.shape)
    masked = torch.where(draws < keep_probabilities(tau, density, epsilon), tau, torch.zeros(()))
    if not rescale:
        return masked
    before, after = tau.abs().sum(), masked.abs().sum()
    if before < RESCALE_EPS or after < RESCALE_EPS:
        return masked
    return masked * (before / after)


def della(
    task_tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    density: float | Sequence[float],
    epsilon: float = 0.15,
    lambda_: float = 1.0,
    sign_vote: SignVote = "weighted",
    normalize: Normalize = "count",
    *,
    rescale: bool = True,
    seeds: Sequence[int] | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """MagPrune each τ_i, then TIES's sign election and disjoint mean (float32).

    >>> della([torch.tensor([1.0, -2.0])], [2.0], density=1.0)
    tensor([ 2., -4.])
    """
    n = len(task_tensors)
    densities, seeds_ = _per_input(density, n, "densities"), _seeds(n, seeds, seed)
    pruned = (magprune(t, d, epsilon, s, rescale) for t, d, s in zip(task_tensors, densities, seeds_))
    return elect_and_merge(pruned, weights, lambda_, sign_vote, normalize)
