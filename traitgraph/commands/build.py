"""Build a personality: a thin wrapper over doit with the same tasks as dodo.py.

    traitgraph build                     # specs/ -> out/
    traitgraph build specs -o out -n 2   # train two nodes at a time
    traitgraph build -- list             # any doit command after --
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("specs_dir", nargs="?", default="specs", help="specs directory (default: specs)")
    parser.add_argument("-o", "--out", default="out", help="output directory (default: out)")
    parser.add_argument("-n", "--jobs", type=int, default=1, help="train this many nodes in parallel")
    parser.add_argument("doit_args", nargs=argparse.REMAINDER, help="more doit arguments (after --)")


def run(args: argparse.Namespace) -> int:
    from doit.cmd_base import ModuleTaskLoader
    from doit.doit_cmd import DoitMain

    from traitgraph.build.plan import OutputLock
    from traitgraph.build.tasks import load_plan_or_exit, runs_tasks, task_creators

    extra = [a for a in args.doit_args if a != "--"]
    plan = load_plan_or_exit(args.specs_dir, args.out)
    loader = ModuleTaskLoader(task_creators(plan))
    if not runs_tasks(extra):
        return DoitMain(loader).run(extra)
    doit_args = ["-n", str(args.jobs), *extra] if args.jobs > 1 else extra
    with OutputLock(plan.out):
        return DoitMain(loader).run(doit_args)
