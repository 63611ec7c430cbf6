"""Evaluate the last build: behaviour per node, retention, merge interference, gates.

    traitgraph eval                     # specs/ and out/
    traitgraph eval specs -o out

Scores each node's held-out eval cases under the base, the base plus the
node's own weighted task vector, and the linked checkpoint; measures
general-text loss and general-prompt answers; writes OUT/report.md,
OUT/report.json and OUT/figures/, prints the tables, and exits with status 2
and a message naming what fell short when a budget of `eval:` is exceeded.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("specs_dir", nargs="?", default="specs", help="specs directory (default: specs)")
    parser.add_argument("-o", "--out", default="out", help="output directory of the build (default: out)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")


def run(args: argparse.Namespace) -> int:
    from traitgraph.builder.output_lock import OutputLock
    from traitgraph.builder.plan import BuildPlan
    from traitgraph.evaluate.run import read_build_lock, run_eval

    plan = BuildPlan.load(args.specs_dir, args.out)
    read_build_lock(plan)  # nothing built yet: say so before touching OUT
    if not plan.link_is_current():
        print(
            "note: the specs changed since the last build; evaluating the checkpoint as it was built "
            "(run `traitgraph build` to rebuild and evaluate)"
        )
    with OutputLock(plan.out):
        run_eval(plan, threads=args.threads)
    return 0
