"""Checks on a build's output directory (``-o OUT``), made before any work starts.

A build refuses, naming ``-o`` and the path, an output that is a file, one it
cannot create or write, and one that is (or is inside, or contains) the base
model's own directory: writing there would change the base's fingerprint and
retrain every node on every run.

:func:`clean_after_crash` (run under the build lock) removes what a killed
build left in the output: temporary files of dead writers, a half-written
checkpoint's staging directory, and a checkpoint moved aside by an install cut
short (it is put back).

>>> check_output_dir(Path("out"), spec)   # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from traitgraph.builder.plan import OutputLayout

from traitgraph.atomic import sweep_stale_temps
from traitgraph.errors import UserError
from traitgraph.graph import Spec
from traitgraph.linker.install import sweep_leftovers


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_output_dir(out: Path, spec: Spec) -> None:
    """Raise a :class:`UserError` naming ``-o OUT`` when a build cannot or must not write there."""
    from traitgraph.compiler.base_model import base_source_directory

    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out}: exists and is not a directory; choose an output directory")
    base = base_source_directory(spec.personality.base, spec.specs_dir)
    if base is not None and _overlaps(out.resolve(), base):
        raise UserError(
            f"-o {out}: overlaps the base model's directory {base} (personality.yaml, field 'base'); "
            "a build must not write into its base: choose another output directory"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"-o {out}: cannot create the output directory: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"-o {out}: the output directory is not writable")


def clean_after_crash(out: OutputLayout) -> list[Path]:
    """Remove what a killed build left in ``out``; returns what was removed. Call it holding the build lock.

    >>> clean_after_crash(OutputLayout(Path("out")))   # doctest: +SKIP
    [PosixPath('out/.checkpoint.tmp-4242-x1y2z3')]
    """
    removed = sweep_stale_temps(out.root) + sweep_stale_temps(out.state)
    return removed + sweep_leftovers(out.checkpoint)
