"""The optimizer registry: the spec's optimizer name -> how to build it.

One file per algorithm (``apollo.py``, ``adamw.py``); this file only maps the
stable names used in ``OptimizerSettings.name`` to builders, fills preset
values into settings left ``None``, and measures optimizer memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import torch

from traitgraph.compiler.optim.adamw import build_adamw
from traitgraph.compiler.optim.apollo import PRESETS, Apollo, ApolloPreset
from traitgraph.errors import UserError
from traitgraph.graph.schema import OptimizerSettings

Builder = Callable[[list[tuple[str, torch.nn.Parameter]], OptimizerSettings, float, int], torch.optim.Optimizer]


@dataclass(frozen=True)
class OptimizerEntry:
    """One registered optimizer."""

    name: str
    summary: str
    build: Builder
    preset: ApolloPreset | None = None  # defaults for settings left None


def _build_apollo(
    named_params: list[tuple[str, torch.nn.Parameter]],
    settings: OptimizerSettings,
    lr: float,
    seed: int,
    *,
    preset: ApolloPreset,
) -> Apollo:
    """APOLLO with ``settings``; fields left ``None`` take ``preset``'s value."""
    return Apollo(
        named_params,
        lr,
        seed=seed,
        rank=settings.rank if settings.rank is not None else preset.rank,
        scale_type=settings.scale_type if settings.scale_type is not None else preset.scale_type,
        scale=settings.scale if settings.scale is not None else preset.scale,
        update_proj_gap=settings.update_proj_gap,
        betas=tuple(settings.betas),
        eps=settings.eps,
        weight_decay=settings.weight_decay,
        norm_growth_limit=settings.norm_growth_limit,
    )


OPTIMIZERS: dict[str, OptimizerEntry] = {
    "apollo": OptimizerEntry(
        "apollo",
        "APOLLO (arXiv:2412.05270): channel-wise scaling from a rank-256 random projection",
        partial(_build_apollo, preset=PRESETS["apollo"]),
        PRESETS["apollo"],
    ),
    "apollo_mini": OptimizerEntry(
        "apollo_mini",
        "APOLLO-Mini (arXiv:2412.05270): tensor-wise scaling from a rank-1 projection, SGD-like memory",
        partial(_build_apollo, preset=PRESETS["apollo_mini"]),
        PRESETS["apollo_mini"],
    ),
    "adamw": OptimizerEntry(
        "adamw",
        "AdamW (arXiv:1711.05101), torch.optim.AdamW: the full-memory baseline",
        build_adamw,
    ),
}


def get_optimizer(name: str) -> OptimizerEntry:
    """The registry entry for ``name``; a :class:`UserError` naming the valid
    ones when there is none."""
    try:
        return OPTIMIZERS[name]
    except KeyError:
        valid = ", ".join(sorted(OPTIMIZERS))
        raise UserError(f"unknown optimizer {name!r}; valid names: {valid}") from None


def effective_settings(settings: OptimizerSettings) -> OptimizerSettings:
    """``settings`` with every field left ``None`` filled from the preset of
    its optimizer (unchanged for optimizers without a preset).

    Example::

        effective_settings(OptimizerSettings(name="apollo_mini")).scale  # 128.0
    """
    preset = get_optimizer(settings.name).preset
    if preset is None:
        return settings
    return settings.model_copy(
        update={
            "rank": settings.rank if settings.rank is not None else preset.rank,
            "scale_type": settings.scale_type if settings.scale_type is not None else preset.scale_type,
            "scale": settings.scale if settings.scale is not None else preset.scale,
        }
    )


def build_optimizer(
    named_params: Iterable[tuple[str, torch.nn.Parameter]],
    settings: OptimizerSettings,
    lr: float,
    seed: int,
) -> torch.optim.Optimizer:
    """The optimizer named by ``settings.name`` over the trainable parameters.

    Parameters with ``requires_grad=False`` are left out; a parameter passed
    twice under two names (tied weights) is optimised once, under its first
    name. The same ``seed`` gives bit-identical steps (at a fixed thread count).

    Example::

        opt = build_optimizer(model.named_parameters(), OptimizerSettings(), lr=1e-4, seed=0)
    """
    entry = get_optimizer(settings.name)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise UserError(f"learning rate must be a finite number > 0, got {lr!r}")
    trainable: list[tuple[str, torch.nn.Parameter]] = []
    seen_params: set[int] = set()
    seen_names: set[str] = set()
    for item in named_params:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], torch.Tensor)):
            raise TypeError(
                "build_optimizer takes (name, parameter) pairs, e.g. model.named_parameters(); "
                f"got {type(item).__name__}"
            )
        name, p = item
        if name in seen_names:
            raise ValueError(f"parameter name {name!r} passed twice")
        seen_names.add(name)
        if p.requires_grad and id(p) not in seen_params:
            seen_params.add(id(p))
            trainable.append((name, p))
    if not trainable:
        raise UserError("nothing to train: no parameter has requires_grad=True")
    return entry.build(trainable, settings, float(lr), int(seed))


def optimizer_state_bytes(opt: torch.optim.Optimizer, params: Iterable[torch.Tensor] | None = None) -> int:
    """Bytes of the tensors an optimizer holds per parameter: its state and,
    for APOLLO, the cached projection matrices.

    ``params`` restricts the count to those parameters (e.g. the 2-D
    matrices); by default every parameter counts.

    Example::

        optimizer_state_bytes(opt, [p for p in model.parameters() if p.ndim == 2])
    """
    params = None if params is None else list(params)
    wanted = None if params is None else {id(p) for p in params}
    total = 0
    for p, state in opt.state.items():
        if wanted is not None and id(p) not in wanted:
            continue
        total += sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
    if isinstance(opt, Apollo):
        total += opt.projection_bytes(params)
    return total
