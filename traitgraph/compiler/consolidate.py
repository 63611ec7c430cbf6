"""Consolidation after linking: distil the linked model toward each node alone.

Linking adds the nodes' task vectors into one checkpoint, and the merge
loses part of each behaviour. A few steps of distillation win some back::

    student   the linked checkpoint; only the tensors some node's τ changed
              train (what linking wrote), every other one keeps the base's value
    node i    on node i's own contexts, KL(p_{base+w_i·τ_i} ‖ p_student) on the
              response tokens: the node *alone*, at its link weight, is the teacher
    general   on general text, KL(p_base ‖ p_student): the base is the teacher,
              so what the base knew is held (weight ``general_weight``)

Each step takes one node in turn (round robin over the sources), a batch of
its examples and a batch of general lines. One teacher model is kept: the
base, with τ_i swapped in exactly (saved tensors copied back, never
subtracted) when node i's turn comes.

>>> curve = consolidate(student, teacher, sources, general, ConsolidateSettings(steps=8))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from traitgraph.compiler.anchor import kl_to_reference
from traitgraph.compiler.data import Batch, EncodedExample, EpochSampler, collate
from traitgraph.compiler.losses import response_logits
from traitgraph.compiler.task_vector import open_task_vector
from traitgraph.errors import BuildError


@dataclass(frozen=True)
class ConsolidateSettings:
    """How long and how hard to distil."""

    steps: int = 8
    learning_rate: float = 1e-5
    batch_size: int = 8
    """Rows of a node's examples per step (and as many general lines)."""
    general_weight: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class Source:
    """One node to distil from: its task vector and its examples (as token rows)."""

    node_id: str
    tau: Path
    examples: list[EncodedExample]
    weight: float = 1.0
    """The node's link weight: the teacher is base + weight · τ."""


class Teacher:
    """The base model with at most one task vector applied at a time (exactly)."""

    def __init__(self, model):
        self.model = model.eval().requires_grad_(False)
        self.params = dict(model.named_parameters())
        self.saved: dict[str, torch.Tensor] = {}
        self.current: tuple[Path | None, float] = (None, 0.0)

    @torch.no_grad()
    def use(self, tau: Path | None, weight: float = 1.0) -> None:
        """Switch to ``base + weight · τ`` (``tau`` None: the base)."""
        if (tau, weight) == self.current or (tau is None and self.current[0] is None):
            return
        for name, t in self.saved.items():
            self.params[name].copy_(t)
        self.saved = {}
        if tau is not None:
            with open_task_vector(tau) as tv:
                for name in tv.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                    if name not in self.params:
                        raise BuildError(f"{tau}: tensor '{name}' is not a parameter of the base")
                    self.saved[name] = self.params[name].detach().clone()
                    self.params[name].add_(tv.get_tensor(name).to(self.params[name].dtype), alpha=weight)
        self.current = (tau, weight)


def distillation_kl(student, teacher: Teacher, source: Source | None, batch: Batch) -> torch.Tensor:
    """KL(teacher ‖ student) over the response tokens of ``batch``; teacher = base + w·τ of
    ``source`` (the base when None)."""
    teacher.use(source.tau if source else None, source.weight if source else 1.0)
    with torch.no_grad():
        target = response_logits(teacher.model, batch, "frozen")
    return kl_to_reference(response_logits(student, batch, "frozen"), target, batch.response_mask)


def written_tensors(sources: Sequence[Source]) -> set[str]:
    """Names of the tensors at least one source's task vector changes: what linking wrote."""
    names: set[str] = set()
    for source in sources:
        with open_task_vector(source.tau) as tv:
            names.update(tv.keys())
    return names


def consolidate(
    student,
    teacher: Teacher,
    sources: Sequence[Source],
    general: Sequence[EncodedExample],
    pad: int,
    settings: ConsolidateSettings,
    on_step: Callable[[int, int, float], None] | None = None,
) -> list[float]:
    """Distil ``student`` in place (see module doc); returns the loss per step.

    ``on_step(step, steps, loss)`` is called after each step (progress)."""
    from traitgraph.compiler.optim import build_optimizer
    from traitgraph.graph.schema import OptimizerSettings

    if not sources or not general:
        raise BuildError("consolidate: no node to distil from, or no general text")
    samplers = [EpochSampler(len(s.examples), settings.seed + i) for i, s in enumerate(sources)]
    general_sampler = EpochSampler(len(general), settings.seed + len(sources))
    written = written_tensors(sources)
    named = [(n, p) for n, p in student.named_parameters() if n in written]
    for name, p in student.named_parameters():
        p.requires_grad_(name in written)
    opt = build_optimizer(named, OptimizerSettings(name="adamw"), lr=settings.learning_rate, seed=settings.seed)
    student.train()
    curve: list[float] = []
    for step in range(settings.steps):
        i = step % len(sources)
        node_batch = collate([sources[i].examples[j] for j in samplers[i].take(settings.batch_size)], pad)
        general_batch = collate([general[j] for j in general_sampler.take(settings.batch_size)], pad)
        opt.zero_grad(set_to_none=True)
        loss = distillation_kl(student, teacher, sources[i], node_batch)
        loss = loss + settings.general_weight * distillation_kl(student, teacher, None, general_batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise BuildError(f"consolidate: the loss is {value} at step {step + 1}; lower the learning rate")
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        opt.step()
        curve.append(value)
        if on_step is not None:
            on_step(step + 1, settings.steps, value)
    student.eval()
    return curve


@torch.no_grad()
def mean_kl(
    student, teacher: Teacher, source: Source | None, rows: Sequence[EncodedExample], pad: int, batch_size: int = 8
) -> float:
    """KL(teacher ‖ student) per response token over ``rows`` (teacher as in :func:`distillation_kl`),
    ``batch_size`` rows at a time, for reporting.

    >>> mean_kl(linked, teacher, voice_source, voice_source.examples, pad)   # doctest: +SKIP
    0.31
    """
    total, tokens = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = collate(list(rows[start : start + batch_size]), pad)
        n = int(batch.response_mask.sum())
        total += float(distillation_kl(student, teacher, source, batch)) * n
        tokens += n
    return total / max(tokens, 1)
