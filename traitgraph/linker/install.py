"""Installing a linked checkpoint: the one rule for replacing a directory.

A checkpoint is written into a hidden staging directory beside its final place
(``.NAME.tmp-PID-XXXX``), checked, marked, and swapped in::

    >>> staging = open_staging(out_dir)            # doctest: +SKIP
    >>> write_shards_and_side_files(staging)       # doctest: +SKIP
    >>> install(staging, out_dir)                  # doctest: +SKIP

The rules, in one place:

* **Ownership.** traitgraph replaces or deletes only a directory it wrote
  itself, recognised by the marker file :data:`MARKER` it leaves inside
  (a small JSON). Any other non-empty directory, or a file, is refused by
  name: nothing of the user's is ever deleted.
* **Finite.** Every floating-point tensor of the staged checkpoint is checked
  for NaN and infinity before the swap; a non-finite checkpoint is never
  installed (:class:`~traitgraph.errors.BuildError` naming file and tensor).
* **Atomic swap.** The old directory is renamed to ``.NAME.old-PID-XXXX``,
  the staged one renamed in, then the old one deleted. A crash between the two
  renames is repaired by the next run (:func:`sweep_leftovers`): the old
  checkpoint is put back, so the output never stays without a checkpoint.
* **No leftovers.** Staging and old directories of processes that are gone
  are removed at the start of the next install into the same place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from traitgraph.atomic import pid_alive
from traitgraph.errors import BuildError, UserError
from traitgraph.faults import fault_point

#: the file that marks a directory as traitgraph's own output
MARKER = ".traitgraph-output"


def is_owned(directory: Path) -> bool:
    """Whether ``directory`` carries traitgraph's output marker.

    >>> is_owned(Path("/nonexistent"))
    False
    """
    marker = directory / MARKER
    try:
        return marker.is_file() and json.loads(marker.read_text(encoding="utf-8")).get("tool") == "traitgraph"
    except (OSError, ValueError, AttributeError):
        return False


def check_replaceable(out_dir: Path) -> None:
    """Refuse (a :class:`UserError` naming it) to replace ``out_dir`` unless it is
    missing, empty, or a directory traitgraph wrote (it holds :data:`MARKER`)."""
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if out_dir.is_symlink() or not out_dir.is_dir():
        raise UserError(f"output {out_dir} exists and is not a directory; choose another output directory")
    try:
        empty = not any(out_dir.iterdir())
    except OSError as exc:
        raise UserError(f"output directory {out_dir} cannot be read: {exc.strerror}") from None
    if not empty and not is_owned(out_dir):
        raise UserError(
            f"output directory {out_dir} is not empty and was not written by traitgraph (no {MARKER} in it); "
            "refusing to replace it: choose another directory or empty it (a checkpoint linked by a "
            "traitgraph older than this marker has none: delete it once)"
        )


def _leftovers(out_dir: Path, kind: str) -> list[Path]:
    """``.NAME.<kind>-PID-*`` beside ``out_dir`` whose process is gone."""
    found = []
    prefix = f".{out_dir.name}.{kind}-"
    with contextlib.suppress(OSError):
        for path in out_dir.parent.iterdir():
            if not path.name.startswith(prefix):
                continue
            pid = path.name[len(prefix) :].split("-")[0]
            if not pid.isdigit() or not pid_alive(int(pid)):
                found.append(path)
    return sorted(found)


def sweep_leftovers(out_dir: Path) -> list[Path]:
    """Repair what a killed install left beside ``out_dir``; returns what was removed.

    An ``old`` directory with no ``out_dir`` is a crash between the two renames:
    it is renamed back. Every other staging or old directory of a dead process goes
    (these hidden names are made only by :func:`open_staging` and :func:`install`).
    """
    removed = []
    olds = _leftovers(out_dir, "old")
    restorable = [p for p in olds if is_owned(p)]  # one whose deletion began has lost its marker
    if restorable and not out_dir.exists():
        os.rename(restorable[-1], out_dir)
        olds.remove(restorable[-1])
    for path in _leftovers(out_dir, "tmp") + olds:
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def open_staging(out_dir: Path) -> Path:
    """A fresh staging directory beside ``out_dir`` (mode from the umask), after
    refusing a directory traitgraph may not replace and sweeping old leftovers."""
    check_replaceable(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        sweep_leftovers(out_dir)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-{os.getpid()}-", dir=out_dir.parent))
    except OSError as exc:
        raise UserError(f"cannot write the output {out_dir}: {exc.strerror or exc}") from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a checkpoint is an ordinary directory
    return tmp


def nonfinite_tensors(directory: Path) -> list[str]:
    """``file: tensor`` for every floating tensor holding NaN or infinity.

    >>> nonfinite_tensors(Path("out/checkpoint"))   # doctest: +SKIP
    ['model.safetensors: model.norm.weight']
    """
    import torch
    from safetensors import safe_open

    bad = []
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as fh:
            for name in fh.keys():
                tensor = fh.get_tensor(name)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    bad.append(f"{path.name}: {name}")
    return bad


def _write_marker(directory: Path) -> None:
    from traitgraph import __version__

    text = json.dumps({"tool": "traitgraph", "kind": "checkpoint", "version": __version__}, sort_keys=True)
    (directory / MARKER).write_text(text + "\n", encoding="utf-8")


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def install(staging: Path, out_dir: Path) -> None:
    """Check ``staging`` for non-finite values, mark it as traitgraph's, and swap it
    in for ``out_dir`` (whose old content, if any, is deleted only after the swap).

    A non-finite tensor is a :class:`BuildError` naming file and tensor; then
    nothing is installed and ``out_dir`` is left as it was.
    """
    fault_point("link")
    bad = nonfinite_tensors(staging)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise BuildError(
            f"the merged checkpoint holds NaN or infinite values ({shown}); nothing was installed "
            f"into {out_dir}: check the weights and merge settings (lambda, density)"
        )
    _write_marker(staging)
    check_replaceable(out_dir)
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-{os.getpid()}-", dir=out_dir.parent))
        os.rmdir(old)
        os.rename(out_dir, old)
        fault_point("install")
    os.rename(staging, out_dir)
    _fsync_dir(out_dir.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
