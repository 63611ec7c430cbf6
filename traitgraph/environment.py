"""Thread counts read from the environment, one rule for all of them.

``TRAITGRAPH_TRAIN_THREADS``, ``TRAITGRAPH_CONSOLIDATE_THREADS`` and
``TRAITGRAPH_EVAL_THREADS`` each hold a whole number of torch threads, 1 or
more. Anything else is the user's mistake, said in words (exit 2) before a
build starts, not a traceback from deep inside a task.

>>> import os; os.environ["TRAITGRAPH_TRAIN_THREADS"] = "two"
>>> thread_count("TRAITGRAPH_TRAIN_THREADS", 1)
Traceback (most recent call last):
traitgraph.errors.UserError: environment variable TRAITGRAPH_TRAIN_THREADS: expected a whole number of threads (1 or more), got 'two'
>>> del os.environ["TRAITGRAPH_TRAIN_THREADS"]
>>> thread_count("TRAITGRAPH_TRAIN_THREADS", 1)
1
"""

from __future__ import annotations

import os

from traitgraph.errors import UserError

#: torch threads per training process (fixed, so vectors are bit-identical)
TRAIN_THREADS_ENV = "TRAITGRAPH_TRAIN_THREADS"
#: torch threads of ``merge.consolidate`` (fixed like training's)
CONSOLIDATE_THREADS_ENV = "TRAITGRAPH_CONSOLIDATE_THREADS"
#: torch threads for evaluation (default: every idle core)
EVAL_THREADS_ENV = "TRAITGRAPH_EVAL_THREADS"


def thread_count(variable: str, default: int | None) -> int | None:
    """The thread count in ``$variable``, or ``default`` when it is unset or empty."""
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise UserError(f"environment variable {variable}: expected a whole number of threads (1 or more), got {raw!r}")
    return int(raw)


def check_thread_settings() -> None:
    """Raise the :class:`UserError` of the first thread-count variable that is set wrongly."""
    for variable in (TRAIN_THREADS_ENV, CONSOLIDATE_THREADS_ENV, EVAL_THREADS_ENV):
        thread_count(variable, None)
