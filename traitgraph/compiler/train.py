"""Train one behaviour node into a task vector τ = W_trained − W_start.

``W_start`` is the base with the task vectors of the nodes this one
``refines`` added (unscaled); τ is this node's own change on top of them.

The node arrives resolved: a :class:`~traitgraph.graph.target.TrainingTarget`
holds its examples, effective settings, training hash, parents and replay
pool, so this module never reads specs or computes hashes. One loop,
parametrised by the target's :class:`TrainingSettings`::

    batches   epoch-wise shuffle of the node's examples (seeded), plus
              ``replay.fraction`` of each batch from the target's replay pool
    loss      mean response-token NLL, context frozen or full (losses.py)
    step      linear warm-up -> optimizer from the registry (APOLLO-Mini by
              default) -> global grad-norm clipping
    guard     NaN/inf loss or gradient, or smoothed loss > divergence_factor ×
              its start: BuildError naming node and step; no vector is written
    monitor   optional (``training.monitor``): every k steps score held-out
              examples and a general-text probe, keep the best step's weights,
              stop early (monitor.py)
    scope     optional (``training.trainable``): only parameters matching the
              globs train and appear in τ (scope.py)
    anchor    optional (``training.anchor``): an L2 pull toward the start after
              each step, and/or KL to the start model on replay rows (anchor.py)
    output    τ for the tensors that changed, under the base checkpoint's names,
              in ``vector_dtype``, with a provenance record (save_task_vector)

**Determinism.** Same target, same base and the *same torch thread count*
give a bit-identical τ (one thread and two differ in the last bits). The
caller fixes the thread count (``torch.set_num_threads``) before calling;
this module does not change it. The wall-clock ``seconds`` is returned but not
written into the file, so two identical runs give identical bytes.

>>> target = resolve_target(load_specs("specs"), "listening", base.fingerprint)  # doctest: +SKIP
>>> meta = train_node(target, base, Path("listening.safetensors"))               # doctest: +SKIP
>>> meta.final_loss, meta.oscillation                                           # doctest: +SKIP
(1.02, 1.07)
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from traitgraph import __version__
from traitgraph.compiler.anchor import Anchor
from traitgraph.compiler.base_model import ResolvedBase, load_model
from traitgraph.compiler.curve import SMOOTHING, LossCurve, oscillation  # noqa: F401 (re-exported)
from traitgraph.compiler.data import (
    Batch,
    EncodedExample,
    EpochSampler,
    collate,
    encode_example,
    encode_examples,
    encode_text,
    pad_id,
)
from traitgraph.compiler.device import autocast, base_parameters_of, to_device, training_device, training_record
from traitgraph.compiler.losses import response_logits, token_nll
from traitgraph.compiler.monitor import Monitor, mean_response_loss
from traitgraph.compiler.scope import select_trainable
from traitgraph.compiler.task_vector import TaskVectorMeta, save_task_vector
from traitgraph.compiler.weights import (  # noqa: F401 (re-exported for callers of the old layout)
    StartWeights,
    apply_start,
    apply_task_vectors,
    task_vector,
    trainable_parameters,
)
from traitgraph.errors import BuildError, UserError
from traitgraph.graph.replay import BASE_REPLY_TOKENS, LocatedExample
from traitgraph.graph.schema import Example, TrainingSettings
from traitgraph.graph.target import TrainingTarget

# --------------------------------------------------------------------------- data


def replay_count(batch_size: int, fraction: float) -> int:
    """Rows of each batch taken from the replay pool (at least one when replay is on,
    and always at least one row of the node's own examples).

    >>> replay_count(8, 0.25), replay_count(4, 0.01), replay_count(4, 0.0)
    (2, 1, 0)
    """
    if fraction <= 0:
        return 0
    return min(max(1, round(batch_size * fraction)), batch_size - 1)


def encode_replay(target: TrainingTarget, tokenizer, replies: Sequence[str] = ()) -> list[EncodedExample]:
    """The target's replay pool as token rows (text lines cut to ``max_length``; replay
    prompts paired with ``replies``, the base's answers to them)."""
    max_length = target.settings.max_length
    if target.replay.prompts:
        pairs = [
            LocatedExample(Example(context=p, response=r), where)
            for p, r, where in zip(target.replay.prompts, replies, target.replay.prompt_origins, strict=True)
            if r
        ]
        if not pairs:
            raise BuildError(
                f"{target.node_file}: node '{target.node_id}', field training.replay: the base answered none of "
                f"the {len(replies)} replay prompts (every greedy reply was empty); use `source: general`"
            )
        return encode_examples(tokenizer, pairs, max_length=max_length)
    if target.replay.text:
        encoded = [encode_text(tokenizer, line, max_length=max_length) for line in target.replay.text]
        return [ex for ex in encoded if ex is not None]
    return encode_examples(tokenizer, target.replay.examples, max_length=max_length)


@dataclass
class BatchStream:
    """Each step's batch: ``n_node`` rows of the node's examples, then ``n_replay``
    replay rows, each drawn epoch-wise from its own seeded sampler."""

    examples: list[EncodedExample]
    replay: list[EncodedExample]
    n_node: int
    n_replay: int
    pad: int
    seed: int

    def __post_init__(self) -> None:
        self.sampler = EpochSampler(len(self.examples), self.seed)
        self.replay_sampler = EpochSampler(len(self.replay), self.seed + 1) if self.replay else None

    def next_rows(self) -> list[EncodedExample]:
        rows = [self.examples[i] for i in self.sampler.take(self.n_node)]
        if self.replay_sampler is not None:
            rows += [self.replay[i] for i in self.replay_sampler.take(self.n_replay)]
        return rows

    def next_batch(self, device=None) -> Batch:
        batch = collate(self.next_rows(), self.pad)
        return batch if device is None else to_device(batch, device)


def batch_stream(target: TrainingTarget, tokenizer, replies: Sequence[str] = ()) -> BatchStream:
    """The target's examples and replay pool, tokenised, as a :class:`BatchStream`.

    A too-long example is a :class:`UserError` naming its file, node and index.
    """
    settings = target.settings
    examples = encode_examples(tokenizer, target.examples, max_length=settings.max_length)
    if not examples:
        raise UserError(f"{target.node_file}: node '{target.node_id}' has no training examples")
    replay = encode_replay(target, tokenizer, replies) if settings.replay.fraction > 0 else []
    n_replay = replay_count(settings.batch_size, settings.replay.fraction) if replay else 0
    return BatchStream(examples, replay, settings.batch_size - n_replay, n_replay, pad_id(tokenizer), settings.seed)


def _weighted_loss(logits: torch.Tensor, batch: Batch, n_node: int) -> torch.Tensor:
    """Mean token NLL of the node's rows and of the replay rows, weighted by their share of rows."""
    nll = token_nll(logits, batch)  # (B, Tr)
    mask = batch.response_mask
    b = nll.shape[0]
    if n_node == b:
        return nll.sum() / mask.sum().clamp(min=1)
    node = nll[:n_node].sum() / mask[:n_node].sum().clamp(min=1)
    replay = nll[n_node:].sum() / mask[n_node:].sum().clamp(min=1)
    return (n_node * node + (b - n_node) * replay) / b


# --------------------------------------------------------------------------- the step loop


def _progress(total: int, node_id: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=f"train:{node_id}",
        unit="step",
        leave=False,
        dynamic_ncols=True,
        disable=not (enabled and sys.stderr.isatty()),
    )


def _guard_value(node_id: str, step: int, what: str, value: float) -> None:
    if not math.isfinite(value):
        raise BuildError(
            f"node '{node_id}': training diverged at step {step}: the {what} is {value}. "
            "Lower `learning_rate`, or keep `grad_clip` on; no task vector was written."
        )


def _guard_divergence(node_id: str, step: int, curve: LossCurve, settings: TrainingSettings) -> None:
    first, last = curve.smoothed[0], curve.smoothed[-1]
    if last > settings.divergence_factor * first:
        raise BuildError(
            f"node '{node_id}': training diverged at step {step}/{settings.steps}: the smoothed "
            f"loss {last:.3g} exceeds divergence_factor {settings.divergence_factor:g} × its "
            f"start {first:.3g}. Lower `learning_rate` (now {settings.learning_rate:g}) "
            "or add `warmup_steps`; no task vector was written."
        )


def _set_warmup_lr(opt, settings: TrainingSettings, step: int) -> None:
    """Linear warm-up over ``warmup_steps``, then the constant peak rate."""
    if settings.warmup_steps > 0:
        lr = settings.learning_rate * min(1.0, step / settings.warmup_steps)
        for group in opt.param_groups:
            group["lr"] = lr


def _step(
    model,
    opt,
    named: list,
    batch: Batch,
    n_node: int,
    node_id: str,
    step: int,
    settings: TrainingSettings,
    anchor: Anchor | None = None,
) -> float:
    """One optimizer step on ``batch``; returns the loss before the step (anchor term included)."""
    params = [p for _, p in named]
    opt.zero_grad(set_to_none=True)
    with autocast(batch.input_ids.device):
        logits = response_logits(model, batch, settings.context)
    logits = logits.float()
    loss = _weighted_loss(logits, batch, n_node)
    kl = anchor.kl_term(logits, batch, n_node, settings.context) if anchor is not None else None
    if kl is not None:
        loss = loss + kl
    value = float(loss.detach())
    _guard_value(node_id, step, "loss", value)
    loss.backward()
    del logits, loss
    max_norm = settings.grad_clip if settings.grad_clip is not None else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    _guard_value(node_id, step, "gradient norm", grad_norm)
    opt.step()
    if anchor is not None:
        anchor.pull(named)
    return value


def run_steps(
    model,
    named: list,
    stream: BatchStream,
    target: TrainingTarget,
    *,
    progress: bool,
    monitor: Monitor | None = None,
    anchor: Anchor | None = None,
) -> tuple[LossCurve, int]:
    """The training loop (see module doc): returns the loss curve and the response tokens seen.

    With a ``monitor``, the weights left in the model are the kept check's.
    """
    from traitgraph.compiler.optim import build_optimizer

    settings, node_id = target.settings, target.node_id
    curve, tokens = LossCurve(), 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        opt = build_optimizer(named, settings.optimizer, lr=settings.learning_rate, seed=settings.seed)
        model.train()
        if monitor is not None:
            monitor.begin(model)
        bar = _progress(settings.steps, node_id, progress)
        try:
            for step in range(1, settings.steps + 1):
                _set_warmup_lr(opt, settings, step)
                batch = stream.next_batch(next(model.parameters()).device)
                t_step = time.perf_counter()
                value = _step(model, opt, named, batch, stream.n_node, node_id, step, settings, anchor)
                curve.add(value)
                tokens += batch.n_tokens
                _guard_divergence(node_id, step, curve, settings)
                rate = batch.n_tokens / max(time.perf_counter() - t_step, 1e-9)
                bar.set_postfix(loss=f"{value:.3f}", tok_s=f"{rate:.0f}", refresh=False)
                bar.update(1)
                if monitor is not None and monitor.due(step, settings.steps) and monitor.check(model, step, named):
                    break
        finally:
            bar.close()
        del opt
    if monitor is not None:
        monitor.restore(named)
    return curve, tokens


# --------------------------------------------------------------------------- one node


def _base_replies(model, tokenizer, target: TrainingTarget, base: ResolvedBase) -> list[str]:
    """The base's answers to the target's replay prompts (none unless ``replay.source: base_replies``)."""
    if not target.replay.prompts or target.settings.replay.fraction <= 0:
        return []
    from traitgraph.compiler.base_replies import base_replies

    return base_replies(
        model, tokenizer, target.replay.prompts, fingerprint=base.fingerprint, max_new_tokens=BASE_REPLY_TOKENS
    )


def _check_parents(target: TrainingTarget, parent_vectors: Sequence[Path]) -> None:
    deps = target.parent_ids
    if len(parent_vectors) != len(deps):
        raise BuildError(
            f"node '{target.node_id}' refines {deps or 'nothing'}, so it needs {len(deps)} parent task "
            f"vector(s); got {len(parent_vectors)}"
        )


def build_anchor(target: TrainingTarget, base: ResolvedBase, start: StartWeights, named: list) -> Anchor | None:
    """The target's anchor (None when off); a KL anchor loads a frozen copy of the start model."""
    settings = target.settings.anchor
    if settings is None:
        return None
    reference = None
    if settings.kl > 0:
        reference, _ = load_model(base)
        apply_start(reference, start)
        reference.eval().requires_grad_(False)
    return Anchor(settings, named, reference)


def build_monitor(target: TrainingTarget, tokenizer) -> Monitor | None:
    """The target's monitor, its held-out sets tokenised (None when the monitor is off)."""
    settings = target.settings
    if settings.monitor is None:
        return None
    validation = encode_examples(tokenizer, target.validation, max_length=settings.max_length)
    probe = [encode_text(tokenizer, line, max_length=settings.max_length) for line in target.probe_text]
    probe = [ex for ex in probe if ex is not None]
    if not validation or not probe:
        raise BuildError(f"node '{target.node_id}': the monitor has nothing to score (validation or probe empty)")
    return Monitor(settings.monitor, validation, probe, pad_id(tokenizer))


def _meta(
    target: TrainingTarget,
    base: ResolvedBase,
    curve: LossCurve,
    tokens: int,
    seconds: float,
    monitor: Monitor | None = None,
    record: dict | None = None,
) -> TaskVectorMeta:
    from traitgraph.compiler.optim import effective_settings

    settings = target.settings
    record = record or settings.record()
    return TaskVectorMeta(
        node_id=target.node_id,
        node_hash=target.training_hash,
        base_fingerprint=base.fingerprint,
        optimizer=effective_settings(settings.optimizer).model_dump(mode="json"),
        training=record,
        steps=len(curve),
        tokens=tokens,
        final_loss=curve.smoothed[-1],
        loss_curve=curve.raw,
        oscillation=oscillation(curve.raw),
        dtype=record["vector_dtype"],
        traitgraph_version=__version__,
        seconds=round(seconds, 3),
        monitor=monitor.record() if monitor is not None else None,
    )


def train_node(
    target: TrainingTarget,
    base: ResolvedBase,
    out_path: Path,
    *,
    parent_vectors: Sequence[Path] = (),
    progress: bool = True,
) -> TaskVectorMeta:
    """Train ``target`` on ``base`` and write its task vector to ``out_path``.

    ``parent_vectors`` are the task vectors of the nodes it ``refines``, in
    the order of ``target.parents``. Raises :class:`BuildError` on divergence
    (and writes nothing), :class:`UserError` on a too-long example.
    """
    t0 = time.perf_counter()
    _check_parents(target, parent_vectors)
    model, tokenizer = load_model(base)
    replies = _base_replies(model, tokenizer, target, base)  # before the parents: the base's own answers
    start = StartWeights(base, parent_vectors)
    apply_start(model, start)
    where = f"{target.node_file}: node '{target.node_id}'"
    named = select_trainable(trainable_parameters(model, start.names()), target.settings.trainable, where)
    stream = batch_stream(target, tokenizer, replies)
    monitor = build_monitor(target, tokenizer)
    anchor = build_anchor(target, base, start, named)
    record = training_record(target.settings, base_parameters_of(base))  # device, precision, vector dtype
    with training_device(record.get("device", "cpu"), where) as device:
        model.to(device)
        curve, tokens = run_steps(model, named, stream, target, progress=progress, monitor=monitor, anchor=anchor)
    model.zero_grad(set_to_none=True)
    model.eval()
    tau = task_vector(named, start, getattr(torch, record["vector_dtype"]))
    meta = _meta(target, base, curve, tokens, time.perf_counter() - t0, monitor, record)
    save_task_vector(out_path, tau, meta)
    return meta


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def eval_loss(model, tokenizer, items: Iterable, *, batch_size: int = 8, max_length: int = 4096) -> float:
    """Mean per-token response loss over examples, eval cases or plain text lines.

    An :class:`Example`/:class:`EvalCase` is scored on its response given its
    context (its ``rejected`` reply is ignored); a ``str`` is scored as plain
    text (every token after the first).

    >>> eval_loss(model, tok, spec.nodes["listening"].spec.eval)     # doctest: +SKIP
    1.84
    """
    encoded: list[EncodedExample] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            ex = encode_text(tokenizer, item, max_length=max_length)
            if ex is not None:
                encoded.append(ex)
        else:
            encoded.append(encode_example(tokenizer, item, max_length=max_length, where=f"item {i}"))
    if not encoded:
        raise UserError("eval_loss: nothing to score")
    return mean_response_loss(model, encoded, pad_id(tokenizer), batch_size)
