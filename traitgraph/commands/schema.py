"""Write the JSON Schemas of the spec files (from the pydantic models the loader uses).

    traitgraph schema                 # specs/schema/personality.schema.json and node.schema.json
    traitgraph schema -o schemas/     # elsewhere
    traitgraph schema --print node    # one schema on stdout

Point editors at them with a first line in each YAML file:
``# yaml-language-server: $schema=schema/personality.schema.json``
(``../schema/node.schema.json`` in nodes/).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--out", default="specs/schema", help="directory to write (default: specs/schema)")
    parser.add_argument(
        "--print",
        dest="print_kind",
        choices=["personality", "node"],
        default=None,
        help="print one schema to stdout instead of writing files",
    )


def run(args: argparse.Namespace) -> int:
    import json

    from traitgraph.graph.scaffold import json_schemas, write_schemas

    if args.print_kind:
        print(json.dumps(json_schemas()[f"{args.print_kind}.schema.json"], indent=2, sort_keys=True))
        return 0
    for path in write_schemas(args.out):
        print(f"wrote {path}")
    return 0
