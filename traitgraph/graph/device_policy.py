"""Device, precision and task-vector dtype policy: the pure half of training on devices.

The graph resolves these settings before hashing (a node's training hash names
its device class and vector dtype); the compiler's :mod:`traitgraph.compiler.device`
applies them at run time. torch is imported only to answer ``device: auto``.

>>> resolve_device("cpu")
'cpu'
>>> PRECISION["cuda"]
'bf16-autocast'
>>> vector_dtype_for(134_515_008), vector_dtype_for(7_000_000_000)
('float32', 'bfloat16')
"""

from __future__ import annotations

import json
import math
import struct
from functools import lru_cache
from pathlib import Path
from typing import Any

from traitgraph.errors import UserError

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
    record = settings.record()
    record.pop("device", None)
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
    if reference in EMBEDDED_PARAMETERS:
        return EMBEDDED_PARAMETERS[reference]
    directory = Path(reference) if specs_dir is None else Path(specs_dir) / reference
    if not directory.is_dir():  # a hub id or a missing directory: fingerprinting reports it
        raise UserError(f"base '{reference}' is not a local directory")
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


def base_parameters_of(base) -> int:
    """Parameter count of a resolved base (a ``ResolvedBase``: its reference, else its directory)."""
    if base.reference in EMBEDDED_PARAMETERS:
        return EMBEDDED_PARAMETERS[base.reference]
    return safetensors_parameters(Path(base.path))
