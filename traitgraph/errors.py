"""Two kinds of failure, kept apart (as doit keeps InvalidTask apart from TaskFailed).

* :class:`UserError` and its subclasses are the user's mistakes: a bad spec, a
  missing file, an unreachable model. The CLI prints them without a traceback
  and exits with status 2.
* Anything else is a bug or a failed run and keeps its traceback.

Exit status, the same for every command (``traitgraph build``, ``eval``,
``link``, ``check``... and ``doit``): :data:`EXIT_OK` (0) success,
:data:`EXIT_INTERNAL` (1) an internal error (a bug: traceback printed),
:data:`EXIT_USER` (2) a user error or a failed gate (``error: ...``, no
traceback). Interrupted with Ctrl-C: 130.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USER = 2


def field_path(loc: tuple) -> str:
    """A pydantic error location as a user writes it: ``('examples', 3, 'response')``
    becomes ``examples[3].response`` (empty for the top level)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def validation_message(err: dict) -> str:
    """A pydantic error's message, with the offending value when it is not finite
    (pydantic's own words, "Input should be a finite number", do not say which).

    >>> validation_message({"type": "finite_number", "msg": "Input should be a finite number", "input": float("nan")})
    'must be a finite number, got nan'
    """
    msg = err["msg"]
    if err.get("type") == "finite_number":
        return f"must be a finite number, got {err.get('input')!r}".replace("'", "")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return msg


class UserError(Exception):
    """A mistake the user can fix; printed without a traceback, exit status 2."""


@dataclass(frozen=True)
class SpecProblem:
    """One thing wrong with the specs, located as precisely as we can."""

    file: Path | None
    message: str
    node: str | None = None
    field: str | None = None
    hint: str | None = None

    def __str__(self) -> str:
        where = str(self.file) if self.file is not None else "<specs>"
        parts = [where]
        if self.node:
            parts.append(f"node '{self.node}'")
        if self.field:
            parts.append(f"field '{self.field}'")
        text = ": ".join([", ".join(parts), self.message])
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text


class SpecError(UserError):
    """The specs are invalid; carries every problem found, not just the first."""

    def __init__(self, problems: list[SpecProblem]):
        self.problems = list(problems)
        super().__init__(self.render())

    def render(self) -> str:
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} in the specs:"
        return "\n".join([head, *(f"  - {p}" for p in self.problems)])


class BuildError(UserError):
    """A build step cannot go on for a reason the user can act on
    (diverged training, a corrupt or missing artifact, a budget exceeded)."""


def environment_error(exc: BaseException) -> UserError | None:
    """The :class:`UserError` for a failure of the machine rather than of traitgraph
    (a full disk, a read-only or missing directory, input nested too deeply to
    parse), or ``None`` for anything else (a bug, which keeps its traceback).

    >>> str(environment_error(OSError(28, "No space left on device", "out/checkpoint")))
    'out/checkpoint: No space left on device'
    """
    if isinstance(exc, RecursionError):
        return UserError("input nested too deeply to read (a YAML or JSON file with thousands of levels)")
    if isinstance(exc, OSError) and exc.errno is not None:
        if exc.filename is None:
            return UserError(f"a file could not be read or written: {exc.strerror or exc}")
        return UserError(f"{exc.filename}: {exc.strerror or exc}")
    return None
