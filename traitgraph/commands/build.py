"""Build a personality: a thin wrapper over doit with the same tasks as dodo.py.

    traitgraph build                     # specs/ -> out/
    traitgraph build specs -o out -n 2   # train two nodes at a time
    traitgraph build specs -- list       # doit arguments after --
"""

from __future__ import annotations

import argparse

#: arguments after `--` go to doit
TAKES_PASSTHROUGH = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("specs_dir", nargs="?", default="specs", help="specs directory (default: specs)")
    parser.add_argument("-o", "--out", default="out", help="output directory (default: out)")
    parser.add_argument("-n", "--jobs", type=int, default=1, help="train this many nodes in parallel")


def run(args: argparse.Namespace) -> int:
    from doit.cmd_base import ModuleTaskLoader
    from doit.doit_cmd import DoitMain

    from traitgraph.build.plan import OutputLock
    from traitgraph.build.tasks import load_plan_or_exit, runs_tasks, task_creators

    extra = list(args.passthrough)  # doit arguments after --
    plan = load_plan_or_exit(args.specs_dir, args.out)
    loader = ModuleTaskLoader(task_creators(plan))
    if not runs_tasks(extra):
        return DoitMain(loader).run(extra)
    doit_args = ["-n", str(args.jobs), *extra] if args.jobs > 1 else extra
    with OutputLock(plan.out):
        return DoitMain(loader).run(doit_args)
