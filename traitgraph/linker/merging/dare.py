"""DARE: Drop And REscale (Yu et al., "Language Models are Super Mario: Absorbing
Abilities from Homologous Models as a Free Lunch", ICML 2024, arXiv 2311.03099).

Each task vector keeps every entry with probability p = density and is
rescaled by 1/p, so its expected value is unchanged::

    τ̃_i = m_i ⊙ τ_i / p        m_i ~ Bernoulli(p), elementwise

then ``dare_linear`` adds the τ̃_i like task arithmetic, and ``dare_ties``
runs TIES's sign election and disjoint mean on them (no magnitude trim).
The rescale is the paper's (and PEFT's) 1/p; mergekit instead rescales to
keep each tensor's L1 norm, so DARE results differ from mergekit's.

**Determinism.** The drop mask is a pure function of a 63-bit seed: the flat
tensor is cut into blocks of :data:`BLOCK` entries and block b draws
``torch.rand`` from a generator seeded with ``derive_seed(seed, b)``. The
linker derives each vector's seed from the merge seed, the tensor name and
the node name with SHA-256 (never Python's salted ``hash()``), so the mask
does not depend on the order of the nodes, on which other nodes take part,
on the thread count, or on how the linker chunks the tensor.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from traitgraph.linker.merging.task_arithmetic import Normalize, task_arithmetic
from traitgraph.linker.merging.ties import SignVote, _per_input, elect_and_merge

#: Entries per random block of the drop mask (part of the mask's definition: changing
#: it changes every DARE merge, so treat it like a format version).
BLOCK = 1 << 20


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (their ``str``), via SHA-256.

    >>> derive_seed(0, "model.embed_tokens.weight", "pirate") == derive_seed(0, "model.embed_tokens.weight", "pirate")
    True
    """
    text = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & ((1 << 63) - 1)


def keep_mask(numel: int, density: float, seed: int, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """The keep mask (bool) of flat entries ``[start, stop)`` of a tensor of ``numel`` entries.

    The same entries get the same answer whichever range they are asked in.
    """
    return uniform_draws(numel, seed, start, stop) < density


def uniform_draws(numel: int, seed: int, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """The seeded uniform draws in [0, 1) (float32) of flat entries ``[start, stop)``: entry j is
    kept by a random drop of keep-probability p_j when its draw is below p_j (DARE, DELLA).

    >>> bool((uniform_draws(10, seed=3)[4:] == uniform_draws(10, seed=3, start=4)).all())
    True
    """
    stop = numel if stop is None else stop
    if not 0 <= start <= stop <= numel:
        raise ValueError(f"range [{start}, {stop}) outside a tensor of {numel} entries")
    parts = []
    for block in range(start // BLOCK, (stop - 1) // BLOCK + 1 if stop > start else start // BLOCK):
        lo, hi = block * BLOCK, min((block + 1) * BLOCK, numel)
        generator = torch.Generator(device="cpu").manual_seed(derive_seed(seed, block))
        uniform = torch.rand(hi - lo, generator=generator, dtype=torch.float32)
        parts.append(uniform[max(start, lo) - lo : min(stop, hi) - lo])
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float32)


def drop_and_rescale(
    tau: torch.Tensor, density: float, seed: int, start: int = 0, numel: int | None = None
) -> torch.Tensor:
    """τ̃ = m ⊙ τ / density for ``tau`` = flat entries ``[start, start + tau.numel())`` of a
    tensor of ``numel`` entries (default: ``tau`` is the whole tensor)."""
    if density >= 1.0:
        return tau
    numel = tau.numel() if numel is None else numel
    mask = keep_mask(numel, density, seed, start, start + tau.numel()).reshape(tau.shape)
    return torch.where(mask, tau / density, torch.zeros((), dtype=tau.dtype))


def _seeds(n: int, seeds: Sequence[int] | None, seed: int) -> list[int]:
    if seeds is None:
        return [derive_seed(seed, i) for i in range(n)]
    if len(seeds) != n:
        raise ValueError(f"{n} task tensors but {len(seeds)} seeds")
    return [int(s) for s in seeds]


def dare_linear(
    task_tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    density: float | Sequence[float],
    lambda_: float = 1.0,
    *,
    seeds: Sequence[int] | None = None,
    seed: int = 0,
    normalize: Normalize = "none",
) -> torch.Tensor:
    """λ · Σ w_i · drop(τ_i): DARE, then task arithmetic. One seed per tensor (or derived from ``seed``)."""
    n = len(task_tensors)
    densities, seeds_ = _per_input(density, n, "densities"), _seeds(n, seeds, seed)
    dropped = [drop_and_rescale(t.to(torch.float32), d, s) for t, d, s in zip(task_tensors, densities, seeds_)]
    return task_arithmetic(dropped, weights, lambda_, normalize)


def dare_ties(
    task_tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    density: float | Sequence[float],
    lambda_: float = 1.0,
    sign_vote: SignVote = "weighted",
    normalize: Normalize = "count",
    *,
    seeds: Sequence[int] | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """DARE, then TIES's sign election and disjoint mean (see :mod:`.ties` for the options)."""
    n = len(task_tensors)
    densities, seeds_ = _per_input(density, n, "densities"), _seeds(n, seeds, seed)
    dropped = (drop_and_rescale(t.to(torch.float32), d, s) for t, d, s in zip(task_tensors, densities, seeds_))
    return elect_and_merge(dropped, weights, lambda_, sign_vote, normalize)
