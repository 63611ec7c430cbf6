"""Train one node into a task vector, and show what it changed.

    traitgraph train [SPECS_DIR] NODE [-o FILE] [--no-progress]

Without ``-o`` the vector goes into the task-vector cache under the node's
training hash, exactly where ``traitgraph build`` looks for it (a later build
is then a cache hit). A node that ``refines`` others trains on top of their
vectors, which must be built first.

Printed afterwards: where τ went, and two losses before and after (base vs
base + τ): the node's held-out eval cases (should drop) and general text
(should barely move). Training uses ``$TRAITGRAPH_TRAIN_THREADS`` torch
threads (default 1), like ``build``, so both produce the same bits.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("specs_dir", nargs="?", default="specs", help="specs directory (default: specs)")
    parser.add_argument("node", help="id of the node to train")
    parser.add_argument("-o", "--out", default=None, help="write τ here instead of into the cache")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--general-lines",
        type=int,
        default=48,
        metavar="N",
        help="general-text lines scored before/after (default 48; 0 skips it)",
    )


def _pct(before: float, after: float) -> str:
    return f"{100.0 * (after - before) / before:+.1f}%" if before else "n/a"


def check_vector_output(out: Path) -> None:
    """``-o FILE`` must name a file the vector can be written to; a :class:`UserError` naming ``-o`` otherwise.

    >>> check_vector_output(Path("/"))
    Traceback (most recent call last):
    ...
    traitgraph.errors.UserError: -o /: is a directory; give a file name, e.g. /pirate.safetensors
    """
    from traitgraph.errors import UserError

    if out.is_dir():
        raise UserError(f"-o {out}: is a directory; give a file name, e.g. {out / 'pirate.safetensors'}")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"-o {out}: cannot write there ({parent} is not a writable directory)")


def _monitor_line(record: dict, ran: int, budget: int) -> str:
    """One line on what the training monitor kept (see docs/training.md)."""
    best = next((c for c in record["checks"] if c["step"] == record["best_step"]), None)
    start = record["start"]
    stop = f"stopped early after {ran} of {budget} steps" if record["stopped_early"] else f"ran {ran} steps"
    if best is None:
        return f"monitor: {stop}; no check"
    return (
        f"monitor: kept step {best['step']} ({stop}); validation loss {start['validation']:.4f} -> "
        f"{best['validation']:.4f}, general-text probe {start['general']:.4f} -> {best['general']:.4f} "
        f"({_pct(start['general'], best['general'])}{'' if best['within_ceiling'] else ', over the ceiling'})"
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from traitgraph.atomic import sha256_file
    from traitgraph.builder.cache import VectorCache
    from traitgraph.builder.tasks import train_threads
    from traitgraph.compiler.base_model import load_model, resolve_base
    from traitgraph.compiler.data import load_general_text
    from traitgraph.compiler.train import eval_loss, train_node
    from traitgraph.compiler.weights import apply_task_vectors
    from traitgraph.errors import BuildError, UserError
    from traitgraph.graph import load_specs
    from traitgraph.graph.hashing import node_hashes, training_payload
    from traitgraph.graph.target import resolve_target

    if args.out:
        check_vector_output(Path(args.out))  # before minutes of training, not at the final rename
    spec = load_specs(args.specs_dir)
    if args.node not in spec.nodes:
        raise UserError(f"no node '{args.node}' in {spec.specs_dir}; nodes: {', '.join(sorted(spec.nodes))}")
    torch.set_num_threads(train_threads())
    base = resolve_base(spec.personality.base, spec.specs_dir)
    hashes = node_hashes(spec, base.fingerprint)
    cache = VectorCache()
    target = resolve_target(spec, args.node, base.fingerprint, hashes)

    parents = []
    for dep, dep_hash in target.parents:
        if not cache.is_fresh(dep_hash):
            raise BuildError(
                f"node '{args.node}' refines '{dep}', which is not built yet: "
                f"run `traitgraph train {args.specs_dir} {dep}` (or `traitgraph build`) first"
            )
        parents.append(cache.verify(dep_hash))
    out = Path(args.out) if args.out else cache.vector_path(hashes[args.node])

    # Before: the starting weights (base + parents).
    model, tokenizer = load_model(base)
    apply_task_vectors(model, parents)
    node = spec.nodes[args.node]
    cases = list(node.spec.eval)
    general: list[str] = []
    if args.general_lines > 0:
        rel = spec.personality.eval.general_text
        general = load_general_text(spec.specs_dir / rel if rel else None)[: args.general_lines]
    before_eval = eval_loss(model, tokenizer, cases) if cases else None
    before_general = eval_loss(model, tokenizer, general) if general else None

    progress = not args.no_progress and sys.stderr.isatty()
    with cache.writing() if args.out is None else contextlib.nullcontext():  # `cache gc` waits for the save
        meta = train_node(target, base, out, parent_vectors=parents, progress=progress)
        if args.out is None:
            cache.commit(hashes[args.node], args.node, training_payload(spec, args.node, base.fingerprint, hashes))

    apply_task_vectors(model, [out])
    start = "base+parents" if parents else "base"
    size_mb = os.path.getsize(out) / 1e6
    print(
        f"train:{args.node}: {meta.steps} steps, {meta.tokens} response tokens, {meta.seconds:.1f} s, "
        f"final loss {meta.final_loss:.4f} (oscillation {meta.oscillation:.2f})"
    )
    print(f"τ: {out} ({size_mb:.1f} MB, sha256 {sha256_file(out)[:12]})")
    if meta.monitor is not None:
        print(_monitor_line(meta.monitor, meta.steps, target.settings.steps))
    if before_eval is not None:
        after = eval_loss(model, tokenizer, cases)
        print(
            f"eval-case loss ({len(cases)} case{'s' if len(cases) != 1 else ''}):       {start} {before_eval:.4f} -> +τ {after:.4f} "
            f"({_pct(before_eval, after)})"
        )
    if before_general is not None:
        after = eval_loss(model, tokenizer, general)
        print(
            f"general-text loss ({len(general)} lines): {start} {before_general:.4f} -> +τ {after:.4f} "
            f"({_pct(before_general, after)})"
        )
    return 0
