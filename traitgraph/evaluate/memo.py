"""Remembered scores: the scores of one fixed model, kept in one JSON file under ``<cache>/eval/``.

Scores of the base and of each "node alone" model are a pure function of the
weights and the data, so after a one-node change only that node and the
linked checkpoint are scored again.

>>> memo = ScoreMemo(None, "base abc")       # no directory: remembers in memory only
>>> memo.lookup("text", ["a", "b"], lambda items: [len(i) for i in items])
[1, 1]
>>> memo.lookup("text", ["a"], lambda items: 1 / 0)  # remembered: not computed again
[1]
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from traitgraph.atomic import write_text_atomic
from traitgraph.evaluate.inputs import SCORING_VERSION, canonical, sha256_text


class ScoreMemo:
    """Scores of one fixed model (named by ``model_key``), remembered in one JSON file.

    Items are keyed by a hash of their content, so a changed eval case is a
    miss and an unchanged one a hit. Concurrent writers are harmless: each
    writes the whole file atomically; the last one wins.
    """

    def __init__(self, directory: Path | None, model_key: str):
        self.file = None if directory is None else Path(directory) / f"{sha256_text(model_key)}.json"
        self.data: dict[str, Any] = {}
        if self.file is not None:
            try:
                self.data = json.loads(self.file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self.data = {}
        self.dirty = False

    @staticmethod
    def key(kind: str, item: Any) -> str:
        return sha256_text(canonical([SCORING_VERSION, kind, item]))

    def has_all(self, kind: str, items: Sequence[Any]) -> bool:
        return all(self.key(kind, it) in self.data for it in items)

    def lookup(self, kind: str, items: Sequence[Any], compute: Callable[[list[Any]], list[Any]]) -> list[Any]:
        """``compute`` the values of the items not remembered yet; return every value in order."""
        keys = [self.key(kind, it) for it in items]
        missing = [i for i, k in enumerate(keys) if k not in self.data]
        if missing:
            values = compute([items[i] for i in missing])
            for i, v in zip(missing, values):
                self.data[keys[i]] = v
            self.dirty = True
        return [self.data[k] for k in keys]

    def get(self, kind: str, item: Any) -> Any | None:
        """The value remembered for ``item``, or None."""
        return self.data.get(self.key(kind, item))

    def put(self, kind: str, item: Any, value: Any) -> None:
        """Remember ``value`` for ``item`` (written by :meth:`save`)."""
        self.data[self.key(kind, item)] = value
        self.dirty = True

    def save(self) -> None:
        if self.file is None or not self.dirty:
            return
        try:
            write_text_atomic(self.file, json.dumps(self.data))
        except OSError:  # a read-only cache only costs time
            pass
        self.dirty = False
