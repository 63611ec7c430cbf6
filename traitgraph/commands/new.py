"""Add a node to a personality: nodes/NODE.yaml with every field commented.

traitgraph new politeness              # specs/nodes/politeness.yaml
traitgraph new politeness demo -d "Says please and thank you."
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("node", help="the new node's id (a-z, 0-9, '-', '_')")
    parser.add_argument("specs_dir", nargs="?", default="specs", help="specs directory (default: specs)")
    parser.add_argument("-d", "--description", default=None, help="the node's description")


def run(args: argparse.Namespace) -> int:
    from traitgraph.graph.scaffold import scaffold_node

    path = scaffold_node(args.specs_dir, args.node, args.description)
    print(f"wrote {path}; replace its examples and eval cases with your own")
    return 0
