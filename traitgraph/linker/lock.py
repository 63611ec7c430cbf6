"""The lock file: the exact recipe of one linked checkpoint.

    {
      "base": {"fingerprint": "sha256:...", "reference": "smollm2-135m-instruct"},
      "merge": {"density": 0.2, "dtype": "auto", "lambda": 1.0, "method": "ties", ...},
      "nodes": [{"id": "pirate", "training_hash": "...", "vector_sha256": "...", "weight": 0.8}, ...],
      "outputs": {"config.json": "...", "model.safetensors": "...", ...},
      "linker_version": "1",
      "traitgraph_version": "0.1.0"
    }

Keys are sorted and the file is written atomically, so the same build gives
the same bytes. :func:`relink` rebuilds exactly the checkpoint a lock
describes from the cached task vectors: each vector's sha256 is checked
against the lock before linking, and every output file's after, before
anything is renamed into place.

>>> lock = read_lock("out/traitgraph.lock")                                  # doctest: +SKIP
>>> relink(lock, cache.vector_path, base_dir, Path("restored/checkpoint"))   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from traitgraph import versions
from traitgraph.atomic import sha256_file, write_text_atomic
from traitgraph.errors import BuildError, UserError, field_path, validation_message
from traitgraph.graph.schema import MergeSettings

#: a sha256 in hex: what every hash field of a lock must be (never a path: a lock is shared and downloaded)
HEX_SHA256 = r"^[0-9a-f]{64}$"
#: an output file name: a plain name inside the checkpoint directory, no separators, not hidden
OUTPUT_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"


class _LockModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)


class LockBase(_LockModel):
    """The base the vectors are relative to."""

    reference: str = Field(description="The personality's `base:` as written.")
    fingerprint: str = Field(description="Fingerprint of the base weights (sha256:...).")


class LockNode(_LockModel):
    """One linked task vector."""

    id: str = Field(description="Node id.")
    training_hash: str = Field(
        pattern=HEX_SHA256, description="The node's training hash (the cache key of its vector; 64 hex digits)."
    )
    vector_sha256: str = Field(pattern=HEX_SHA256, description="sha256 of the task-vector file that was linked.")
    weight: float = Field(description="The weight it was linked with.")
    device: str | None = Field(
        default=None,
        description="Where it trained and in what precision (`cuda/bf16-autocast`); absent for the cpu.",
    )


class LockFile(_LockModel):
    """``traitgraph.lock``: every input and output hash of one link, and the merge recipe."""

    traitgraph_version: str = Field(description="Version of traitgraph that linked it.")
    linker_version: str | None = Field(
        default=None,
        description="Version of the linking code that wrote the outputs (`traitgraph.versions.LINKER_VERSION`); "
        "absent in locks written before it was recorded.",
    )
    base: LockBase
    nodes: list[LockNode] = Field(description="The linked vectors (any order; the linker sorts by id).")
    merge: MergeSettings = Field(description="The full merge settings.")
    outputs: dict[Annotated[str, Field(pattern=OUTPUT_NAME)], Annotated[str, Field(pattern=HEX_SHA256)]] = Field(
        description="Output file (a plain name in the checkpoint dir) -> sha256."
    )


def lock_json(lock: LockFile) -> str:
    """The lock as stable JSON: sorted keys, aliases (`lambda`), trailing newline."""
    data = lock.model_dump(mode="json", by_alias=True)
    if data["linker_version"] is None:  # a lock read from before linker versions: written back as it was
        del data["linker_version"]
    for node in data["nodes"]:
        if node["device"] is None:  # a cpu-trained node: the lock reads as before devices existed
            del node["device"]
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def write_lock(path: str | os.PathLike, lock: LockFile) -> None:
    """Write ``lock`` to ``path`` atomically."""
    write_text_atomic(path, lock_json(lock))


def read_lock(path: str | os.PathLike) -> LockFile:
    """Read and validate a lock file; a :class:`BuildError` naming the file and field otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BuildError(f"{path}: lock file not found") from None
    except RecursionError:
        raise BuildError(f"{path}: not a readable lock file (JSON nested too deeply)") from None
    except (OSError, ValueError) as exc:
        raise BuildError(f"{path}: not a readable lock file ({exc})") from None
    try:
        return LockFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{field_path(e['loc']) or '<top level>'}: {_lock_message(e)}" for e in exc.errors())
        raise BuildError(f"{path}: invalid lock file: {problems}") from None


