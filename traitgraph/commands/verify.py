"""Verify a build: its checkpoint matches the lock, and the lock rebuilds it bit for bit.

    traitgraph verify out                 # exit 0, or 2 naming the differing file
    traitgraph verify out --specs specs   # where a relative base reference is resolved

The checkpoint is relinked from the lock's cached task vectors into a
temporary directory (never over OUT), and every output hash is compared.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", nargs="?", default="out", help="output directory of a build (default: out)")
    parser.add_argument(
        "--specs",
        default="specs",
        help="specs directory a relative base reference is resolved against (default: specs)",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from traitgraph.builder.verify import verify_build

    result = verify_build(args.out, Path(args.specs))
    print(
        f"verified {args.out}: all {result.checked} checkpoint files match the lock, "
        f"and relinking the lock gives the same {result.rebuilt} files"
    )
    return 0
