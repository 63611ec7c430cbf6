"""Build, link and evaluate the personality at every point of a grid of spec settings.

    traitgraph sweep specs -o out --set merge.method=ties,task_arithmetic,iso_cts \\
        --set merge.density=0.2,0.5 --set nodes.voice.weight=0.5,1

Each --set is a dotted field path and its values, comma-separated: paths into
personality.yaml (merge.method, merge.lambda, eval.max_retention_loss_pct,
training.steps, ...) or nodes.ID.FIELD into a node file (nodes.voice.weight,
nodes.voice.training.steps). Every combination is built in OUT/sweep/pNN/,
reusing cached task vectors (a node trains only where a point changes its
training hash), linked and evaluated; failed gates are recorded, not fatal,
and a failed point is reported and skipped. The results: OUT/sweep/sweep.md,
sweep.json and sweep.png (mean kept against general-text loss change, with
the Pareto front). An unknown path or an invalid value exits 2 before any work.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("specs_dir", nargs="?", default="specs", help="specs directory (default: specs)")
    parser.add_argument("-o", "--out", default="out", help="output directory; points go to OUT/sweep/ (default: out)")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        required=True,
        metavar="PATH=V1,V2",
        help="a spec field and the values to try (repeat for a grid), e.g. merge.density=0.2,0.5",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from traitgraph.evaluate.sweep import parse_set, run_sweep
    from traitgraph.evaluate.sweep_report import SWEEP_MD

    sets = [parse_set(text) for text in args.sets]
    sweep = run_sweep(args.specs_dir, args.out, sets, progress=not args.no_progress)
    failed = [p.name for p in sweep.points if not p.ok]
    root = Path(args.out) / "sweep"
    print(
        f"sweep: {len(sweep.points)} points, {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}; "
        f"Pareto front: {', '.join(sweep.pareto) or 'none'}"
    )
    print(f"table: {root / SWEEP_MD}")
    return 1 if failed and len(failed) == len(sweep.points) else 0
