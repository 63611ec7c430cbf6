"""The ``traitgraph`` command line.

Each subcommand lives in its own module under :mod:`traitgraph.commands` with
two functions: ``add_arguments(parser)`` and ``run(args) -> int``. Modules
import heavy libraries (torch, transformers) inside ``run`` so that
``traitgraph --help`` and ``traitgraph check`` start fast.

Exit status: 0 success, 1 a failed run (a bug, a traceback), 2 a user mistake
(:class:`traitgraph.errors.UserError`, printed without a traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from traitgraph import __version__
from traitgraph.errors import UserError

#: name -> one-line help; the module is traitgraph.commands.<name with - as _>
COMMANDS: dict[str, str] = {
    "check": "validate the specs and print a summary",
    "graph": "draw the personality graph (PNG, SVG or DOT)",
    "train": "train one node into a task vector",
    "dream": "generate new training examples for a node (the base as a few-shot teacher)",
    "build": "build the personality (a thin wrapper over doit)",
    "status": "say which nodes are stale and why",
    "link": "link task vectors into a checkpoint (or relink a lock file)",
    "consolidate": "distil a built checkpoint toward each node alone and the base",
    "merge": "merge models from a mergekit-style YAML",
    "interference": "pairwise overlap and sign conflicts of task vectors",
    "cache": "list, size and garbage-collect the task-vector cache",
    "eval": "evaluate a built checkpoint against its specs",
    "report": "regenerate the build report",
    "chat": "talk to a built model",
}


def _command_module(name: str):
    return importlib.import_module(f"traitgraph.commands.{name.replace('-', '_')}")


def build_parser(available: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="traitgraph",
        description="Build language-model personalities from a graph of behaviour specs.",
    )
    parser.add_argument("--version", action="version", version=f"traitgraph {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in available:
        module = _command_module(name)
        p = sub.add_parser(name, help=COMMANDS[name], description=(module.__doc__ or "").strip())
        module.add_arguments(p)
    return parser


def available_commands() -> list[str]:
    names = []
    for name in COMMANDS:
        try:
            _command_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != f"traitgraph.commands.{name.replace('-', '_')}":
                raise
            continue
        names.append(name)
    return names


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after a bare `--` is passed through untouched (e.g. to doit).
    passthrough: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1 :]
    parser = build_parser(available_commands())
    args = parser.parse_args(argv)
    if passthrough and not getattr(_command_module(args.command), "TAKES_PASSTHROUGH", False):
        parser.error(f"`{args.command}` takes no arguments after --")
    args.passthrough = passthrough
    try:
        return int(_command_module(args.command).run(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
