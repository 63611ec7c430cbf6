"""Training defences side by side: what one node learns and what the model forgets.

    python bench/bench_training.py [SPECS_DIR] --node voice
        [--configs default,budget,monitor,scope,anchor,all] [--threads 2] [--general-lines 48]

Trains one node of the specs under each configuration (from the node's own
effective settings, changed only as named) and prints, for each: the node's
held-out eval-case loss and the retention general-text loss (the shipped
``general_text.txt``), before and after adding τ, the steps run and kept,
‖τ‖ and how many tensors τ touches, and the wall time.

==========  =============================================================
default     the node's settings as they are
budget      learning_rate 1e-4, 32 steps
monitor     budget + ``monitor: {every: 4}``
scope       budget + ``trainable``: the MLPs of the upper half of the layers
anchor      budget + ``anchor: {l2: 0.05}``
all         budget + monitor + scope + anchor
==========  =============================================================

Nothing is written to the cache; vectors go to a temporary directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from traitgraph.compiler.base_model import load_model, resolve_base
from traitgraph.compiler.data import load_general_text
from traitgraph.compiler.task_vector import load_task_vector
from traitgraph.compiler.train import eval_loss, train_node
from traitgraph.compiler.weights import apply_task_vectors
from traitgraph.graph import load_specs
from traitgraph.graph.replay import general_probe, located_examples
from traitgraph.graph.schema import AnchorSettings, MonitorSettings
from traitgraph.graph.target import TrainingTarget, resolve_target, validation_split

CONFIGS = ("default", "budget", "monitor", "scope", "anchor", "all")


def upper_mlps(n_layers: int) -> tuple[str, ...]:
    """Globs for the MLPs of the upper half of ``n_layers`` layers.

    >>> upper_mlps(4)
    ('model.layers.2.mlp.*', 'model.layers.3.mlp.*')
    """
    return tuple(f"model.layers.{i}.mlp.*" for i in range(n_layers // 2, n_layers))


def configured(target: TrainingTarget, node, name: str, n_layers: int) -> TrainingTarget:
    """``target`` with the settings of configuration ``name`` (see module doc)."""
    if name == "default":
        return target
    update: dict = {"learning_rate": 1e-4, "steps": 32}
    if name in ("monitor", "all"):
        update["monitor"] = MonitorSettings(every=4)
    if name in ("scope", "all"):
        update["trainable"] = upper_mlps(n_layers)
    if name in ("anchor", "all"):
        update["anchor"] = AnchorSettings(l2=0.05)
    settings = target.settings.model_copy(update=update)
    examples, validation = located_examples(node), ()
    if settings.monitor is not None:
        examples, validation = validation_split(examples, settings.monitor.validation_fraction, settings.seed)
    return dataclasses.replace(
        target, settings=settings, examples=examples, validation=validation, probe_text=general_probe(settings)
    )


def measure(target: TrainingTarget, base, cases, general, work: Path) -> dict:
    """Train ``target`` and score base vs base + τ."""
    out = work / f"{time.monotonic_ns()}.safetensors"
    t0 = time.perf_counter()
    meta = train_node(target, base, out, progress=False)
    seconds = time.perf_counter() - t0
    model, tok = load_model(base)
    before = eval_loss(model, tok, cases), eval_loss(model, tok, general)
    apply_task_vectors(model, [out])
    after = eval_loss(model, tok, cases), eval_loss(model, tok, general)
    tau, _ = load_task_vector(out)
    return {
        "eval": before[0],
        "eval_after": after[0],
        "general": before[1],
        "general_after": after[1],
        "steps": meta.steps,
        "kept": (meta.monitor or {}).get("best_step") or meta.steps,
        "norm": float(torch.sqrt(sum((t.float() ** 2).sum() for t in tau.values()))),
        "tensors": len(tau),
        "seconds": seconds,
    }


def pct(before: float, after: float) -> str:
    return f"{100 * (after - before) / before:+.1f}%"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("specs_dir", nargs="?", default="specs")
    parser.add_argument("--node", required=True)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--general-lines", type=int, default=48)
    args = parser.parse_args(argv)
    names = [c for c in args.configs.split(",") if c]
    if unknown := [c for c in names if c not in CONFIGS]:
        parser.error(f"unknown configuration(s) {unknown}; choose from {', '.join(CONFIGS)}")
    torch.set_num_threads(args.threads)
    spec = load_specs(args.specs_dir)
    base = resolve_base(spec.personality.base, spec.specs_dir)
    node = spec.nodes[args.node]
    target = resolve_target(spec, args.node, base.fingerprint)
    n_layers = load_model(base)[0].config.num_hidden_layers
    cases, general = list(node.spec.eval), load_general_text()[: args.general_lines]
    print(
        f"node {args.node} on {spec.personality.base}; {len(cases)} eval cases, {len(general)} general lines; "
        f"{args.threads} threads"
    )
    print(
        f"{'config':<9} {'steps':>5} {'kept':>4} {'eval loss':>19} {'general loss':>20} {'|tau|':>8} "
        f"{'tensors':>7} {'s':>6}"
    )
    with tempfile.TemporaryDirectory() as work:
        for name in names:
            r = measure(configured(target, node, name, n_layers), base, cases, general, Path(work))
            print(
                f"{name:<9} {r['steps']:>5} {r['kept']:>4} {r['eval_after']:>8.4f} {pct(r['eval'], r['eval_after']):>9} "
                f"{r['general_after']:>9.4f} {pct(r['general'], r['general_after']):>9} {r['norm']:>8.4f} "
                f"{r['tensors']:>7} {r['seconds']:>6.1f}"
            )


if __name__ == "__main__":
    main()
