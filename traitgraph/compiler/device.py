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
import os
from collections.abc import Iterator
from typing import Any

from traitgraph.errors import BuildError
from traitgraph.graph.device_policy import (  # noqa: F401  (the policy, re-exported beside its runtime)
    BF16_VECTOR_PARAMETERS,
    CUBLAS_WORKSPACE,
    DEVICE_CLASSES,
    EMBEDDED_PARAMETERS,
    PRECISION,
    available_device,
    base_parameters,
    base_parameters_of,
    has_device,
    resolve_device,
    safetensors_parameters,
    training_record,
    vector_dtype_for,
)

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
