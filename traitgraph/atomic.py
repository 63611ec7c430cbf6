"""Write files so that a reader never sees half of one.

Every artifact (task vector, checkpoint shard, lock file, report) is written to
a temporary name in the same directory, flushed to disk, then renamed over the
final name. ``os.replace`` is atomic on POSIX, so an interrupted build leaves
either the old file or the new one, never a torn one.

The file gets the mode any tool's new file gets (0666 less the umask), not
``mkstemp``'s private 0600, so a teammate or a CI job can read a report or a
lock file. A temporary name carries its writer's pid
(``.NAME.PID.XXXX.tmp``); :func:`sweep_stale_temps` removes those of
processes that are gone (a build killed mid-write).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: the suffix of every temporary file :func:`atomic_path` writes
TEMP_SUFFIX = ".tmp"


def current_umask() -> int:
    """The process's umask (reading it means setting it; it is put straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _writer_pid(name: str) -> int | None:
    """The pid in ``.NAME.PID.XXXX.tmp``, or None for a name that is not one of ours."""
    parts = name.split(".")
    if not name.startswith(".") or not name.endswith(TEMP_SUFFIX) or len(parts) < 4 or not parts[-3].isdigit():
        return None
    return int(parts[-3])


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (``kill(pid, 0)``).

    >>> pid_alive(os.getpid())
    True
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Remove :func:`atomic_path` temporaries in ``directory`` whose writer is gone; return them.

    >>> sweep_stale_temps("out")   # doctest: +SKIP
    [PosixPath('out/.traitgraph.lock.4242.k2j1x9.tmp')]
    """
    removed = []
    with contextlib.suppress(OSError):
        for path in Path(directory).iterdir():
            pid = _writer_pid(path.name)
            if pid is not None and pid != os.getpid() and not pid_alive(pid) and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return sorted(removed)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it into place on success.

    >>> with atomic_path("out/model.safetensors") as tmp:   # doctest: +SKIP
    ...     save_file(tensors, tmp)
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; a user-facing file gets the usual mode
        os.replace(tmp, final)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if exc.filename is None and exc.errno is not None:  # a failed write names no file: name ours
            raise OSError(exc.errno, exc.strerror, str(final)) from exc
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_text_atomic(final: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``final`` atomically."""
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(final: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``final`` atomically."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
