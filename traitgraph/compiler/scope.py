"""Where a node may write: ``training.trainable`` globs over parameter names.

Only the parameters whose checkpoint name matches one of the globs
(:func:`fnmatch.fnmatchcase`: ``*``, ``?``, ``[5-9]``) are handed to the
optimizer and receive gradients; every other tensor keeps its start value
and so never appears in τ. A glob that matches nothing is a user mistake.

>>> [n for n, _ in select_trainable(named, ("model.layers.1.mlp.*",), "nodes/x.yaml: node 'x'")]  # doctest: +SKIP
['model.layers.1.mlp.gate_proj.weight', 'model.layers.1.mlp.up_proj.weight', 'model.layers.1.mlp.down_proj.weight']
"""

from __future__ import annotations

from fnmatch import fnmatchcase

import torch

from traitgraph.errors import UserError


def matching_names(names: list[str], patterns: tuple[str, ...]) -> list[str]:
    """The names matched by at least one glob, in their given order.

    >>> matching_names(["a.0.mlp.w", "a.0.attn.w", "a.1.mlp.w"], ("a.*.mlp.*",))
    ['a.0.mlp.w', 'a.1.mlp.w']
    """
    return [n for n in names if any(fnmatchcase(n, p) for p in patterns)]


def select_trainable(
    named: list[tuple[str, torch.nn.Parameter]], patterns: tuple[str, ...] | None, where: str
) -> list[tuple[str, torch.nn.Parameter]]:
    """The ``(name, parameter)`` pairs to train; the others stop taking gradients.

    ``patterns`` None: all of them. ``where`` (``nodes/x.yaml: node 'x'``)
    starts the error raised for a glob that matches no parameter.
    """
    if patterns is None:
        return named
    names = [n for n, _ in named]
    for i, pattern in enumerate(patterns):
        if not matching_names(names, (pattern,)):
            raise UserError(
                f"{where}, field training.trainable[{i}]: '{pattern}' matches no parameter of the base. "
                f"Parameter names look like: {', '.join(names[:3])}, ... ({len(names)} in all)"
            )
    chosen = set(matching_names(names, patterns))
    for name, p in named:
        p.requires_grad_(name in chosen)
    return [(n, p) for n, p in named if n in chosen]
