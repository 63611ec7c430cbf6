"""Optimizers, chosen by the spec's name through a registry.

``apollo`` and ``apollo_mini`` are the two presets of APOLLO (Zhu et al. 2024,
arXiv:2412.05270, implemented in :mod:`.apollo`); ``adamw`` is the baseline.

Example::

    from traitgraph.compiler.optim import build_optimizer, optimizer_state_bytes
    opt = build_optimizer(model.named_parameters(), settings.optimizer, lr=1e-4, seed=0)
"""

from traitgraph.compiler.optim.apollo import PRESETS, Apollo, ApolloPreset
from traitgraph.compiler.optim.registry import (
    OPTIMIZERS,
    OptimizerEntry,
    build_optimizer,
    effective_settings,
    get_optimizer,
    optimizer_state_bytes,
)

__all__ = [
    "OPTIMIZERS",
    "PRESETS",
    "Apollo",
    "ApolloPreset",
    "OptimizerEntry",
    "build_optimizer",
    "effective_settings",
    "get_optimizer",
    "optimizer_state_bytes",
]
