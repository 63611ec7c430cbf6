"""Task vectors on disk: τ = W_trained − W_base, one safetensors file per node.

The file holds one tensor per base weight that training changed, under the
base checkpoint's own tensor names (``model.layers.0.self_attn.q_proj.weight``),
and a provenance record in the safetensors metadata::

    __metadata__ = {"traitgraph.task_vector/1": "<TaskVectorMeta as JSON>"}

(One key only: safetensors writes metadata from a hash map whose order
varies between processes, and identical training must give identical bytes.)

Nothing else in traitgraph opens these files by hand: use :func:`save_task_vector`,
:func:`load_task_vector`, :func:`read_task_vector_meta` and
:func:`open_task_vector` (memory-mapped, for the streaming linker).

>>> save_task_vector("tau.safetensors", {"w": torch.ones(2)}, meta)   # doctest: +SKIP
>>> tensors, meta = load_task_vector("tau.safetensors")              # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import torch

from traitgraph.atomic import atomic_path, sha256_file
from traitgraph.errors import BuildError

FORMAT = "traitgraph.task_vector/1"  # the one metadata key


class TaskVectorMeta(BaseModel):
    """Provenance of one task vector, stored inside the file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node_id: str = Field(description="The node this vector was trained for.")
    node_hash: str = Field(description="The node's training hash (the cache key).")
    base_fingerprint: str = Field(description="Fingerprint of the base weights it is relative to.")
    optimizer: dict[str, Any] = Field(description="Optimizer name and effective settings.")
    training: dict[str, Any] = Field(description="Effective training settings.")
    steps: int = Field(description="Optimizer steps taken.")
    tokens: int = Field(description="Response (loss) tokens seen in training.")
    final_loss: float = Field(description="Smoothed training loss at the last step.")
    loss_curve: list[float] = Field(description="Training loss per step.")
    oscillation: float = Field(description="max/min of the smoothed loss over the last third of training (1.0 = flat).")
    dtype: str = Field(description="Tensor dtype on disk.")
    traitgraph_version: str = Field(description="Version of traitgraph that trained it.")
    seconds: float = Field(
        default=0.0,
        description="Wall time of training; reported, never stored in the file (it would make identical vectors differ).",
    )
    monitor: dict[str, Any] | None = Field(
        default=None,
        description="The training monitor's checks (step, validation and general-text loss) and the kept step; "
        "absent when the monitor is off.",
    )


def save_task_vector(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: TaskVectorMeta) -> str:
    """Write τ atomically (temp file, then rename); return the file's sha256."""
    from safetensors.torch import save_file

    if not tensors:
        raise BuildError(f"task vector for node '{meta.node_id}' is empty: training changed no weight")
    contiguous = {k: v.detach().contiguous().cpu() for k, v in sorted(tensors.items())}
    with atomic_path(path) as tmp:
        unstored = {"seconds"} | ({"monitor"} if meta.monitor is None else set())
        save_file(contiguous, str(tmp), metadata={FORMAT: meta.model_dump_json(exclude=unstored)})
    return sha256_file(path)


def _meta_from(handle: Any, path: Path) -> TaskVectorMeta:
    raw = handle.metadata() or {}
    if FORMAT not in raw:
        raise BuildError(f"{path}: not a traitgraph task vector (no '{FORMAT}' metadata)")
    return TaskVectorMeta.model_validate(json.loads(raw[FORMAT]))


def read_task_vector_meta(path: str | os.PathLike) -> TaskVectorMeta:
    """Read only the provenance record: the safetensors header, no tensors and no
    torch import, so up-to-date checks over many nodes stay fast."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if size > 100_000_000:
                raise ValueError(f"header of {size} bytes")
            header = json.loads(fh.read(size))
        raw = header.get("__metadata__") or {}
        if FORMAT not in raw:
            raise BuildError(f"{path}: not a traitgraph task vector (no '{FORMAT}' metadata)")
        return TaskVectorMeta.model_validate(json.loads(raw[FORMAT]))
    except BuildError:
        raise
    except Exception as exc:  # a torn or foreign file
        raise BuildError(f"{path}: cannot read task vector ({exc})") from exc


def load_task_vector(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], TaskVectorMeta]:
    """Load every tensor and the metadata of a task vector."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = _meta_from(handle, path)
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except BuildError:
        raise
    except Exception as exc:
        raise BuildError(f"{path}: cannot read task vector ({exc})") from exc
    return tensors, meta


def open_task_vector(path: str | os.PathLike):
    """A memory-mapped ``safe_open`` handle, for reading one tensor at a time.

    >>> with open_task_vector(p) as tv:                    # doctest: +SKIP
    ...     if name in tv.keys(): delta = tv.get_tensor(name)
    """
    from safetensors import safe_open

    return safe_open(str(path), framework="pt")
