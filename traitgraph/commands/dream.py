"""Dream new training examples for a node, with the base as a few-shot teacher.

    traitgraph dream [SPECS_DIR] [NODE] [-n 16] [--shots 4] [--candidates 48] [--new-contexts 16]
                     [--rephrase 8] [--max-new-tokens 64] [--seed 0] [--generator DIR]
                     [--score teacher|vector] [-o FILE] [--force]

Contexts come from a walk of the graph (the user messages of the nodes this
one is ``related`` to or ``conflicts`` with, alone and joined with one of the
node's own) and from the teacher itself: new requests on shipped everyday
topics, and old ones in other words; never an eval or ood case's. The teacher
(the personality's base, or ``--generator``) sees the node's description and
``--shots`` of its examples as earlier turns and replies greedily; each reply
is scored (``--score teacher``: how much the demonstrations wrote it;
``vector``: how much the node's own task vector raises it over the base) and
the best ``-n`` are kept.

The result is an ordinary examples file (default ``SPECS_DIR/data/NODE.dream.jsonl``)
whose first line records the generator and its settings. With
``training.dream`` in the spec, that file is where the block says, the block
gives the settings (flags override them), ``build`` trains on it, and
``traitgraph dream SPECS_DIR`` without NODE writes the file of every node
that sets it, skipping files already written with the same settings.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from traitgraph.graph.schema import DreamSettings

#: Flags that override a ``training.dream`` setting, by field name.
SETTING_FLAGS = {
    "n": "-n",
    "shots": "--shots",
    "candidates": "--candidates",
    "new_contexts": "--new-contexts",
    "rephrase": "--rephrase",
    "max_new_tokens": "--max-new-tokens",
    "seed": "--seed",
    "generator": "--generator",
    "score": "--score",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every setting flag defaults to the node's ``training.dream`` value, else to the default shown."""
    parser.add_argument("specs_dir", nargs="?", default="specs", help="specs directory (default: specs)")
    parser.add_argument(
        "node", nargs="?", default=None, help="node to dream for (default: every node with training.dream)"
    )
    parser.add_argument("-n", type=int, default=None, help="examples to keep (default 16)")
    parser.add_argument("--shots", type=int, default=None, help="node examples shown to the teacher (default 4)")
    parser.add_argument("--candidates", type=int, default=None, help="graph-walk contexts answered (default 48)")
    parser.add_argument(
        "--new-contexts", type=int, default=None, help="new contexts the teacher writes on everyday topics (default 16)"
    )
    parser.add_argument("--rephrase", type=int, default=None, help="contexts the teacher rewrites (default 8)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="longest reply (default 64)")
    parser.add_argument("--seed", type=int, default=None, help="seed of every choice (default 0)")
    parser.add_argument(
        "--generator",
        default=None,
        metavar="DIR",
        help="teacher model: a local Hugging Face directory (default: the personality's base)",
    )
    parser.add_argument(
        "--score",
        choices=("teacher", "vector"),
        default=None,
        help="teacher: the demonstrations' effect (default); vector: the node's own task vector's",
    )
    parser.add_argument(
        "-o",
        "--out",
        default=None,
        help="output file (default: training.dream's file, else SPECS_DIR/data/NODE.dream.jsonl)",
    )
    parser.add_argument("--force", action="store_true", help="write over a dream file written before")


@dataclass(frozen=True)
class Job:
    """One node to dream for: its settings, where the file goes, and whether the spec asks for it."""

    node_id: str
    settings: DreamSettings
    """The spec's ``training.dream`` (or the defaults), with the flags given."""
    out: Path
    in_spec: bool
    """The node sets ``training.dream`` and ``out`` is its file (a build input)."""
    generator_base: Path | None
    """What a relative ``generator`` is relative to: the specs dir (from the spec), or the cwd."""


def positionals(specs_dir: str, node: str | None) -> tuple[str, str | None]:
    """``dream NODE``, one name that is no directory, keeps meaning NODE in ``specs``.

    >>> positionals("no-such-dir", None), positionals("specs", "voice")
    (('specs', 'no-such-dir'), ('specs', 'voice'))
    """
    if node is None and not Path(specs_dir).is_dir():
        return "specs", specs_dir
    return specs_dir, node


def _given(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in SETTING_FLAGS if getattr(args, name) is not None}


def effective_settings(spec_settings: DreamSettings | None, given: dict) -> DreamSettings:
    """The spec's ``training.dream`` (or the defaults) with the flags given; a bad value names its flag.

    >>> effective_settings(DreamSettings(n=4, seed=2), {"n": 8}).model_dump(include={"n", "seed"})
    {'n': 8, 'seed': 2}
    """
    from pydantic import ValidationError

    from traitgraph.errors import UserError, validation_message

    start = spec_settings if spec_settings is not None else DreamSettings()
    try:
        return DreamSettings.model_validate({**start.model_dump(), **given})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise UserError(f"dream: {SETTING_FLAGS[str(err['loc'][0])]} {validation_message(err)}") from None


def _job(spec, node_id: str, args: argparse.Namespace) -> Job:
    from traitgraph.graph.dreamfile import dream_rel

    spec_settings = spec.training_settings(node_id).dream
    given = _given(args)
    settings = effective_settings(spec_settings, given)
    if args.out:
        out = Path(args.out)
    else:
        out = confined_output(spec, node_id, dream_rel(settings, node_id))
    from_spec = "generator" not in given
    in_spec = spec_settings is not None and not args.out
    return Job(node_id, settings, out, in_spec, spec.specs_dir if from_spec else None)


def confined_output(spec, node_id: str, rel: str) -> Path:
    """``SPECS_DIR/rel``, refused (naming the node and field) when it leads out of the specs dir."""
    import os

    from traitgraph.errors import UserError
    from traitgraph.graph.dreamfile import DREAM_FIELD, dream_spec_file

    out = spec.specs_dir / rel
    root = Path(os.path.realpath(spec.specs_dir))
    if not Path(os.path.realpath(out)).is_relative_to(root):
        where = dream_spec_file(spec.nodes[node_id], spec.personality_file)
        raise UserError(
            f"{where}: node '{node_id}', field {DREAM_FIELD}: '{rel}' leads outside the specs directory "
            f"{spec.specs_dir}; keep dream files inside it"
        )
    return out


def jobs(spec, node: str | None, args: argparse.Namespace) -> list[Job]:
    """The nodes to dream for: NODE, or every node that sets ``training.dream``."""
    from traitgraph.errors import UserError

    if node is not None:
        if node not in spec.nodes:
            raise UserError(f"no node '{node}' in {spec.specs_dir}; nodes: {', '.join(sorted(spec.nodes))}")
        return [_job(spec, node, args)]
    if args.out:
        raise UserError("dream: -o names one file; give the NODE it is for")
    chosen = [n for n in spec.build_order() if spec.training_settings(n).dream is not None]
    if not chosen:
        raise UserError(
            f"no node in {spec.specs_dir} sets training.dream; name a NODE, or add `dream: {{}}` under "
            f"`training:` in {spec.personality_file} (every node) or in a node file"
        )
    return [_job(spec, n, args) for n in chosen]


def to_write(found: list[Job], force: bool, one_node: bool) -> list[Job]:
    """The jobs whose file is written now; raises before anything is written when a file is in the way.

    A file traitgraph did not write (no dream header) is never written over. One
    written before is written over only with ``--force``; without NODE, one whose
    header records the settings asked for is up to date and skipped.
    """
    from traitgraph.errors import UserError
    from traitgraph.graph.dreamfile import read_header, settings_differences

    pending, stale = [], []
    for job in found:
        if not job.out.exists():
            pending.append(job)
            continue
        try:
            header = read_header(job.out.read_text(encoding="utf-8")) if job.out.is_file() else None
        except (OSError, UnicodeDecodeError):
            header = None
        if header is None:
            raise UserError(
                f"{job.out} exists and is not a file traitgraph dream wrote (no header line); "
                "move it away or choose another file: it is never written over"
            )
        differences = settings_differences(header, job.settings)
        if force:
            pending.append(job)
        elif one_node:
            raise UserError(f"{job.out} exists; review or move it, or pass --force to overwrite it")
        elif differences:
            stale.append(f"{job.out} ({'; '.join(differences)})")
        else:
            print(f"dream:{job.node_id}: {job.out} is up to date (written with these settings)")
    if stale:
        raise UserError(
            "dream files written with other settings: "
            + ", ".join(stale)
            + "; pass --force to write them again (edits made to them are lost)"
        )
    return pending


def run(args: argparse.Namespace) -> int:
    import torch

    from traitgraph.builder.tasks import train_threads
    from traitgraph.graph import load_specs

    specs_dir, node = positionals(args.specs_dir, args.node)
    spec = load_specs(specs_dir, dream_files=False)  # dream files are this command's outputs
    pending = to_write(jobs(spec, node, args), args.force, one_node=node is not None)
    if pending:
        torch.set_num_threads(train_threads())
    from traitgraph.commands.dream_node import Models, dream_node

    models = Models()
    for job in pending:
        dream_node(spec, job, models)
    return 0
