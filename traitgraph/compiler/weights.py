"""Weights at the edges of training: the start (base + parents), τ, and τ applied.

``W_start = W_base + Σ τ_parent`` (unscaled); ``τ = W_trained − W_start`` for
the tensors that changed. Tensors are read one at a time from safetensors, so
no second copy of the model is held in memory.

>>> start = StartWeights(base, [parent_tau])                     # doctest: +SKIP
>>> apply_start(model, start); ...; tau = task_vector(named, start, torch.float32)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from traitgraph.compiler.base_model import ResolvedBase
from traitgraph.compiler.task_vector import open_task_vector, read_task_vector_meta
from traitgraph.errors import BuildError


class StartWeights:
    """The weights training starts from: base checkpoint tensors plus parent task
    vectors, read one tensor at a time (no second copy of the model in memory).

    The same arithmetic builds the start when it is loaded into the model and
    when τ is taken, so τ is exactly ``trained - start`` in float32.
    """

    def __init__(self, base: ResolvedBase, parent_vectors: Sequence[Path] = ()):
        from safetensors import safe_open

        self.base = base
        self.files: dict[str, Path] = {}
        for f in sorted(Path(base.path).glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as h:
                for name in h.keys():
                    self.files[name] = f
        if not self.files:
            raise BuildError(f"base '{base.reference}': no safetensors weights in {base.path}")
        self.parents = [Path(p) for p in parent_vectors]
        self._parent_names: list[set[str]] = []
        for p in self.parents:
            meta = read_task_vector_meta(p)
            if meta.base_fingerprint != base.fingerprint:
                raise BuildError(
                    f"{p}: task vector of node '{meta.node_id}' was trained on base {meta.base_fingerprint[:19]}, "
                    f"not on this base ({base.fingerprint[:19]}); retrain it"
                )
            with open_task_vector(p) as tv:
                self._parent_names.append(set(tv.keys()))

    def names(self) -> set[str]:
        return set(self.files)

    def changed_by_parents(self) -> set[str]:
        return set().union(*self._parent_names) if self._parent_names else set()

    def tensor(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self.files[name]), framework="pt") as h:
            t = h.get_tensor(name).to(dtype)
        for p, names in zip(self.parents, self._parent_names):
            if name in names:
                with open_task_vector(p) as tv:
                    t = t + tv.get_tensor(name).to(dtype)
        return t


def trainable_parameters(model: torch.nn.Module, checkpoint_names: set[str]) -> list[tuple[str, torch.nn.Parameter]]:
    """``(name, parameter)`` pairs under the checkpoint's tensor names.

    ``named_parameters`` lists a tied weight once, under its first name
    (``model.embed_tokens.weight``; ``lm_head.weight`` is the same tensor), so
    τ never counts it twice. Every name must be a checkpoint tensor.
    """
    named = list(model.named_parameters())
    unknown = [n for n, _ in named if n not in checkpoint_names]
    if unknown:
        raise BuildError(
            "the model's parameters do not match the base checkpoint's tensor names: "
            + ", ".join(unknown[:5])
            + (" ..." if len(unknown) > 5 else "")
        )
    return named


def apply_start(model: torch.nn.Module, start: StartWeights) -> None:
    """Load the parents' task vectors into a freshly loaded base model."""
    params = dict(model.named_parameters())
    for name in sorted(start.changed_by_parents()):
        if name not in params:
            raise BuildError(f"a parent task vector holds '{name}', which the model does not have")
        with torch.no_grad():
            params[name].copy_(start.tensor(name, params[name].dtype))


def apply_task_vectors(model: torch.nn.Module, paths: Iterable[Path], alpha: float = 1.0) -> None:
    """``W += alpha · τ`` for each task vector file, in place (for evaluation)."""
    params = dict(model.named_parameters())
    for path in paths:
        with open_task_vector(path) as tv, torch.no_grad():
            for name in tv.keys():
                if name not in params:
                    raise BuildError(f"{path}: tensor '{name}' is not a parameter of the model")
                params[name].add_(tv.get_tensor(name).to(params[name].dtype), alpha=alpha)


def task_vector(
    named_params: list[tuple[str, torch.nn.Parameter]], start: StartWeights, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """τ = trained − start for every tensor that changed, in ``dtype``."""
    tau: dict[str, torch.Tensor] = {}
    for name, p in named_params:
        delta = p.detach().float() - start.tensor(name, torch.float32)
        if torch.any(delta != 0):
            tau[name] = delta.to(dtype)
    return tau
