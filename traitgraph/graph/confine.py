"""The one rule for every file a spec names: a regular file inside the specs directory.

``personality.yaml``, each ``nodes/<id>.yaml``, each ``examples_file``, each
``training.dream`` file and ``eval.general_text`` are read through :func:`read_confined`. After following
every symlink (a symlinked ``nodes/`` directory included) the file must lie
inside the specs directory, be a regular file (never a FIFO, which would hang
the reader, nor a device such as ``/dev/zero``, which never ends) and be at
most :data:`MAX_SPEC_FILE_BYTES` long. Otherwise :class:`OutsideSpecs` says
why, and the loader reports it against the file and field that named it.

>>> read_confined(Path("specs/nodes/pirate.yaml"), Path("specs"))   # doctest: +SKIP
'id: pirate\\n...'
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

#: the largest spec or data file read (a specs directory is text; this is far above any real one)
MAX_SPEC_FILE_BYTES = 64 * 1024 * 1024


class OutsideSpecs(ValueError):
    """A file a spec names breaks the confinement rule (outside, not regular, too big, missing)."""


def confined_path(path: Path, specs_dir: Path) -> Path:
    """``path`` with symlinks resolved, after checking it is a regular file inside ``specs_dir``.

    >>> confined_path(Path("/etc/passwd"), Path("specs"))
    Traceback (most recent call last):
    ...
    traitgraph.graph.confine.OutsideSpecs: /etc/passwd is outside the specs directory specs
    """
    target = Path(os.path.realpath(path))
    if not target.is_relative_to(Path(os.path.realpath(specs_dir))):
        shown = str(path) if target == path else f"{path} (-> {target})"
        raise OutsideSpecs(f"{shown} is outside the specs directory {specs_dir}")
    try:
        st = os.stat(target)
    except FileNotFoundError:
        raise OutsideSpecs(f"{path} does not exist") from None
    except OSError as exc:
        raise OutsideSpecs(f"{path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise OutsideSpecs(f"{path} is not a regular file")
    if st.st_size > MAX_SPEC_FILE_BYTES:
        raise OutsideSpecs(f"{path} is {st.st_size} bytes, more than the {MAX_SPEC_FILE_BYTES} a spec file may have")
    return target


def read_confined(path: Path, specs_dir: Path) -> str:
    """The UTF-8 text of a file that passes :func:`confined_path` (read at most the size limit).

    ``OSError`` and ``UnicodeDecodeError`` are reported as :class:`OutsideSpecs` too.
    """
    target = confined_path(path, specs_dir)
    try:
        with open(target, "rb") as fh:
            data = fh.read(MAX_SPEC_FILE_BYTES + 1)
    except OSError as exc:
        raise OutsideSpecs(f"{path} cannot be read: {exc.strerror}") from None
    if len(data) > MAX_SPEC_FILE_BYTES:
        raise OutsideSpecs(f"{path} grew past the {MAX_SPEC_FILE_BYTES} bytes a spec file may have")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OutsideSpecs(f"{path} is not UTF-8 text (byte {exc.start})") from None
