"""What a build of one specs directory into one output directory would do.

A :class:`BuildPlan` is computed from the specs alone (cheaply: no model is
loaded, the base is fingerprinted from stat-cached file hashes) and answers
the up-to-date questions of every task:

* ``train:<node>`` is up to date when the cache holds a fresh vector for the
  node's current training hash;
* ``link`` is up to date when the lock file in the output directory records
  exactly the current inputs (base fingerprint, node hashes, vector hashes,
  weights, merge settings) and its outputs are still the files it wrote.

Output directory layout::

    OUT/checkpoint/          the linked Hugging Face checkpoint
    OUT/traitgraph.lock      the merge recipe (see traitgraph.linker.lock)
    OUT/build.log            one JSON line per task that did work
    OUT/.traitgraph/         build state: output stamps, the build lock
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traitgraph import versions
from traitgraph.atomic import write_text_atomic
from traitgraph.builder.cache import VectorCache
from traitgraph.errors import BuildError
from traitgraph.graph import Spec, load_specs
from traitgraph.graph.hashing import node_hashes, training_payload


@dataclass(frozen=True)
class OutputLayout:
    """Where a build writes, under one output directory."""

    root: Path

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint"

    @property
    def lock(self) -> Path:
        return self.root / "traitgraph.lock"

    @property
    def log(self) -> Path:
        return self.root / "build.log"

    @property
    def state(self) -> Path:
        return self.root / ".traitgraph"

    @property
    def stamps(self) -> Path:
        """Size and mtime of each output file when the link wrote it."""
        return self.state / "link-stamps.json"

    @property
    def build_lock(self) -> Path:
        return self.state / "build.lock"


def base_fingerprint_of(spec: Spec) -> str:
    from traitgraph.compiler.base_model import base_fingerprint

    return base_fingerprint(spec.personality.base, spec.specs_dir)


@dataclass
class BuildPlan:
    """The current specs, their hashes, the cache and the output layout."""

    spec: Spec
    fingerprint: str
    hashes: dict[str, str]
    cache: VectorCache
    out: OutputLayout
    _payloads: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    executor: Any = field(default=None, repr=False)
    """Where ``train:<node>`` runs: None for this process, or a
    :class:`~traitgraph.builder.ray_executor.RayExecutor`."""

    def __repr__(self) -> str:  # short: doit info prints it beside every uptodate check
        return f"BuildPlan({self.spec.specs_dir} -> {self.out.root}, {len(self.hashes)} nodes)"

    @classmethod
    def load(cls, specs_dir: str | Path, out_dir: str | Path, cache_dir: str | Path | None = None) -> BuildPlan:
        spec = load_specs(specs_dir)
        fingerprint = base_fingerprint_of(spec)
        return cls(
            spec=spec,
            fingerprint=fingerprint,
            hashes=node_hashes(spec, fingerprint),
            cache=VectorCache(cache_dir),
            out=OutputLayout(Path(out_dir)),
        )

    def payload(self, node_id: str) -> dict[str, Any]:
        """The document behind the node's training hash."""
        if node_id not in self._payloads:
            self._payloads[node_id] = training_payload(self.spec, node_id, self.fingerprint, self.hashes)
        return self._payloads[node_id]

    # ------------------------------------------------------------------ up to date

    def node_is_built(self, node_id: str) -> bool:
        return self.cache.is_fresh(self.hashes[node_id])

    def link_inputs(self) -> dict[str, Any]:
        """Everything the linked checkpoint depends on, in the lock's terms."""
        nodes = []
        for node_id in sorted(self.spec.nodes):
            record = self.cache.record(self.hashes[node_id])
            nodes.append(
                {
                    "id": node_id,
                    "training_hash": self.hashes[node_id],
                    "vector_sha256": record.sha256 if record else None,
                    "weight": self.spec.nodes[node_id].spec.weight,
                }
            )
        return {
            "base": {"reference": self.spec.personality.base, "fingerprint": self.fingerprint},
            "nodes": nodes,
            "merge": self.spec.personality.merge.model_dump(mode="json", by_alias=True),
            "linker": versions.LINKER_VERSION,
        }

    def last_lock(self):
        """The lock file of the last link into OUT, or None when there is none (or it is unreadable)."""
        from traitgraph.linker.lock import read_lock

        if not self.out.lock.is_file():
            return None
        try:
            return read_lock(self.out.lock)
        except BuildError:
            return None

    def link_is_current(self) -> bool:
        """The lock records the current inputs and its outputs are untouched."""
        lock = self.last_lock()
        if lock is None or not self.out.stamps.is_file():
            return False
        if lock_inputs(lock) != self.link_inputs():
            return False
        return outputs_match_stamps(self.out, lock.outputs)


def lock_inputs(lock) -> dict[str, Any]:
    """The inputs a lock file records, in the same shape as :meth:`BuildPlan.link_inputs`."""
    return {
        "base": {"reference": lock.base.reference, "fingerprint": lock.base.fingerprint},
        "nodes": sorted(
            (
                {"id": n.id, "training_hash": n.training_hash, "vector_sha256": n.vector_sha256, "weight": n.weight}
                for n in lock.nodes
            ),
            key=lambda n: n["id"],
        ),
        "merge": lock.merge.model_dump(mode="json", by_alias=True),
        "linker": lock.linker_version,
    }


def remove_outputs(*paths: Path) -> None:
    """``doit clean``: remove outputs the build wrote (files or directories); missing ones are fine."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        print(f"removed {path}")


def write_stamps(out: OutputLayout, outputs: dict[str, str]) -> None:
    stamps = {}
    for name in outputs:
        st = (out.checkpoint / name).stat()
        stamps[name] = [st.st_size, st.st_mtime_ns]
    write_text_atomic(out.stamps, json.dumps(stamps, sort_keys=True, indent=1))


def outputs_match_stamps(out: OutputLayout, outputs: dict[str, str]) -> bool:
    """Cheap output check: every file the lock lists has the size and mtime it was written with."""
    try:
        stamps = json.loads(out.stamps.read_text())
    except (OSError, ValueError):
        return False
    if set(stamps) != set(outputs):
        return False
    for name, (size, mtime_ns) in stamps.items():
        try:
            st = (out.checkpoint / name).stat()
        except OSError:
            return False
        if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
            return False
    return True


def log_event(out: OutputLayout, task: str, **fields: Any) -> None:
    """Append one JSON line to ``OUT/build.log`` (a record of the work done)."""
    out.root.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": round(time.time(), 3), "task": task, **fields}, sort_keys=True)
    with open(out.log, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
