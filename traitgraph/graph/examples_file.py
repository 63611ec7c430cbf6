"""Read a JSON Lines file of training examples under the confinement rule.

Both kinds of examples file go through here: a node's ``examples_file``
(relative to the node file) and its ``training.dream`` file (relative to the
specs dir). One rule for both: a regular UTF-8 file inside the specs
directory (:mod:`traitgraph.graph.confine`), one ``{"context", "response"}``
or ``{"messages", "response"}`` object per line, blank lines and lines
starting with ``#`` (a dream file's header) skipped, every bad line reported
with its number.

>>> problems = []
>>> read_examples_file(Path("specs/data/x.jsonl"), "data/x.jsonl", ExampleSource("x", Path("specs/nodes/x.yaml"), "examples_file"), Path("specs"), problems)  # doctest: +SKIP
(Example(context='hi', ...), ...)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from traitgraph.errors import SpecProblem, field_path, validation_message
from traitgraph.graph.confine import OutsideSpecs, read_confined
from traitgraph.graph.schema import Example

_HINTS = {
    "extra_forbidden": "remove the key, or check its spelling against the README's spec reference",
    "missing": "add the field",
}
JSONL_HINT = 'examples files are UTF-8 JSON Lines: one {"context": ..., "response": ...} per line'


def validation_problems(exc: ValidationError, file: Path, node: str | None, prefix: str = "") -> list[SpecProblem]:
    """One :class:`SpecProblem` per pydantic error, its location written as a user writes it."""
    problems = []
    for err in exc.errors():
        path = field_path(err["loc"])
        if prefix:
            path = f"{prefix}.{path}" if path and not path.startswith("[") else f"{prefix}{path}"
        msg = validation_message(err)
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        problems.append(
            SpecProblem(file=file, node=node, field=path or None, message=msg, hint=_HINTS.get(err["type"]))
        )
    return problems


def unique_json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``'s ``object_pairs_hook`` refusing a key given twice."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key '{key}'")
        out[key] = value
    return out


@dataclass(frozen=True)
class ExampleSource:
    """Which node, file and field name an examples file (for its problems)."""

    node_id: str
    spec_file: Path
    """The YAML file whose field names the examples file."""
    field: str
    """``examples_file`` or ``training.dream.file``."""
    missing_hint: str | None = None
    """What to do when the file does not exist."""


def parse_examples(text: str, target: Path, node_id: str, problems: list[SpecProblem]) -> list[Example]:
    """The examples of a JSONL text; each bad line is a problem against ``target`` and its line number.

    >>> found = []
    >>> [e.response for e in parse_examples('# a header\\n{"context": "a?", "response": "b."}\\n', Path("x.jsonl"), "x", found)], found
    (['b.'], [])
    """
    examples: list[Example] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):  # blank, or a comment (a dream header)
            continue
        where = dict(file=target, node=node_id, field=f"line {lineno}")
        try:
            raw = json.loads(line, object_pairs_hook=unique_json_object)
        except RecursionError:
            problems.append(SpecProblem(**where, message="JSON nested too deeply to read"))
            continue
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            problems.append(SpecProblem(**where, message=f"invalid JSON: {msg}"))
            continue
        if not isinstance(raw, dict):
            problems.append(SpecProblem(**where, message="expected a JSON object"))
            continue
        try:
            examples.append(Example.model_validate(raw))
        except ValidationError as exc:
            problems.extend(validation_problems(exc, target, node_id, prefix=f"line {lineno}"))
    return examples


def read_examples_file(
    target: Path, rel: str, source: ExampleSource, specs_dir: Path, problems: list[SpecProblem]
) -> tuple[tuple[Example, ...], str | None]:
    """The examples of the file ``rel`` (at ``target``) and its text, or ``((), None)`` with problems.

    Outside the specs dir, missing, not a regular file, not UTF-8, or holding
    no example: a problem against ``source`` (or the file and its line).
    """
    where = dict(file=source.spec_file, node=source.node_id, field=source.field)
    resolved = target.resolve()
    if not resolved.is_relative_to(specs_dir.resolve()):
        problems.append(
            SpecProblem(
                **where,
                message=f"'{rel}' points outside the specs directory {specs_dir}",
                hint="keep data files inside the specs directory so the specs are self-contained",
            )
        )
        return (), None
    if not resolved.exists():
        problems.append(
            SpecProblem(
                **where, message=f"data file '{rel}' does not exist (looked for {resolved})", hint=source.missing_hint
            )
        )
        return (), None
    try:
        text = read_confined(resolved, specs_dir)
    except OutsideSpecs as exc:
        problems.append(SpecProblem(**where, message=f"cannot read data file '{rel}' ({exc})", hint=JSONL_HINT))
        return (), None
    found: list[SpecProblem] = []
    examples = parse_examples(text, resolved, source.node_id, found)
    problems.extend(found)
    if not examples and not found:
        problems.append(SpecProblem(file=resolved, node=source.node_id, message="data file holds no examples"))
    return tuple(examples), text
