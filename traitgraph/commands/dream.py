"""Dream new training examples for a node, with the base as a few-shot teacher.

    traitgraph dream [SPECS_DIR] NODE [-n 16] [--shots 4] [--candidates 48]
                     [--max-new-tokens 64] [--seed 0] [--generator DIR] [-o FILE] [--force]

Contexts come from a walk of the graph: the user messages of the nodes this
one is ``related`` to or ``conflicts`` with, alone and joined with one of the
node's own (never an eval case's). The teacher (the personality's base, or
the local Hugging Face directory ``--generator``) sees the node's description
and ``--shots`` of its examples as earlier turns and replies greedily; each
reply is scored by how much the demonstrations, rather than the base's habits,
wrote it, and the best ``-n`` are kept.

The result is an ordinary examples file (default ``SPECS_DIR/data/NODE.dream.jsonl``)
whose first line records the generator and its settings. Review it, then add
it to the node (``examples_file: ../data/NODE.dream.jsonl``): from then on it
is an input like any other, hashed and cached, so builds stay deterministic.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("specs_dir", nargs="?", default="specs", help="specs directory (default: specs)")
    parser.add_argument("node", help="id of the node to dream for")
    parser.add_argument("-n", type=int, default=16, help="examples to keep (default 16)")
    parser.add_argument("--shots", type=int, default=4, help="node examples shown to the teacher (default 4)")
    parser.add_argument("--candidates", type=int, default=48, help="contexts the teacher answers (default 48)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="longest reply (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the joined contexts (default 0)")
    parser.add_argument(
        "--generator",
        default=None,
        metavar="DIR",
        help="teacher model: a local Hugging Face directory (default: the personality's base)",
    )
    parser.add_argument("-o", "--out", default=None, help="output file (default SPECS_DIR/data/NODE.dream.jsonl)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")


def _check_counts(args: argparse.Namespace) -> None:
    from traitgraph.errors import UserError

    for flag, value in (
        ("-n", args.n),
        ("--shots", args.shots),
        ("--candidates", args.candidates),
        ("--max-new-tokens", args.max_new_tokens),
    ):
        if value < 1:
            raise UserError(f"dream: {flag} must be at least 1 (got {value})")


def run(args: argparse.Namespace) -> int:
    import torch

    from traitgraph import __version__
    from traitgraph.atomic import write_text_atomic
    from traitgraph.builder.tasks import train_threads
    from traitgraph.compiler.base_model import load_model, resolve_base
    from traitgraph.compiler.dream import (
        DreamSettings,
        candidate_contexts,
        dream,
        render_dream_file,
        settings_record,
    )
    from traitgraph.errors import UserError
    from traitgraph.evaluate.scores import generate
    from traitgraph.graph import load_specs
    from traitgraph.graph.walk import user_message, walk_contexts

    _check_counts(args)
    spec = load_specs(args.specs_dir)
    if args.node not in spec.nodes:
        raise UserError(f"no node '{args.node}' in {spec.specs_dir}; nodes: {', '.join(sorted(spec.nodes))}")
    out = Path(args.out) if args.out else spec.specs_dir / "data" / f"{args.node}.dream.jsonl"
    if out.exists() and not args.force:
        raise UserError(f"{out} exists; review or move it, or pass --force to overwrite it")
    walk = walk_contexts(spec, args.node)
    settings = DreamSettings(
        n=args.n, shots=args.shots, max_new_tokens=args.max_new_tokens, candidates=args.candidates, seed=args.seed
    )
    contexts = candidate_contexts(walk.neighbour_contexts, [user_message(e) for e in walk.own], walk.held_out, settings)
    if not contexts:
        raise UserError(
            f"{spec.nodes[args.node].file}: node '{args.node}' has no `related` or `conflicts` neighbour with "
            "training contexts to dream from; add such an edge (field edges)"
        )
    torch.set_num_threads(train_threads())
    teacher = resolve_base(args.generator or spec.personality.base, None if args.generator else spec.specs_dir)
    model, tokenizer = load_model(teacher)
    kept = dream(model, tokenizer, generate, walk.description, walk.own[: settings.shots], contexts, settings)
    header = {
        "node": args.node,
        "generator": teacher.reference,
        "generator_fingerprint": teacher.fingerprint,
        "neighbours": list(walk.neighbours),
        "settings": settings_record(settings),
        "traitgraph_version": __version__,
    }
    write_text_atomic(out, render_dream_file(kept, header))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(out, 0o666 & ~umask)
    print(f"dream:{args.node}: {len(kept)} of {len(contexts)} candidates kept -> {out}")
    node = spec.nodes[args.node]
    rel = os.path.relpath(out, node.file.parent)
    if node.spec.examples_file is None:
        print(f"review it, then add `examples_file: {rel}` to {node.file}")
    else:  # a node has one examples file
        print(
            f"review it, then append its example lines to {node.spec.examples_file} (the examples_file of {node.file})"
        )
    return 0
