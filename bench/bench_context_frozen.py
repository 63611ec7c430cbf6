"""Context-frozen vs full backprop: step time by context:response ratio, on SmolLM2.

    python bench/bench_context_frozen.py [--ratios 1 4 16] [--batch 8] [--response 24]
                                         [--repeats 2] [--threads 2] [--base smollm2-135m-instruct]

For each ratio r, a batch of ``--batch`` synthetic examples with ``r × response``
context tokens and ``--response`` response tokens runs forward + backward of
the response loss in both modes, side by side (same model, same batch,
alternating, after one global warm-up); the best of ``--repeats`` times is
reported (on a shared machine the minimum is the least disturbed figure, as
in ``timeit``) with the speedup full/frozen, in wall time and in CPU time of
this process. On a busy machine use ``--threads 1`` and read the CPU columns:
with one thread CPU time hardly depends on the load, while with several,
threads that spin waiting for a descheduled peer inflate it. Then a short real training run (frozen, the default
optimizer) at ratio 4 measures training throughput in response tokens per
second, optimizer step included.

The frozen mode skips the backward through the context entirely and runs the
context forward without building a graph, so its advantage grows with the
ratio (DESIGN.md: "backward work scales with the response, not the context").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from traitgraph.compiler.base_model import load_model, resolve_base  # noqa: E402
from traitgraph.compiler.data import EncodedExample, collate, pad_id  # noqa: E402
from traitgraph.compiler.losses import response_loss  # noqa: E402


def synthetic_batch(vocab: int, batch: int, context: int, response: int, pad: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch):
        ids = torch.randint(100, vocab, (context + response,), generator=g).tolist()
        rows.append(EncodedExample(tuple(ids[:context]), tuple(ids[context:])))
    return collate(rows, pad)


def time_step(model, batch, mode: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one forward + backward."""
    model.zero_grad(set_to_none=True)
    t0, c0 = time.perf_counter(), time.process_time()
    loss = response_loss(model, batch, mode)
    loss.backward()
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    model.zero_grad(set_to_none=True)
    return dt, dc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="smollm2-135m-instruct")
    ap.add_argument("--ratios", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--response", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=4)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    base = resolve_base(args.base)
    model, tok = load_model(base)
    model.train()
    pad = pad_id(tok)
    vocab = model.config.vocab_size
    print(
        f"base {args.base}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
        f"{args.threads} threads, batch {args.batch}, response {args.response} tokens, "
        f"best of {args.repeats}\n"
    )
    warm = synthetic_batch(vocab, 2, args.response, args.response, pad)
    for mode in ("full", "frozen"):
        time_step(model, warm, mode)  # allocator and kernel warm-up
    print(f"{'':>13} {'wall s/step':^30} {'CPU s/step':^30}")
    print(f"{'ratio':>5} {'context':>7} " + f"{'full':>9} {'frozen':>9} {'speedup':>9}  " * 2)
    for ratio in args.ratios:
        batch = synthetic_batch(vocab, args.batch, ratio * args.response, args.response, pad, seed=ratio)
        times: dict[str, list[tuple[float, float]]] = {"full": [], "frozen": []}
        for _ in range(args.repeats):
            for mode in ("full", "frozen"):
                times[mode].append(time_step(model, batch, mode))
        cells = []
        for k in (0, 1):  # wall, CPU
            full = min(t[k] for t in times["full"])
            frozen = min(t[k] for t in times["frozen"])
            cells.append(f"{full:>9.2f} {frozen:>9.2f} {full / frozen:>8.2f}x")
        print(f"{ratio:>4}:1 {ratio * args.response:>7} " + "  ".join(cells), flush=True)

    # Training throughput: the real loop's step (frozen loss, optimizer, clipping) at ratio 4.
    from traitgraph.compiler.optim import build_optimizer
    from traitgraph.graph.schema import TrainingSettings

    settings = TrainingSettings()
    opt = build_optimizer(
        list(model.named_parameters()), settings.optimizer, lr=settings.learning_rate, seed=settings.seed
    )
    batch = synthetic_batch(vocab, args.batch, 4 * args.response, args.response, pad, seed=99)
    params = [p for p in model.parameters()]
    dts, dcs = [], []
    for step in range(args.train_steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        response_loss(model, batch, settings.context).backward()
        torch.nn.utils.clip_grad_norm_(params, settings.grad_clip or float("inf"))
        opt.step()
        if step:  # the first step allocates optimizer state
            dts.append(time.perf_counter() - t0)
            dcs.append(time.process_time() - c0)
    dt, dc = min(dts), min(dcs)
    print(
        f"\ntraining ({settings.optimizer.name}, context {settings.context}, ratio 4:1, best of "
        f"{len(dts)} steps): {dt:.2f} s/step wall, {dc:.2f} s/step CPU; "
        f"{batch.n_tokens / dt:.0f} response tokens/s wall "
        f"({batch.n_tokens * 5 / dt:.0f} tokens/s counting the context)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
