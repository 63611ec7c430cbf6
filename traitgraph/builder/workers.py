"""A watchdog for doit's parallel workers (``traitgraph build -n N``).

doit's process runner waits for each worker's result on a queue. A worker
killed outright (the out-of-memory killer, ``kill -9``) never answers, so the
build would wait forever, holding its output lock. :func:`watch_workers` runs a
daemon thread that notices a worker killed by a signal, says so, and ends the
build (exit status 1); the other workers die with it (see
:mod:`traitgraph.builder.output_lock`) and the kernel frees the lock.

>>> watch_workers()   # doctest: +SKIP
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time

#: exit status of a build stopped because a worker was killed (a failed run, not a user mistake)
WORKER_KILLED_STATUS = 1


#: signals that end a worker without an answer to doit; doit's own stop (SIGTERM) is not one of them
FATAL_SIGNALS = frozenset({signal.SIGKILL, signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT})


def killed_worker(workers: set[multiprocessing.Process]) -> multiprocessing.Process | None:
    """The first worker that a fatal signal ended, if any (polling reaps it as ``join`` would)."""
    for worker in sorted(workers, key=lambda w: w.pid or 0):
        code = worker.exitcode
        if code is not None and code < 0 and -code in FATAL_SIGNALS:
            return worker
    return None


def _watch(interval: float) -> None:
    seen: set[multiprocessing.Process] = set()
    while True:
        seen.update(multiprocessing.active_children())
        worker = killed_worker(seen)
        if worker is not None:
            name = signal.Signals(-worker.exitcode).name
            print(
                f"error: a build worker (pid {worker.pid}) was killed by {name} (out of memory, or kill -9?); "
                "the build stopped; run it again to resume (finished nodes are kept)",
                file=sys.stderr,
                flush=True,
            )
            sys.stdout.flush()
            os._exit(WORKER_KILLED_STATUS)
        time.sleep(interval)


def watch_workers(interval: float = 0.2) -> threading.Thread:
    """Start the watchdog thread (a daemon: it ends with the build)."""
    thread = threading.Thread(target=_watch, args=(interval,), name="traitgraph-worker-watchdog", daemon=True)
    thread.start()
    return thread
