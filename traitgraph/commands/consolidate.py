"""Consolidate a built checkpoint: distil it toward each node alone and the base.

    traitgraph consolidate [SPECS_DIR] [-o OUT] [--steps 8] [--lr 1e-5]
                           [--batch-size 8] [--general-weight 1.0] [--general-lines 64]

Reads ``OUT/checkpoint`` (from ``traitgraph build``) and each node's task
vector from the cache, distils the checkpoint toward ``base + w·τ`` of each
node on that node's training contexts and toward the base on replay-corpus
text (never the retention set), exactly as the link's ``merge.consolidate``
step does, and installs the result as ``OUT/consolidated/``: a copy of the
checkpoint (config, tokenizer, weights in their dtypes) with the distilled
weights and ``consolidation.json``, checked for non-finite values and swapped
in atomically like a checkpoint. Printed: the KL to each node alone and to the
base, before and after. See docs/training.md.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("specs_dir", nargs="?", default="specs", help="specs directory (default: specs)")
    parser.add_argument("-o", "--out", default="out", help="build output directory (default: out)")
    parser.add_argument("--steps", type=int, default=8, help="distillation steps (default 8)")
    parser.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate (default 1e-5)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per node batch and per general batch")
    parser.add_argument("--general-weight", type=float, default=1.0, help="weight of the KL to the base (default 1)")
    parser.add_argument("--general-lines", type=int, default=64, help="replay-corpus lines used (default 64)")


def _settings(args: argparse.Namespace):
    """The command line as ``merge.consolidate`` settings (a bad value is a UserError naming the flag)."""
    from traitgraph.errors import UserError
    from traitgraph.graph.schema import ConsolidateSpec

    if args.steps < 1 or args.batch_size < 1 or args.lr <= 0 or args.general_weight < 0 or args.general_lines < 1:
        raise UserError(
            "consolidate: --steps, --batch-size and --general-lines must be at least 1, --lr above 0, "
            "--general-weight at least 0"
        )
    return ConsolidateSpec(
        steps=args.steps,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        general_weight=args.general_weight,
        general_lines=args.general_lines,
    )


def _stage_copy(checkpoint: Path, staging: Path) -> None:
    """The built checkpoint's files (not its ownership marker) copied into ``staging``."""
    from traitgraph.linker.install import MARKER

    for path in sorted(checkpoint.iterdir()):
        if path.is_file() and path.name != MARKER:
            shutil.copy2(path, staging / path.name)


def run(args: argparse.Namespace) -> int:
    """Distil a copy of ``OUT/checkpoint`` as the link's ``merge.consolidate`` step does, and
    install it as ``OUT/consolidated`` by the checkpoint's rules (finite check, atomic swap)."""
    from traitgraph.builder.consolidation import consolidate_staged, consolidate_threads
    from traitgraph.builder.plan import BuildPlan
    from traitgraph.errors import UserError
    from traitgraph.linker.install import install, open_staging

    settings = _settings(args)
    plan = BuildPlan.load(args.specs_dir, args.out)
    if not (plan.out.checkpoint / "config.json").is_file():
        raise UserError(f"no built checkpoint in {plan.out.checkpoint}; run `traitgraph build` first")
    final = plan.out.root / "consolidated"
    staging = open_staging(final)
    try:
        _stage_copy(plan.out.checkpoint, staging)
        result = consolidate_staged(plan, settings, staging, consolidate_threads())
        install(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for name, before in result["kl_before"].items():
        print(f"KL to {name:<24} {before:.4f} -> {result['kl_after'][name]:.4f}")
    print(f"consolidated checkpoint: {final}")
    return 0
