"""The content-addressed cache of task vectors, keyed by training hash.

Layout (``$TRAITGRAPH_CACHE``, default ``~/.cache/traitgraph``)::

    vectors/<hash>.safetensors     the task vector (see traitgraph.compiler.task_vector)
    vectors/<hash>.json            its record: file sha256, size, mtime_ns, and the
                                   training payload the hash was computed from
    bases/<fingerprint>/           converted base models (traitgraph.compiler.base_model)

A vector counts as present only when its record exists and matches the file.
Writing order makes this crash-safe: the vector is renamed into place first,
its record second, so a crash between the two leaves an entry without a
record, which is treated as missing and rebuilt. Two builds that train the
same node at once both rename identical content into place; the last wins.

Two levels of checking:

* :meth:`VectorCache.is_fresh` (cheap, for up-to-date checks): the record
  exists, the file's size and mtime equal the record's, and the header's
  ``node_hash`` equals the key.
* :meth:`VectorCache.verify` (full, before a vector is used): the file's
  sha256 equals the record's. A mismatch is a corrupt entry: it is reported
  and removed so that the next build retrains it.

A process that saves a vector holds a shared lock on ``vectors/.writers.lock``
from before the first byte until its record is written (:meth:`VectorCache.writing`);
``gc`` needs the exclusive lock, so it never deletes a vector being saved.
Temporary files of writers that died are swept by the next writer.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from traitgraph.atomic import sha256_file, sweep_stale_temps, write_text_atomic
from traitgraph.compiler.base_model import default_cache_dir
from traitgraph.errors import BuildError


class CorruptEntry(BuildError):
    """A cached vector whose bytes no longer match its record (it has been evicted)."""


class VectorRecord(BaseModel):
    """``vectors/<hash>.json``: what the cache knows about one vector."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node_id: str
    training_hash: str
    sha256: str
    size: int
    mtime_ns: int
    payload: dict[str, Any]
    """The document the training hash was computed from (for `traitgraph status`)."""


@dataclass(frozen=True)
class CacheEntry:
    training_hash: str
    node_id: str
    path: Path
    size: int


class VectorCache:
    """Task vectors by training hash.

    >>> cache = VectorCache()                            # doctest: +SKIP
    >>> cache.is_fresh(h) or train_into(cache.vector_path(h))  # doctest: +SKIP
    """

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.vectors = self.root / "vectors"

    def vector_path(self, training_hash: str) -> Path:
        return self.vectors / f"{training_hash}.safetensors"

    def record_path(self, training_hash: str) -> Path:
        return self.vectors / f"{training_hash}.json"

    def record(self, training_hash: str) -> VectorRecord | None:
        path = self.record_path(training_hash)
        try:
            return VectorRecord.model_validate_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the cache's shared writer lock while training and saving a vector; ``gc``
        refuses to run while any writer holds it. Stale temporaries of dead writers are swept first.

        >>> with cache.writing():                          # doctest: +SKIP
        ...     save_task_vector(cache.vector_path(h), tau, meta); cache.commit(h, node_id, payload)
        """
        with self._writers_lock(fcntl.LOCK_SH):
            sweep_stale_temps(self.vectors)
            yield

    @contextlib.contextmanager
    def _writers_lock(self, mode: int) -> Iterator[None]:
        try:
            self.vectors.mkdir(parents=True, exist_ok=True)
            fh = open(self.vectors / ".writers.lock", "a")
        except OSError as exc:
            raise BuildError(f"cannot write to the task-vector cache {self.vectors}: {exc.strerror or exc}") from None
        with fh:
            try:
                fcntl.flock(fh, mode)
            except BlockingIOError:
                raise BuildError(
                    f"a build is saving task vectors into {self.vectors}; run `traitgraph cache gc` "
                    "again when it has finished"
                ) from None
            yield

    def commit(self, training_hash: str, node_id: str, payload: dict[str, Any]) -> VectorRecord:
        """Record a vector that was just written to :meth:`vector_path`."""
        path = self.vector_path(training_hash)
        stat = path.stat()
        record = VectorRecord(
            node_id=node_id,
            training_hash=training_hash,
            sha256=sha256_file(path),
            size=stat.st_size,
            mtime_ns=stat.st_mtime_ns,
            payload=payload,
        )
        write_text_atomic(self.record_path(training_hash), record.model_dump_json(indent=1))
        return record

    def is_fresh(self, training_hash: str) -> bool:
        """Cheap check: record present and matching the file's size, mtime and header."""
        from traitgraph.compiler.task_vector import read_task_vector_meta

        record = self.record(training_hash)
        path = self.vector_path(training_hash)
        if record is None or not path.is_file():
            return False
        stat = path.stat()
        if (stat.st_size, stat.st_mtime_ns) != (record.size, record.mtime_ns):
            return False
        try:
            return read_task_vector_meta(path).node_hash == training_hash
        except BuildError:
            return False

    def verify(self, training_hash: str) -> Path:
        """Full check before use; returns the vector's path.

        A missing entry raises :class:`BuildError`; a corrupt one is removed
        and raises :class:`CorruptEntry`, so the caller can retrain it.
        """
        record = self.record(training_hash)
        path = self.vector_path(training_hash)
        if record is None or not path.is_file():
            raise BuildError(f"task vector {training_hash[:12]} is not in the cache ({self.vectors})")
        actual = sha256_file(path)
        if actual != record.sha256:
            self.evict(training_hash)
            raise CorruptEntry(
                f"cached task vector of node '{record.node_id}' ({training_hash[:12]}) was corrupt "
                f"(sha256 {actual[:12]}, recorded {record.sha256[:12]}) and has been removed"
            )
        return path

    def evict(self, training_hash: str) -> None:
        for p in (self.record_path(training_hash), self.vector_path(training_hash)):
            p.unlink(missing_ok=True)

    def entries(self) -> list[CacheEntry]:
        out = []
        for rec_path in sorted(self.vectors.glob("*.json")):
            record = self.record(rec_path.stem)
            vec = self.vector_path(rec_path.stem)
            if record is not None and vec.is_file():
                out.append(CacheEntry(rec_path.stem, record.node_id, vec, vec.stat().st_size))
        return out

    def gc(self, keep: set[str]) -> tuple[int, int]:
        """Remove every entry (and stray temp file) whose hash is not in ``keep``.

        Returns (entries removed, bytes freed).
        """
        removed = freed = 0
        if not self.vectors.is_dir():
            return 0, 0
        with self._writers_lock(fcntl.LOCK_EX | fcntl.LOCK_NB):
            for path in sorted(self.vectors.iterdir()):
                key = path.name.split(".")[0] if not path.name.startswith(".") else None
                if key in keep or path.name == ".writers.lock":
                    continue
                size = path.stat().st_size
                path.unlink(missing_ok=True)
                freed += size
                removed += path.suffix == ".safetensors"
        return removed, freed


def payload_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two training payloads differ (for `traitgraph status`).

    >>> payload_diff({"a": {"b": 1}}, {"a": {"b": 2}})
    ['a.b: 1 -> 2']
    """
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                out.append(f"{path}: added")
            elif key not in new:
                out.append(f"{path}: removed")
            else:
                out.extend(payload_diff(old[key], new[key], path))
        return out
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return [f"{prefix}: {len(old)} -> {len(new)} items"]
        out = []
        for i, (a, b) in enumerate(zip(old, new)):
            out.extend(payload_diff(a, b, f"{prefix}[{i}]"))
        return out
    if old != new:
        short = lambda v: json.dumps(v)[:40]  # noqa: E731
        return [f"{prefix}: {short(old)} -> {short(new)}"]
    return []