def _lock_message(err: dict) -> str:
    if err["type"] == "string_pattern_mismatch" and "0-9a-f]{64}" in err["msg"]:
        return f"must be a sha256 in hex (64 digits 0-9a-f), got {err['input']!r}"
    return validation_message(err)


def verify_outputs(lock: LockFile, out_dir: str | os.PathLike) -> list[str]:
    """The output files (relative names) that are missing from ``out_dir`` or differ from the lock."""
    out_dir = Path(out_dir)
    bad = []
    for name, digest in sorted(lock.outputs.items()):
        path = out_dir / name
        if not path.is_file() or sha256_file(path) != digest:
            bad.append(name)
    return bad


def check_linker_version(lock: LockFile, where: str | os.PathLike) -> None:
    """A :class:`UserError` when another version of the linking code wrote ``lock``: this
    one would not write the bytes it records, so a relink is refused before any work. A
    lock from before linker versions were recorded is tried (its hashes decide)."""
    if lock.linker_version is not None and lock.linker_version != versions.LINKER_VERSION:
        raise UserError(
            f"{where}: linked by linker version {lock.linker_version} (traitgraph {lock.traitgraph_version}); "
            f"this traitgraph links with version {versions.LINKER_VERSION} and would not write the same bytes: "
            "relink it with the traitgraph that wrote it, or rebuild from the specs (`traitgraph build SPECS -o DIR`)"
        )


def relink(
    lock: LockFile,
    vector_path_for: Callable[[str], Path],
    base_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    progress: bool = True,
) -> dict[str, str]:
    """Rebuild the checkpoint ``lock`` describes into ``out_dir``; return its output hashes.

    ``vector_path_for(training_hash)`` says where the cached vector of a node
    is. A missing vector, or one whose sha256 is not the lock's, is a
    :class:`BuildError` naming the node; an output that differs from the lock
    (another base, another traitgraph) is one too, and ``out_dir`` is then left
    as it was. The caller checks the base's fingerprint.
    """
    from traitgraph.linker.link import LinkInput, link  # torch: only when relinking
    from traitgraph.linker.merging import MergeOptions

    check_linker_version(lock, "this lock")
    if lock.merge.consolidate.steps:
        raise UserError(
            "this lock's checkpoint was consolidated after linking (merge.consolidate), which trains on the "
            "nodes' examples: a lock file alone cannot rebuild it; rebuild it from the specs "
            "(`traitgraph build SPECS -o DIR`)"
        )
    inputs = []
    for node in lock.nodes:
        path = Path(vector_path_for(node.training_hash))
        if not path.is_file():
            raise BuildError(
                f"node '{node.id}': its task vector {node.training_hash[:12]} is not in the cache ({path}); "
                "it was garbage-collected or never built here: rebuild the specs that produced this lock"
            )
        digest = sha256_file(path)
        if digest != node.vector_sha256:
            raise BuildError(
                f"node '{node.id}': task vector {path} has sha256 {digest[:12]}, the lock recorded "
                f"{node.vector_sha256[:12]}; the file was modified or replaced, so this is not the locked build"
            )
        inputs.append(LinkInput(name=node.id, path=path, weight=node.weight))
    return link(
        base_dir,
        inputs,
        MergeOptions.from_settings(lock.merge),
        out_dir,
        dtype=lock.merge.dtype,
        max_shard_size=lock.merge.max_shard_size,
        progress=progress,
        expect=dict(lock.outputs),
    )
