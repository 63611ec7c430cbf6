"""APOLLO: AdamW's learning-rate adaptation, coarsened and estimated from a
random low-rank projection of the gradient.

Zhu et al., "APOLLO: SGD-like Memory, AdamW-level Performance", MLSys 2025,
arXiv:2412.05270 (Algorithm 1). Written for this project from the paper; the
official ``apollo-torch`` package is neither used nor copied.

For a weight matrix W (m, n) with gradient G, AdamW keeps two (m, n) moments.
APOLLO keeps them for R = P G instead, a random projection of G to rank r:

    R_t  = project(G_t)                       (m, r) or (r, n), r << min(m, n)
    M_t  = β1 M + (1 - β1) R_t                Adam moments, in the small space
    V_t  = β2 V + (1 - β2) R_t²
    R̃_t  = M̂_t / (√V̂_t + ε)                   bias-corrected Adam direction of R
    s    = ‖R̃_t‖ / ‖R_t‖                      per channel, or one for the tensor
    U_t  = α · G_t · s                        the raw, full-rank gradient, rescaled
    W   ← W (1 - η λ) - η U_t                 decoupled weight decay (AdamW)

The paper's observation is that AdamW's element-wise scaling ``R̃/R`` can be
coarsened to one factor per channel (APOLLO) or per tensor (APOLLO-Mini)
without losing quality, and that such a coarse factor is estimated well from
a random projection (Johnson-Lindenstrauss), so no SVD is needed (unlike
GaLore). The projection is a Gaussian matrix P with entries N(0, 1/r),
regenerated from a stored integer seed every ``update_proj_gap`` steps: the
state holds the seed, never the matrix.

The *norm-growth limiter* (from Fira, Chen et al. 2024, arXiv:2410.01623, as
used by APOLLO) keeps an update from growing faster than γ per step:
if ‖U_t‖ > γ ‖U_{t-1}‖ then U_t ← U_t · γ ‖U_{t-1}‖ / ‖U_t‖. It acts on the
bias-corrected update, as written above; the official code applies bias
correction as a step size after its limiter, which damps the first few dozen
steps a little more.

α and ``scale``: we follow the official implementation's convention, in which
the configured ``scale`` is multiplied in as √scale. APOLLO-Mini's published
setting ``scale = 128`` thus gives the paper's α = √128 ≈ 11.3, which
compensates for the small norm of a rank-1 projection; APOLLO's ``scale = 1``
gives α = 1.

Parameters that are not 2-D matrices (norm weights, biases) get plain AdamW
inside the same optimizer, with the same arithmetic as ``torch.optim.AdamW``.

All state is tensors and plain numbers (``step`` and ``proj_seed`` are Python
ints), so ``optimizer.state_dict()`` saves with ``torch.save`` and reloads
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.optim import Optimizer

ScaleType = Literal["channel", "tensor"]

#: Keeps ‖R̃‖ / ‖R‖ finite when a channel's projected gradient is all zeros
#: (an embedding row of a token that did not occur, say).
_NORM_FLOOR = 1e-8


@dataclass(frozen=True)
class ApolloPreset:
    """The defaults of one APOLLO variant; ``OptimizerSettings`` fields left
    ``None`` take these values."""

    rank: int
    scale_type: ScaleType
    scale: float


#: The two published variants (paper Sec. 4 and the official training scripts:
#: APOLLO with channel scaling and a large rank, APOLLO-Mini rank 1 with
#: tensor scaling and scale 128, i.e. α = √128).
PRESETS: dict[str, ApolloPreset] = {
    "apollo": ApolloPreset(rank=256, scale_type="channel", scale=1.0),
    "apollo_mini": ApolloPreset(rank=1, scale_type="tensor", scale=128.0),
}


# --------------------------------------------------------------------------- seeds


def _hash63(*parts: object) -> int:
    """A stable 63-bit integer from ``parts`` (not Python's salted ``hash``)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def projection_seed(seed: int, name: str) -> int:
    """The base seed of one parameter's projections: a function of the run's
    ``seed`` and the parameter's name only, so it survives re-ordering."""
    return _hash63("apollo", seed, name)


def random_projection(proj_seed: int, refresh: int, rank: int, dim: int) -> Tensor:
    """The Gaussian projection P (rank, dim) with entries N(0, 1/rank) for the
    ``refresh``-th projection period of a parameter.

    Generated on the CPU in float32, so the same seed gives the same matrix on
    every device.
    """
    gen = torch.Generator(device="cpu").manual_seed(_hash63(proj_seed, refresh))
    return torch.randn(rank, dim, generator=gen, dtype=torch.float32) / math.sqrt(rank)


# --------------------------------------------------------------------------- optimizer


class Apollo(Optimizer):
    """APOLLO (arXiv:2412.05270) for 2-D weights, AdamW for everything else.

    Args:
        named_params: ``(name, parameter)`` pairs; names seed the projections.
        lr: learning rate η.
        seed: base seed; with ``name`` and the projection period it fixes
            every random projection.
        rank: projection rank r, capped at each matrix's smaller dimension.
        scale_type: ``"channel"`` (one factor per channel of the larger
            dimension) or ``"tensor"`` (one factor per matrix).
        scale: the gradient scale; the update is multiplied by α = √scale.
        update_proj_gap: steps between fresh random projections.
        betas, eps, weight_decay: as in AdamW (decay is decoupled).
        norm_growth_limit: γ of the norm-growth limiter, ``None`` for off.

    Example::

        opt = Apollo(model.named_parameters(), lr=1e-3, seed=0, rank=1,
                     scale_type="tensor", scale=128.0)
        loss.backward(); opt.step(); opt.zero_grad()
    """

    def __init__(
        self,
        named_params: Iterable[tuple[str, Tensor]],
        lr: float,
        *,
        seed: int,
        rank: int,
        scale_type: ScaleType,
        scale: float,
        update_proj_gap: int = 200,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        norm_growth_limit: float | None = 1.01,
    ):
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if scale_type not in ("channel", "tensor"):
            raise ValueError(f"scale_type must be 'channel' or 'tensor', got {scale_type!r}")
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        if update_proj_gap < 1:
            raise ValueError(f"update_proj_gap must be >= 1, got {update_proj_gap}")
        if norm_growth_limit is not None and norm_growth_limit <= 1:
            raise ValueError(f"norm_growth_limit must be > 1 or None, got {norm_growth_limit}")

        named = list(named_params)
        matrices = [(n, p) for n, p in named if _is_matrix(p)]
        others = [(n, p) for n, p in named if not _is_matrix(p)]
        groups = []
        if matrices:
            groups.append({"params": matrices, "apollo": True})
        if others:
            groups.append({"params": others, "apollo": False})
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            rank=rank,
            scale_type=scale_type,
            scale=scale,
            update_proj_gap=update_proj_gap,
            norm_growth_limit=norm_growth_limit,
            seed=seed,
        )
        super().__init__(groups, defaults)
        # The current projection of each matrix, keyed by parameter: a cache of
        # what the seed in the state regenerates, so not part of state_dict().
        self._projections: dict[Tensor, tuple[int, Tensor]] = {}

    # ------------------------------------------------------------------ step

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One optimisation step over every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for name, p in zip(group["param_names"], group["params"]):
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"APOLLO does not support sparse gradients ({name})")
                if group["apollo"]:
                    self._apollo_step(name, p, group)
                else:
                    self._adamw_step(p, group)
        return loss

    def _adamw_step(self, p: Tensor, group: dict) -> None:
        """Plain AdamW (Loshchilov & Hutter 2019), the same arithmetic, in the
        same order, as ``torch.optim.AdamW``'s single-tensor path."""
        grad, state = p.grad, self.state[p]
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        t = state["step"]

        if group["weight_decay"] != 0:
            p.mul_(1 - lr * group["weight_decay"])
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1**t
        bias_correction2_sqrt = (1 - beta2**t) ** 0.5
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        p.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)

    def _apollo_step(self, name: str, p: Tensor, group: dict) -> None:
        """APOLLO for one matrix (Algorithm 1 of the paper)."""
        grad, state = p.grad, self.state[p]
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        m, n = p.shape
        # Project along the smaller dimension (as GaLore and APOLLO do): the
        # larger one keeps its channels, the smaller one shrinks to r.
        side = "right" if m >= n else "left"
        rank = min(group["rank"], m, n)
        if not state:
            state["step"] = 0
            state["proj_seed"] = projection_seed(group["seed"], name)
            low_shape = (m, rank) if side == "right" else (rank, n)
            state["exp_avg"] = torch.zeros(low_shape, dtype=p.dtype, device=p.device)
            state["exp_avg_sq"] = torch.zeros(low_shape, dtype=p.dtype, device=p.device)
        state["step"] += 1
        t = state["step"]

        # Step 1: the projected gradient R, in at least float32.
        compute = torch.promote_types(p.dtype, torch.float32)
        P = self._projection(p, state, group, rank, side).to(compute)  # (r, n) or (r, m)
        g = grad.to(compute)  # (m, n)
        R = g @ P.T if side == "right" else P @ g  # (m, r) or (r, n)

        # Step 2: Adam moments and direction in the low-rank space.
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        R_state = R.to(exp_avg.dtype)
        exp_avg.lerp_(R_state, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(R_state, R_state, value=1 - beta2)
        m_hat = exp_avg.to(compute) / (1 - beta1**t)
        v_hat = exp_avg_sq.to(compute) / (1 - beta2**t)
        R_tilde = m_hat / (v_hat.sqrt() + eps)  # same shape as R

        # Step 3: the scaling factor ‖R̃‖ / ‖R‖, per channel or per tensor.
        if group["scale_type"] == "channel":
            dim = 1 if side == "right" else 0  # the projected (rank) dimension
            s = R_tilde.norm(dim=dim, keepdim=True) / (R.norm(dim=dim, keepdim=True) + _NORM_FLOOR)
            # (m, 1) or (1, n): one factor per channel of the larger dimension
        else:
            s = R_tilde.norm() / (R.norm() + _NORM_FLOOR)  # (): one factor for the matrix

        # Step 4: the update is the raw full-rank gradient times α·s. The factor
        # is settled first (limiter included), so no (m, n) update is ever built.
        factor = s * math.sqrt(group["scale"])  # same shape as s
        gamma = group["norm_growth_limit"]
        if gamma is not None:
            # ‖G · factor‖, from the norms of G along the channels factor is constant on.
            if factor.ndim == 0:
                norm = factor * g.norm()
            else:
                norm = (factor * g.norm(dim=dim, keepdim=True)).norm()
            if "prev_update_norm" in state:
                shrink = torch.clamp(gamma * state["prev_update_norm"] / (norm + _NORM_FLOOR), max=1.0)
                factor = factor * shrink
                norm = norm * shrink
            state["prev_update_norm"] = norm

        if group["weight_decay"] != 0:
            p.mul_(1 - lr * group["weight_decay"])
        p.addcmul_(g, factor, value=-lr)

    def _projection(self, p: Tensor, state: dict, group: dict, rank: int, side: str) -> Tensor:
        """The projection for the current step, regenerated from the stored seed
        when a new projection period begins (or after a reload)."""
        refresh = (state["step"] - 1) // group["update_proj_gap"]
        cached = self._projections.get(p)
        if cached is None or cached[0] != refresh:
            dim = p.shape[1] if side == "right" else p.shape[0]
            P = random_projection(state["proj_seed"], refresh, rank, dim).to(p.device)
            self._projections[p] = cached = (refresh, P)
        return cached[1]

    def load_state_dict(self, state_dict: dict) -> None:
        """As ``Optimizer.load_state_dict``; cached projections are dropped and
        regenerate from the loaded seeds."""
        super().load_state_dict(state_dict)
        self._projections = {}

    def projection_bytes(self, params: Iterable[Tensor] | None = None) -> int:
        """Bytes held by the cached projection matrices (of ``params`` only, if
        given): regenerable from the seeds, so not saved, but held in memory."""
        wanted = None if params is None else {id(p) for p in params}
        return sum(
            P.numel() * P.element_size() for p, (_, P) in self._projections.items() if wanted is None or id(p) in wanted
        )


def _is_matrix(p: Tensor) -> bool:
    """Whether APOLLO handles ``p``: a real floating-point 2-D tensor."""
    return p.ndim == 2 and p.is_floating_point()
