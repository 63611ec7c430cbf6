"""Merge models from a mergekit-style YAML with traitgraph's streaming linker.

    traitgraph merge CONFIG.yaml OUT_DIR [--seed N] [--max-shard-size 2GB]

Reads the task-arithmetic subset of mergekit's config (merge_method ties,
task_arithmetic, dare_ties, dare_linear, della, breadcrumbs or
breadcrumbs_ties; base_model; models with weight, density, gamma, epsilon;
normalize, lambda, int8_mask, rescale; dtype). Models are local Hugging Face
directories (τ = their weights − the base's, computed tensor by tensor) or
traitgraph task-vector files. A key traitgraph does not support is an error
naming it, where mergekit would silently ignore it.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="mergekit-style YAML file")
    parser.add_argument("out_dir", help="output directory (replaced atomically, and only if traitgraph wrote it)")
    parser.add_argument("--seed", type=int, default=0, help="seed of DARE's and DELLA's drop masks (default 0)")
    parser.add_argument("--max-shard-size", default="2GB", help="largest output shard, e.g. 500MB (default 2GB)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from traitgraph.linker.mergekit_config import run_merge

    outputs = run_merge(
        args.config,
        args.out_dir,
        seed=args.seed,
        max_shard_size=args.max_shard_size,
        progress=not args.no_progress,
        warn=lambda text: print(text, file=sys.stderr),
    )
    shards = sum(1 for name in outputs if name.endswith(".safetensors"))
    print(f"merged into {args.out_dir} ({shards} shard{'s' if shards != 1 else ''}, {len(outputs)} files)")
    return 0
