"""Say, for each node, whether its task vector is built for the current specs,
and if not, what changed since the last build (from the lock file)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("specs_dir", nargs="?", default="specs", help="specs directory (default: specs)")
    parser.add_argument("-o", "--out", default="out", help="output directory of the build (default: out)")


def run(args: argparse.Namespace) -> int:
    from traitgraph.builder.status import describe_status

    print(describe_status(args.specs_dir, args.out))
    return 0
