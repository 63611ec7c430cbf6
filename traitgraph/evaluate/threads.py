"""How many torch threads evaluation runs on: every idle core, or ``$TRAITGRAPH_EVAL_THREADS``.

>>> with torch_threads(1):   # doctest: +SKIP
...     evaluate_build(plan)
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

from traitgraph.environment import EVAL_THREADS_ENV, thread_count


def eval_threads() -> int:
    """``$TRAITGRAPH_EVAL_THREADS``, else every core that is idle right now (at least one).

    Eval numbers need not be bit-identical across thread counts, so more
    threads are free speed, but only on idle cores: on a 2-core machine with
    other work running, two threads measured 3× slower than one (each
    OpenMP barrier waits for a descheduled thread).

    >>> import os; os.environ[EVAL_THREADS_ENV] = "3"; eval_threads()
    3
    >>> del os.environ[EVAL_THREADS_ENV]
    """
    chosen = thread_count(EVAL_THREADS_ENV, None)
    if chosen is not None:
        return chosen
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    idle = idle_fraction()
    return cores if idle is None else max(1, min(cores, round(cores * idle)))


def idle_fraction(window: float = 0.3) -> float | None:
    """Share of CPU time spent idle over ``window`` seconds (Linux ``/proc/stat``); ``None`` elsewhere.

    >>> 0.0 <= (idle_fraction(0.05) or 0.0) <= 1.0
    True
    """

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
        return fields[3] + (fields[4] if len(fields) > 4 else 0), sum(fields)  # idle + iowait, total

    try:
        idle0, total0 = sample()
        time.sleep(window)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (idle1 - idle0) / (total1 - total0) if total1 > total0 else None


@contextmanager
def torch_threads(n: int):
    """Run the block on ``n`` torch threads, then restore the previous count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
