"""The ``traitgraph`` command line.

Each subcommand lives in its own module under :mod:`traitgraph.commands` with
two functions: ``add_arguments(parser)`` and ``run(args) -> int``. Modules
import heavy libraries (torch, transformers) inside ``run`` so that
``traitgraph --help`` and ``traitgraph check`` start fast.

Exit status (:mod:`traitgraph.errors`): 0 success, 1 an internal error (a
bug, with its traceback), 2 a user mistake or a failed gate
(:class:`traitgraph.errors.UserError`, printed without a traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from traitgraph import __version__
from traitgraph.errors import EXIT_USER, UserError, environment_error

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
    "test": "run the behaviour tests (expect: on eval and ood cases) on the build or the base",
    "report": "regenerate the build report",
    "sweep": "build and evaluate a grid of spec settings (merge method, weights, ...)",
    "chat": "talk to a built model",
    "init": "start a new personality (commented specs and JSON Schemas)",
    "new": "add a node file with every field commented",
    "schema": "write the JSON Schemas of the spec files",
    "export": "export a build as a LoRA adapter or a GGUF file",
    "verify": "rebuild a checkpoint from its lock file and check every hash",
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
        return EXIT_USER
    except (OSError, RecursionError) as exc:  # a full disk, an unwritable directory: no traceback
        user_error = environment_error(exc)
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
