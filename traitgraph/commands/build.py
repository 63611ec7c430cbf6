"""Build a personality: a thin wrapper over doit with the same tasks as dodo.py.

traitgraph build                     # specs/ -> out/
traitgraph build specs -o out -n 2   # train two nodes at a time
traitgraph build specs -- list       # doit arguments after --
traitgraph build --ray auto -n 8     # each node a task on a running Ray cluster
"""

from __future__ import annotations

import argparse

from traitgraph.commands.args import positive_int

#: arguments after `--` go to doit
TAKES_PASSTHROUGH = True
#: doit's own status for a mistake before any task runs (an unknown task or option); reported as 2
DOIT_COMMAND_LINE_ERROR = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("specs_dir", nargs="?", default="specs", help="specs directory (default: specs)")
    parser.add_argument("-o", "--out", default="out", help="output directory (default: out)")
    parser.add_argument(
        "-n", "--jobs", type=positive_int, default=1, help="train this many nodes in parallel (1 or more)"
    )
    parser.add_argument(
        "--ray",
        nargs="?",
        const="settings",
        default=None,
        metavar="ADDRESS",
        help="train each node as a Ray task (ADDRESS: auto, HOST:PORT; none: the personality's, else a local Ray)",
    )


def run(args: argparse.Namespace) -> int:
    from doit.cmd_base import ModuleTaskLoader
    from doit.doit_cmd import DoitMain

    from traitgraph.builder.doit_state import BACKEND_NAME, BACKEND_PLUGIN
    from traitgraph.builder.tasks import runs_tasks
    from traitgraph.errors import EXIT_USER
    from traitgraph.pipeline import open_build

    extra = list(args.passthrough)  # doit arguments after --
    build = open_build(args.specs_dir, args.out, runs_tasks=runs_tasks(extra), ray=args.ray)
    namespace = build.doit_namespace()
    namespace["DOIT_CONFIG"]["backend"] = BACKEND_NAME  # doit.sqlite deleted mid-build is recreated
    loader = ModuleTaskLoader(namespace)
    doit_args = ["-n", str(args.jobs), *extra] if args.jobs > 1 and runs_tasks(extra) else extra
    if args.jobs > 1 and runs_tasks(extra):
        from traitgraph.builder.workers import watch_workers

        watch_workers()  # a worker killed outright would leave doit waiting forever
    try:
        code = DoitMain(loader, extra_config={"BACKEND": BACKEND_PLUGIN}).run(doit_args)
        return EXIT_USER if code == DOIT_COMMAND_LINE_ERROR else code  # 0 done, 1 bug, 2 user error or gate
    finally:
        if build.plan.executor is not None:
            build.plan.executor.close()
        if build.output_lock is not None:
            build.output_lock.release()
