"""Train one behaviour node into a task vector τ = W_trained − W_start.

``W_start`` is the base with the task vectors of the nodes this one
``refines`` added (unscaled); τ is this node's own change on top of them.

One loop, parametrised by the node's effective :class:`TrainingSettings`::

    batches   epoch-wise shuffle of the node's examples (seeded), plus
              ``replay.fraction`` of each batch from general text or other nodes
    loss      mean response-token NLL, context frozen or full (losses.py)
    step      linear warm-up -> optimizer from the registry (APOLLO-Mini by
              default) -> global grad-norm clipping
    guard     NaN/inf loss or gradient, or smoothed loss > divergence_factor ×
              its start: BuildError naming node and step; no vector is written
    output    τ for the tensors that changed, under the base checkpoint's names,
              in ``vector_dtype``, with a provenance record (save_task_vector)

**Determinism.** Same specs, same base, same seed and the *same torch thread
count* give a bit-identical τ (one thread and two differ in the last bits).
The caller fixes the thread count (``torch.set_num_threads``) before calling;
this module does not change it. The wall-clock ``seconds`` is returned but not
written into the file, so two identical runs give identical bytes.

>>> meta = train_node(load_specs("specs"), "listening", resolve_base("smollm2-135m-instruct"),
...                   Path("listening.safetensors"))            # doctest: +SKIP
>>> meta.final_loss, meta.oscillation                          # doctest: +SKIP
(1.02, 1.07)
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from traitgraph import __version__
from traitgraph.compiler.base_model import ResolvedBase, load_model
from traitgraph.compiler.data import (
    Batch,
    EncodedExample,
    EpochSampler,
    batches_in_order,
    collate,
    encode_example,
    encode_node_examples,
    encode_text,
    load_general_text,
    pad_id,
)
from traitgraph.compiler.device import (
    autocast,
    base_parameters,
    to_device,
    training_device,
    training_record,
)
from traitgraph.compiler.losses import response_logits, response_token_losses, token_nll
from traitgraph.compiler.task_vector import (
    TaskVectorMeta,
    open_task_vector,
    save_task_vector,
)
from traitgraph.errors import BuildError, UserError

#: Weight of the newest loss in the smoothed loss (an exponential moving average).
SMOOTHING = 0.3


# --------------------------------------------------------------------------- weights


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
            from traitgraph.compiler.task_vector import read_task_vector_meta

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
            + ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
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
        delta = p.detach().float().cpu() - start.tensor(name, torch.float32)
        if torch.any(delta != 0):
            tau[name] = delta.to(dtype)
    return tau


# --------------------------------------------------------------------------- data


def _replay_examples(spec, node_id: str, tokenizer, settings) -> list[EncodedExample]:
    """The replay pool of a node (empty when replay is off)."""
    if settings.replay.fraction <= 0:
        return []
    if settings.replay.source == "general":
        # The shipped text, as in the training hash (traitgraph.graph.hashing).
        pool = [encode_text(tokenizer, line, max_length=settings.max_length) for line in load_general_text()]
        pool = [ex for ex in pool if ex is not None]
    else:
        pool = [
            ex
            for other in sorted(spec.nodes)
            if other != node_id
            for ex in encode_node_examples(tokenizer, spec.nodes[other], max_length=settings.max_length)
        ]
    if not pool:
        raise UserError(
            f"node '{node_id}': replay source '{settings.replay.source}' has no examples; "
            "set `replay: fraction: 0` or use another source"
        )
    return pool


def replay_count(batch_size: int, fraction: float) -> int:
    """Rows of each batch taken from the replay pool (at least one when replay is on,
    and always at least one row of the node's own examples)."""
    if fraction <= 0:
        return 0
    return min(max(1, round(batch_size * fraction)), batch_size - 1)


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


# --------------------------------------------------------------------------- training


def _smoothed(curve: list[float]) -> list[float]:
    out: list[float] = []
    for x in curve:
        out.append(x if not out else (1 - SMOOTHING) * out[-1] + SMOOTHING * x)
    return out


def oscillation(curve: Sequence[float]) -> float:
    """max/min of the smoothed loss over the last third of training (1.0 = flat)."""
    smooth = _smoothed(list(curve))
    tail = smooth[len(smooth) - max(1, len(smooth) // 3) :]
    lo = min(tail)
    return float(max(tail) / lo) if lo > 0 else float("inf")


def _progress(total: int, node_id: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=f"train:{node_id}", unit="step", leave=False, dynamic_ncols=True,
        disable=not (enabled and sys.stderr.isatty()),
    )


def train_node(
    spec,
    node_id: str,
    base: ResolvedBase,
    out_path: Path,
    *,
    parent_vectors: Sequence[Path] = (),
    progress: bool = True,
    node_hash: str | None = None,
) -> TaskVectorMeta:
    """Train ``node_id`` of ``spec`` on ``base`` and write its task vector to ``out_path``.

    ``parent_vectors`` are the task vectors of the nodes it ``refines``
    (``spec.dependencies(node_id)``), in that order. ``node_hash`` defaults to
    the node's training hash (:func:`traitgraph.graph.hashing.node_hashes`).
    Raises :class:`BuildError` on divergence (and writes nothing).
    """
    from traitgraph.compiler.optim import effective_settings

    t0 = time.perf_counter()
    settings = spec.training_settings(node_id)
    deps = spec.dependencies(node_id)
    if len(parent_vectors) != len(deps):
        raise BuildError(
            f"node '{node_id}' refines {deps or 'nothing'}, so it needs {len(deps)} parent task vector(s); "
            f"got {len(parent_vectors)}"
        )
    if node_hash is None:
        from traitgraph.graph.hashing import node_hashes

        node_hash = node_hashes(spec, base.fingerprint)[node_id]

    record = training_record(settings, base_parameters(spec.personality.base, spec.specs_dir))
    model, tokenizer = load_model(base)
    start = StartWeights(base, parent_vectors)
    apply_start(model, start)
    with training_device(record.get("device", "cpu"), f"node '{node_id}'") as device:
        model.to(device)
        curve, tokens = _train_loop(spec, node_id, settings, model, tokenizer, start, device, progress)
    dtype = getattr(torch, record["vector_dtype"])
    tau = task_vector(trainable_parameters(model, start.names()), start, dtype)
    smooth = _smoothed(curve)
    meta = TaskVectorMeta(
        node_id=node_id,
        node_hash=node_hash,
        base_fingerprint=base.fingerprint,
        optimizer=effective_settings(settings.optimizer).model_dump(mode="json"),
        training=record,
        steps=len(curve),
        tokens=tokens,
        final_loss=smooth[-1],
        loss_curve=curve,
        oscillation=oscillation(curve),
        dtype=record["vector_dtype"],
        traitgraph_version=__version__,
        seconds=round(time.perf_counter() - t0, 3),
    )
    save_task_vector(out_path, tau, meta)
    return meta


def _train_loop(spec, node_id: str, settings, model, tokenizer, start: StartWeights, device, progress: bool):
    """The optimisation steps of :func:`train_node` on ``device``; returns (loss curve, tokens)."""
    from traitgraph.compiler.optim import build_optimizer

    node = spec.nodes[node_id]
    named = trainable_parameters(model, start.names())
    pad = pad_id(tokenizer)

    examples = encode_node_examples(tokenizer, node, max_length=settings.max_length)
    if not examples:
        raise UserError(f"{node.file}: node '{node_id}' has no training examples")
    replay = _replay_examples(spec, node_id, tokenizer, settings)
    n_replay = replay_count(settings.batch_size, settings.replay.fraction)
    n_node = settings.batch_size - n_replay

    curve: list[float] = []
    tokens = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        sampler = EpochSampler(len(examples), settings.seed)
        replay_sampler = EpochSampler(len(replay), settings.seed + 1) if replay else None
        opt = build_optimizer(named, settings.optimizer, lr=settings.learning_rate, seed=settings.seed)
        params = [p for _, p in named]
        model.train()
        bar = _progress(settings.steps, node_id, progress)
        try:
            for step in range(1, settings.steps + 1):
                if settings.warmup_steps > 0:  # linear warm-up, then constant
                    lr = settings.learning_rate * min(1.0, step / settings.warmup_steps)
                    for group in opt.param_groups:
                        group["lr"] = lr
                rows = [examples[i] for i in sampler.take(n_node)]
                if replay_sampler is not None:
                    rows += [replay[i] for i in replay_sampler.take(n_replay)]
                batch = to_device(collate(rows, pad), device)
                t_step = time.perf_counter()

                opt.zero_grad(set_to_none=True)
                with autocast(device):
                    logits = response_logits(model, batch, settings.context)
                loss = _weighted_loss(logits.float(), batch, n_node)
                value = float(loss.detach())
                _guard_value(node_id, step, "loss", value)
                loss.backward()
                del logits, loss
                max_norm = settings.grad_clip if settings.grad_clip is not None else math.inf
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
                _guard_value(node_id, step, "gradient norm", grad_norm)
                opt.step()

                curve.append(value)
                tokens += batch.n_tokens
                smooth = _smoothed(curve)
                if smooth[-1] > settings.divergence_factor * smooth[0]:
                    raise BuildError(
                        f"node '{node_id}': training diverged at step {step}/{settings.steps}: the smoothed "
                        f"loss {smooth[-1]:.3g} exceeds divergence_factor {settings.divergence_factor:g} × its "
                        f"start {smooth[0]:.3g}. Lower `learning_rate` (now {settings.learning_rate:g}) "
                        "or add `warmup_steps`; no task vector was written."
                    )
                rate = batch.n_tokens / max(time.perf_counter() - t_step, 1e-9)
                bar.set_postfix(loss=f"{value:.3f}", tok_s=f"{rate:.0f}", refresh=False)
                bar.update(1)
        finally:
            bar.close()
        del opt

    model.zero_grad(set_to_none=True)
    model.eval()
    return curve, tokens


def _guard_value(node_id: str, step: int, what: str, value: float) -> None:
    if not math.isfinite(value):
        raise BuildError(
            f"node '{node_id}': training diverged at step {step}: the {what} is {value}. "
            "Lower `learning_rate`, or keep `grad_clip` on; no task vector was written."
        )


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
    # Similar lengths together: less padding, same result.
    encoded.sort(key=len)
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for batch in batches_in_order(encoded, batch_size, pad_id(tokenizer)):
            total += float(response_token_losses(model, batch).sum())
            count += batch.n_tokens
    finally:
        model.train(was_training)
    return total / count
