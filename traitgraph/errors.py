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
