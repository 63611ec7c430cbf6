"""Validate a specs directory and print a summary of its nodes.

Exit status 0 when the specs are valid, 2 with every problem listed otherwise.
A dream file written with other settings than its ``training.dream`` gives
a warning on stderr (the file still trains as it is).
"""

from __future__ import annotations

import argparse
import sys

from traitgraph.graph import Spec, load_specs
from traitgraph.graph.dreamfile import stale_dream_files
from traitgraph.graph.hashing import node_hashes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("specs_dir", nargs="?", default="specs", help="specs directory (default: specs)")


def base_fingerprint_or_reference(spec: Spec) -> tuple[str, str | None]:
    """The base fingerprint, or the bare reference with a note when the base is not at hand."""
    from traitgraph.compiler.base_model import base_fingerprint
    from traitgraph.errors import UserError

    try:
        return base_fingerprint(spec.personality.base, spec.specs_dir), None
    except UserError as exc:
        return f"unresolved:{spec.personality.base}", f"note: hashes use the base reference only ({exc})"


def summary_table(spec: Spec, hashes: dict[str, str]) -> str:
    rows = [("node", "weight", "examples", "eval", "edges", "hash")]
    for node_id in spec.build_order():
        node = spec.nodes[node_id]
        edges = ", ".join(f"{e.kind}:{e.to}" for e in node.spec.edges) or "-"
        rows.append(
            (
                node_id,
                f"{node.spec.weight:+g}",
                str(len(node.examples)),
                str(len(node.spec.eval)),
                edges,
                hashes[node_id][:12],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    spec = load_specs(args.specs_dir)
    for warning in stale_dream_files(spec):
        print(f"warning: {warning}", file=sys.stderr)
    fingerprint, note = base_fingerprint_or_reference(spec)
    hashes = node_hashes(spec, fingerprint)
    g = spec.graph()
    p = spec.personality
    print(
        f"{p.name}: {len(spec.nodes)} nodes, {g.number_of_edges()} edges, "
        f"{sum(len(n.examples) for n in spec.nodes.values())} examples, "
        f"{sum(len(n.spec.eval) for n in spec.nodes.values())} eval cases"
    )
    print(
        f"base: {p.base} ({fingerprint[:19]}); merge: {p.merge.method} density {p.merge.density:g} lambda {p.merge.lambda_:g}"
    )
    print()
    print(summary_table(spec, hashes))
    if note:
        print(note)
    print("\nok: specs are valid")
    return 0
