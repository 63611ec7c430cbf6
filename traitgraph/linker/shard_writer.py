"""Writing one safetensors file tensor by tensor, chunk by chunk, in bounded memory.

The ``safetensors`` package (0.8) writes a file only from every tensor's bytes
at once (``save_file``, ``serialize_file``): a 2 GB shard would be 2 GB of
memory. The linker streams instead, so this writer lays the file out exactly
as the package does and leaves the format's decisions to it:

* the dtype codes in the header (``F32``, ``BF16``, ...) and the order the
  tensors are stored in (by dtype, widest first, then by name, which keeps
  each tensor aligned for memory-mapped loading) are the package's: it
  serializes an empty stand-in of each tensor and we read its header
  (:func:`package_layout`), so there is no dtype table here;
* the header lists the tensors in that order after ``__metadata__`` and is
  padded with spaces to a multiple of 8 bytes, as the package pads it.

So a streamed file is byte for byte what ``safetensors.torch.save_file`` writes
for the same tensors and metadata (``tests/test_link.py`` checks this).

>>> import torch, tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "t.safetensors"
>>> writer = ShardWriter(path, {"w": (torch.float32, (2, 2))})
>>> for name in writer.order:
...     writer.begin(name)
...     writer.write(torch.ones(2)); writer.write(torch.zeros(2))
...     writer.end()
>>> len(writer.close())    # the file's sha256, computed while writing
64
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import math
import os
import struct
from pathlib import Path

import torch
from safetensors import TensorSpec, serialize

#: The header's metadata: no time stamps, so the same tensors give the same bytes.
METADATA = {"format": "pt"}


def _torch_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")  # as safetensors.torch names a dtype for TensorSpec


def package_layout(entries: dict[str, tuple[torch.dtype, tuple[int, ...]]]) -> dict[str, str]:
    """Tensor name -> safetensors dtype code, in the order the package stores the tensors.

    Both come from the package itself: it serializes an empty stand-in of
    each tensor (same name and dtype, no elements; its order depends on
    nothing else) and its header is read back.

    >>> package_layout({"b": (torch.float16, (2,)), "a": (torch.float16, (2,)), "z": (torch.bfloat16, (1,))})
    {'z': 'BF16', 'a': 'F16', 'b': 'F16'}
    """
    anchor = ctypes.create_string_buffer(1)  # a valid address for zero bytes
    probe = {
        name: TensorSpec(dtype=_torch_name(dtype), shape=[0], data_ptr=ctypes.addressof(anchor), data_len=0)
        for name, (dtype, _) in entries.items()
    }
    raw = serialize(probe, metadata=METADATA)
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    return {name: info["dtype"] for name, info in header.items() if name != "__metadata__"}


def header_bytes(entries: dict[str, tuple[torch.dtype, tuple[int, ...]]]) -> tuple[bytes, list[str], dict[str, int]]:
    """The file's first bytes (length prefix and padded JSON header), the storage order, and each tensor's size."""
    header: dict[str, object] = {"__metadata__": METADATA}
    sizes: dict[str, int] = {}
    offset = 0
    layout = package_layout(entries)
    for name, code in layout.items():
        dtype, shape = entries[name]
        sizes[name] = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + sizes[name]]}
        offset += sizes[name]
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, list(layout), sizes


class ShardWriter:
    """Writes one safetensors file tensor by tensor, chunk by chunk, hashing as it goes.

    The header is fixed before the first byte of data, so tensors must then
    arrive in :attr:`order` (the package's, see :func:`package_layout`).
    """

    def __init__(self, path: Path, entries: dict[str, tuple[torch.dtype, tuple[int, ...]]]) -> None:
        head, self.order, self._expected = header_bytes(entries)
        self._hash = hashlib.sha256()
        self._fh = open(path, "wb")
        self._write(head)
        self._current: str | None = None
        self._written = 0

    def _write(self, data) -> None:
        self._fh.write(data)
        self._hash.update(data)

    def begin(self, name: str) -> None:
        self._current, self._written = name, 0

    def write(self, chunk: torch.Tensor) -> None:
        data = chunk.contiguous().reshape(-1).view(torch.uint8).numpy()
        self._write(memoryview(data))
        self._written += data.nbytes

    def end(self) -> None:
        if self._written != self._expected[self._current]:
            raise RuntimeError(
                f"tensor '{self._current}': wrote {self._written} bytes, header says {self._expected[self._current]}"
            )

    def close(self) -> str:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        return self._hash.hexdigest()

    def abort(self) -> None:
        self._fh.close()
