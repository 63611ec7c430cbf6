"""Pairwise interference of task vectors: cosine, trim overlap and sign conflicts.

    traitgraph interference VECTOR.safetensors... [--density D] [-o heatmap.png]

Prints one row per pair and saves a heatmap. Sign conflict is the share of
the entries both vectors keep after TIES's trim (top D per tensor by
magnitude) where they point in opposite directions: there the sign election
must drop one of them. Independent vectors score ≈ 50%.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("vectors", nargs="+", help="task-vector files (two or more)")
    parser.add_argument("--density", type=float, default=0.2, help="trim density, as in merge.density (default 0.2)")
    parser.add_argument("-o", "--out", default="interference.png", help="heatmap PNG (default interference.png)")


def run(args: argparse.Namespace) -> int:
    from traitgraph.compiler.task_vector import read_task_vector_meta
    from traitgraph.errors import UserError
    from traitgraph.linker.interference import interference, plot_interference

    paths = [Path(p) for p in args.vectors]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"not found: {', '.join(missing)}")
    ids = [read_task_vector_meta(p).node_id for p in paths]
    named: dict[str, Path] = {}
    for node_id, path in zip(ids, paths):
        name = node_id if ids.count(node_id) == 1 else f"{node_id} ({path.stem})"
        if name in named:
            raise UserError(f"{path} is given twice")
        named[name] = path
    result = interference(named, density=args.density)
    print(result.table())
    print(f"heatmap: {plot_interference(result, args.out)}")
    return 0
