"""Build a personality: a thin wrapper over doit with the same tasks as dodo.py.

    traitgraph build                     # specs/ -> out/
    traitgraph build specs -o out -n 2   # train two nodes at a time
    traitgraph build specs -- list       # doit arguments after --
"""

from __future__ import annotations

import argparse

#: arguments after `--` go to doit
TAKES_PASSTHROUGH = True
#: doit's own status for a mistake before any task runs (an unknown task or option); reported as 2
DOIT_COMMAND_LINE_ERROR = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("specs_dir", nargs="?", default="specs", help="specs directory (default: specs)")
    parser.add_argument("-o", "--out", default="out", help="output directory (default: out)")
    parser.add_argument("-n", "--jobs", type=int, default=1, help="train this many nodes in parallel")


def run(args: argparse.Namespace) -> int:
    from doit.cmd_base import ModuleTaskLoader
    from doit.doit_cmd import DoitMain

    from traitgraph.builder.tasks import runs_tasks
    from traitgraph.errors import EXIT_USER
    from traitgraph.pipeline import open_build

    extra = list(args.passthrough)  # doit arguments after --
    build = open_build(args.specs_dir, args.out, runs_tasks=runs_tasks(extra))
    loader = ModuleTaskLoader(build.doit_namespace())
    doit_args = ["-n", str(args.jobs), *extra] if args.jobs > 1 and runs_tasks(extra) else extra
    try:
        code = DoitMain(loader).run(doit_args)  # 0 done, 1 a task failed (bug), 2 a task's user error or gate
        return EXIT_USER if code == DOIT_COMMAND_LINE_ERROR else code
    finally:
        if build.output_lock is not None:
            build.output_lock.release()
