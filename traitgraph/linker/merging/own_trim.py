"""Each method's own sparsification of one node's τ, alone: what the merge keeps of that node
before it meets the others. Evaluating base + w·own_trim(τ) against base + w·τ (untrimmed)
and the linked checkpoint separates the *trim loss* from the *conflict loss*.

=====================================  ===============================================
method                                 own_trim(τ), per tensor
=====================================  ===============================================
``ties``                               top-k magnitude trim (:func:`.ties.trim`)
``dare_ties``, ``dare_linear``         the same seeded drop and 1/density rescale
``della``                              the same seeded MagPrune (and rescale)
``breadcrumbs``, ``breadcrumbs_ties``  the same outlier trim
``tsv_m``                              the top ⌊k/n⌋ singular triplets of a matrix
``task_arithmetic``, ``iso_c``,        τ itself (they keep every entry; all they lose,
``iso_cts``                            they lose in combining)
=====================================  ===============================================

The seeds and densities are the linker's, so the τ kept here is entry for
entry the one the merge starts from.
"""

from __future__ import annotations

import torch

from traitgraph.linker.merging.breadcrumbs import outlier_trim
from traitgraph.linker.merging.dare import derive_seed, drop_and_rescale
from traitgraph.linker.merging.della import magprune
from traitgraph.linker.merging.registry import MergeOptions
from traitgraph.linker.merging.ties import trim
from traitgraph.linker.merging.tsv import top_triplets


def low_rank(tau: torch.Tensor, rank: int) -> torch.Tensor:
    """The best rank-``rank`` approximation of a matrix (its top singular triplets), float32.

    >>> low_rank(torch.diag(torch.tensor([3.0, 1.0])), 1).abs()
    tensor([[3., 0.],
            [0., 0.]])
    """
    u, s, vt = top_triplets(tau.to(torch.float64), rank)
    return ((u * s) @ vt).to(torch.float32)


#: The methods whose own trim is τ itself: their "trimmed" model is the node alone.
KEEPS_EVERY_ENTRY = frozenset({"task_arithmetic", "iso_c", "iso_cts"})
#: The merge settings :func:`own_trim` reads (λ, the dtype and the combining options do not change a trim).
TRIM_SETTINGS = ("method", "density", "seed", "epsilon", "gamma", "rescale")


def own_trim(
    options: MergeOptions, tau: torch.Tensor, tensor_name: str, node_id: str, n_nodes: int, density: float | None = None
) -> torch.Tensor:
    """Node ``node_id``'s τ of tensor ``tensor_name`` as the merge of ``n_nodes`` nodes sparsifies it.

    >>> own_trim(MergeOptions("ties", density=0.5), torch.tensor([0.1, -5.0, 0.3, 2.0]), "w", "a", 3)
    tensor([ 0., -5.,  0.,  2.])
    """
    tau = tau.to(torch.float32)
    d = options.density if density is None else density
    method = options.method
    seed = derive_seed(options.seed, tensor_name, node_id)
    if method == "ties":
        return trim(tau, d)
    if method in ("dare_ties", "dare_linear"):
        return drop_and_rescale(tau, d, seed)
    if method == "della":
        return magprune(tau, d, options.epsilon, seed, options.rescale)
    if method in ("breadcrumbs", "breadcrumbs_ties"):
        return outlier_trim(tau, d, options.gamma)
    if method == "tsv_m" and tau.dim() == 2 and min(tau.shape) >= n_nodes:
        return low_rank(tau, min(tau.shape) // n_nodes)
    return tau
