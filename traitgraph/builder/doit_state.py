"""doit's state database for ``traitgraph build``: sqlite that survives losing its file.

doit keeps task values in memory during a run and writes them to
``OUT/.traitgraph/doit.sqlite`` at the end. If that file (or its directory)
is deleted mid-build, sqlite refuses the final write ("attempt to write a
readonly database") and doit exits 3 although every task succeeded. The
truth lives in the cache and the lock file, so :class:`RecoveringSqliteDB`
recreates the database, writes what it has, and warns.

``traitgraph build`` registers it as the doit backend :data:`BACKEND_NAME`::

    DoitMain(loader, extra_config={"BACKEND": BACKEND_PLUGIN})
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

from doit.dependency import SqliteDB

#: the backend's name in DOIT_CONFIG and its doit plugin entry
BACKEND_NAME = "traitgraph-sqlite"
BACKEND_PLUGIN = {BACKEND_NAME: "traitgraph.builder.doit_state:RecoveringSqliteDB"}


class RecoveringSqliteDB(SqliteDB):
    """doit's ``sqlite3`` backend; a database file lost mid-run is recreated at the end."""

    desc = "sqlite3, recreated if deleted during the build"

    def dump(self) -> None:
        try:
            super().dump()
        except sqlite3.Error as exc:
            print(
                f"warning: doit's state {self.name} changed during the build ({exc}); recreated it "
                "(the next build re-verifies cached vectors)",
                file=sys.stderr,
            )
            Path(self.name).parent.mkdir(parents=True, exist_ok=True)
            Path(self.name).unlink(missing_ok=True)
            self._dirty = set(self._cache)
            self._conn = self._sqlite3(self.name)
            super().dump()
