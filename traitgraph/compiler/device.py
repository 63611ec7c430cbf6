"""Where a node trains, in what precision, and the task-vector dtype by base size.

Three settings of :class:`~traitgraph.graph.schema.TrainingSettings` are
*policies* that resolve to concrete values before anything is hashed or
trained:

=================  ==========================================================
``device``         ``cpu`` (default), ``cuda``, ``mps``, or ``auto``: the
                   first of cuda, mps, cpu that the machine *planning* the
                   build has (the hash is computed there, so a Ray driver
                   without a GPU resolves ``auto`` to cpu: name ``cuda``
                   explicitly when the workers have GPUs).
precision          follows the device (:data:`PRECISION`): ``fp32`` on cpu
                   and mps; on cuda ``bf16-autocast``: fp32 master weights
                   and optimizer state, matmuls under ``torch.autocast`` in
                   bfloat16, τ taken in fp32.
``vector_dtype``   ``auto`` (default): ``bfloat16`` when the base has at least
                   :data:`BF16_VECTOR_PARAMETERS` parameters, else
                   ``float32``; or a dtype named outright.
=================  ==========================================================

**Hashes.** The resolved values enter the training hash and the vector's
provenance, but a cpu device is *left out* of both, so every cpu build keeps
the hashes and the bytes it had before devices existed; a cuda or mps vector
has a different hash (it is a different vector) and the lock file, which
records each node's training hash, names it.

**Determinism.** On cpu: bit-identical at a fixed torch thread count. On cuda,
:func:`training_device` turns on ``torch.use_deterministic_algorithms`` and
sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (before the first CUDA call), so the
same GPU model with the same torch/CUDA versions gives the same bits run after
run. A different GPU model, CUDA version or torch build, and any GPU versus
the cpu, differ in the last bits (different kernels sum in different orders).

>>> resolve_device("cpu")
'cpu'
>>> PRECISION["cuda"]
'bf16-autocast'
>>> vector_dtype_for(134_515_008), vector_dtype_for(7_000_000_000)
('float32', 'bfloat16')
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from traitgraph.errors import BuildError, UserError

DEVICE_CLASSES = ("cpu", "cuda", "mps")

#: Precision policy per device class (see module doc).
PRECISION: dict[str, str] = {"cpu": "fp32", "cuda": "bf16-autocast", "mps": "fp32"}

#: ``vector_dtype: auto`` stores τ in bfloat16 from this many base parameters up
#: (1B: a float32 τ of a 1B model is 4 GB per node; bfloat16 halves it).
BF16_VECTOR_PARAMETERS = 1_000_000_000

#: Parameter counts of the embedded bases (shipped as GGUF, whose header takes
#: seconds to read; tests check the figure against the file).
EMBEDDED_PARAMETERS: dict[str, int] = {"smollm2-135m-instruct": 134_515_008}

#: cuBLAS needs this workspace setting for deterministic results (PyTorch docs, "Reproducibility").
CUBLAS_WORKSPACE = ":4096:8"


# --------------------------------------------------------------------------- policy (pure)


def has_device(device: str) -> bool:
    """Whether this process can use the device class (torch is asked; cpu always)."""
    import torch

    if device == "cuda":
        return torch.cuda.is_available()
    if device == "mps":
        return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    return device == "cpu"


def available_device() -> str:
    """The best device class this process can use: cuda, then mps, then cpu."""
    return next(d for d in ("cuda", "mps", "cpu") if has_device(d))


def resolve_device(name: str) -> str:
    """A ``device`` setting as a device class; ``auto`` asks torch (imported only then).

    >>> resolve_device("cuda")
    'cuda'
    """
    if name == "auto":
        return available_device()
    if name not in DEVICE_CLASSES:
        raise UserError(f"training.device: unknown device '{name}' (use auto, {', '.join(DEVICE_CLASSES)})")
    return name


def vector_dtype_for(parameters: int, setting: str = "auto") -> str:
    """The task-vector dtype for a base of ``parameters`` parameters.

    >>> vector_dtype_for(10**10, "float32")
    'float32'
    """
    if setting != "auto":
        return setting
    return "bfloat16" if parameters >= BF16_VECTOR_PARAMETERS else "float32"


def training_record(settings, parameters: int) -> dict[str, Any]:
    """The effective training settings as JSON, with ``device`` and ``vector_dtype``
    resolved: the ``training`` part of the hash payload and of a vector's provenance.

    A cpu device is omitted (so cpu hashes and bytes are those of before devices
    existed); another device adds ``device`` and ``precision``.
    """
    record = settings.model_dump(mode="json", exclude={"device"})
    record["vector_dtype"] = vector_dtype_for(parameters, settings.vector_dtype)
    device = resolve_device(settings.device)
    if device != "cpu":
        record["device"] = device
        record["precision"] = PRECISION[device]
    return record


# --------------------------------------------------------------------------- base size (I/O)


def safetensors_parameters(directory: Path) -> int:
    """Parameters in a directory's ``*.safetensors`` files, from their headers only."""
    total = 0
    for path in sorted(Path(directory).glob("*.safetensors")):
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total


@lru_cache(maxsize=64)
def _parameters_of(reference: str, specs_dir: str | None, stamp: tuple) -> int:
    from traitgraph.compiler.base_model import _reference_kind

    if reference in EMBEDDED_PARAMETERS:
        return EMBEDDED_PARAMETERS[reference]
    _, directory = _reference_kind(reference, None if specs_dir is None else Path(specs_dir))
    return safetensors_parameters(directory)


def base_parameters(reference: str, specs_dir: Path | None = None) -> int:
    """Parameter count of a ``base:`` reference (headers only; cached per process).

    >>> base_parameters("smollm2-135m-instruct")
    134515008
    """
    if reference in EMBEDDED_PARAMETERS:
        return EMBEDDED_PARAMETERS[reference]
    where = Path(reference) if specs_dir is None else Path(specs_dir) / reference
    stamp = tuple((p.name, p.stat().st_mtime_ns) for p in sorted(where.glob("*.safetensors"))) if where.is_dir() else ()
    return _parameters_of(reference, None if specs_dir is None else str(specs_dir), stamp)


# --------------------------------------------------------------------------- runtime


@contextlib.contextmanager
def training_device(device: str, where: str) -> Iterator[Any]:
    """Yield the ``torch.device`` to train on, with the determinism flags of its class set.

    ``where`` names the node for the error when the device is missing. On cuda
    the deterministic-algorithms flag is restored afterwards.
    """
    import torch

    if device == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    if not has_device(device):
        raise BuildError(
            f"{where}: training.device is '{device}', but this machine has no {device} device "
            f"(torch {torch.__version__}); set `device: cpu` or `auto`, or run the build where one is"
        )
    if device != "cuda":
        yield torch.device(device)
        return
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield torch.device("cuda")
    finally:
        torch.use_deterministic_algorithms(before)


def autocast(device: Any) -> contextlib.AbstractContextManager:
    """The forward pass's precision context for ``device`` (see :data:`PRECISION`)."""
    import torch

    if PRECISION[device.type] == "bf16-autocast":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch, device):
    """A dataclass of tensors (a :class:`~traitgraph.compiler.data.Batch`) with every tensor on ``device``;
    the same object when it is already there (the cpu path does no copy)."""
    import dataclasses

    moved = {f.name: getattr(batch, f.name).to(device) for f in dataclasses.fields(batch)}
    if all(moved[name] is getattr(batch, name) for name in moved):
        return batch
    return dataclasses.replace(batch, **moved)
