"""The build lock on an output directory, and the workers that must not outlive it.

One build writes into one output directory at a time: :class:`OutputLock`
holds an exclusive ``flock`` on ``OUT/.traitgraph/build.lock`` (holding the
owner's ``pid N``) for the life of the build. Three rules keep it from ever
getting stuck:

* A process forked while the lock is held (doit's ``-n N`` workers) drops its
  copy of the lock at once and is killed by the kernel when the build process
  dies (``PR_SET_PDEATHSIG``), so killing a build with SIGTERM or SIGKILL frees
  the lock and leaves no worker behind.
* The lock is released by the kernel when its owner dies, whatever the signal.
* A lock file whose recorded owner is gone, but which something else still
  holds (an orphan of an older build), is taken over with a warning.

>>> with OutputLock(OutputLayout(Path("out"))):   # doctest: +SKIP
...     run_the_build()
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import sys
from typing import IO, TYPE_CHECKING

from traitgraph.atomic import pid_alive
from traitgraph.errors import BuildError

if TYPE_CHECKING:
    from traitgraph.builder.plan import OutputLayout

#: lock files held by this process (closed in forked children)
_HELD: list[IO[str]] = []
_PR_SET_PDEATHSIG = 1


def _in_forked_child() -> None:
    """After ``fork``: let go of every build lock and die with the parent."""
    if not _HELD:
        return
    for fh in _HELD:
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, fh.fileno())  # drops this child's reference to the locked file
        os.close(devnull)
    _HELD.clear()
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


os.register_at_fork(after_in_child=_in_forked_child)


def _recorded_pid(text: str) -> int | None:
    parts = text.split()
    return int(parts[1]) if len(parts) == 2 and parts[0] == "pid" and parts[1].isdigit() else None


class OutputLock:
    """An exclusive lock on an output directory for the length of a build.

    A second build on the same directory is refused with a clear message
    instead of interleaving its writes with the first one's.
    """

    def __init__(self, out: OutputLayout):
        self.out = out
        self._fh: IO[str] | None = None

    def _try_lock(self) -> tuple[IO[str] | None, str]:
        """(the locked file, "") or (None, what the file says about its holder)."""
        fh = open(self.out.build_lock, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip()
            fh.close()
            return None, holder
        if os.fstat(fh.fileno()).st_ino != os.stat(self.out.build_lock).st_ino:
            fh.close()  # another build replaced a stale lock file meanwhile
            return None, ""
        return fh, ""

    def acquire(self) -> OutputLock:
        try:
            self.out.state.mkdir(parents=True, exist_ok=True)
            fh, holder = self._try_lock()
        except OSError as exc:
            raise BuildError(f"cannot write to the output directory {self.out.root}: {exc.strerror or exc}") from None
        pid = _recorded_pid(holder)
        if fh is None and pid is not None and not pid_alive(pid):
            print(
                f"warning: taking over the build lock of {self.out.root}: its owner (pid {pid}) is gone",
                file=sys.stderr,
            )
            self.out.build_lock.unlink(missing_ok=True)
            fh, holder = self._try_lock()
        if fh is None:
            raise BuildError(
                f"another build is writing to {self.out.root} ({holder or 'another process'}); wait for it to "
                "finish or build into another directory (doit out=DIR)"
            )
        fh.seek(0)
        previous = _recorded_pid(fh.read().strip())
        if previous is not None and previous != os.getpid() and not pid_alive(previous):
            print(f"warning: the last build into {self.out.root} (pid {previous}) did not finish", file=sys.stderr)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        self._fh = fh
        _HELD.append(fh)
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.seek(0)
            self._fh.truncate()  # an empty lock file: the last build finished
            self._fh.flush()
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            if self._fh in _HELD:
                _HELD.remove(self._fh)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
