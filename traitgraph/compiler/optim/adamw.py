"""AdamW, the baseline: ``torch.optim.AdamW`` (Loshchilov & Hutter, "Decoupled
Weight Decay Regularization", ICLR 2019, arXiv:1711.05101).

Two full-size moments per parameter: the memory APOLLO is measured against.
APOLLO-only settings (``rank``, ``scale_type``, ``scale``, ``update_proj_gap``,
``norm_growth_limit``) do not apply and are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from traitgraph.graph.schema import OptimizerSettings


def build_adamw(
    named_params: Iterable[tuple[str, torch.nn.Parameter]],
    settings: OptimizerSettings,
    lr: float,
    seed: int,
) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over ``named_params`` (``seed`` is unused: AdamW
    draws nothing at random).

    Example::

        opt = build_adamw(model.named_parameters(), OptimizerSettings(name="adamw"), 1e-4, 0)
    """
    return torch.optim.AdamW(
        list(named_params),
        lr=lr,
        betas=tuple(settings.betas),
        eps=settings.eps,
        weight_decay=settings.weight_decay,
    )
