"""Draw the personality graph: nodes coloured by the sign of their weight,
edges by kind. Writes PNG, SVG, PDF or DOT (by the file's suffix), or prints
DOT with ``--dot``."""

from __future__ import annotations

import argparse

from traitgraph.graph import load_specs
from traitgraph.graph.draw import draw_graph, to_dot


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("specs_dir", nargs="?", default="specs", help="specs directory (default: specs)")
    parser.add_argument("-o", "--output", default=None, help="picture to write: .png, .svg, .pdf or .dot")
    parser.add_argument("--dot", action="store_true", help="print the graph in Graphviz DOT")


def run(args: argparse.Namespace) -> int:
    spec = load_specs(args.specs_dir)
    g = spec.graph()
    if args.dot or args.output is None:
        print(to_dot(g), end="")
    if args.output is not None:
        out = draw_graph(g, args.output, title=f"{spec.personality.name} ({len(g)} nodes)")
        print(f"wrote {out}")
    return 0
