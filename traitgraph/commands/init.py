"""Start a new personality: a commented personality.yaml, one node and the JSON Schemas.

traitgraph init demo                      # demo/personality.yaml, demo/nodes/greeting.yaml, demo/schema/
traitgraph init demo --base ./my-model    # another base model
traitgraph check demo && traitgraph build demo -o demo-out
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="the new specs directory (must not exist or be empty)")
    parser.add_argument(
        "--base",
        default="smollm2-135m-instruct",
        help="base model: embedded name, local directory or hub id (default: smollm2-135m-instruct)",
    )
    parser.add_argument("--node", default="greeting", help="id of the first node (default: greeting)")


def run(args: argparse.Namespace) -> int:
    from traitgraph.graph.scaffold import scaffold_personality

    for path in scaffold_personality(args.directory, base=args.base, node_id=args.node):
        print(f"wrote {path}")
    print(
        f"next: edit the files, then `traitgraph check {args.directory}` and "
        f"`traitgraph build {args.directory} -o OUT`; add nodes with `traitgraph new NODE {args.directory}`"
    )
    return 0
