"""Crash points for the fault-injection test (tests/test_fault_injection.py).

With ``TRAITGRAPH_FAULT=<point>`` in the environment, the process that reaches
:func:`fault_point` with that name kills itself with SIGKILL, as a power cut or
``kill -9`` would. The points are ``train`` (a node's training begun, nothing
saved), ``commit`` (vector saved, its cache record not yet written), ``link``
(checkpoint staged, not installed), ``install`` (between the two renames of the
install), ``lock`` (checkpoint installed, lock not yet written) and ``eval``
(linked and locked, the report not yet written). Unset, it does nothing.

>>> fault_point("link")   # no TRAITGRAPH_FAULT: returns
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "TRAITGRAPH_FAULT"


def fault_point(name: str) -> None:
    """SIGKILL this process when ``TRAITGRAPH_FAULT`` names this point."""
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
