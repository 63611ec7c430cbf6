"""The linker: task vectors + weights + merge settings -> one Hugging Face checkpoint.

>>> outputs = link_checkpoint(base_dir, [LinkInput("pirate", tau_path, 1.0)], MergeSettings(), out_dir)   # doctest: +SKIP
>>> outputs["model.safetensors"]                                                                      # doctest: +SKIP
'9f2c...'

**Streaming.** For each tensor of the base checkpoint (in the base's order),
the base tensor and each task vector's tensor are read through ``safe_open``
in row chunks of at most :data:`CHUNK_ELEMENTS` entries, merged in float32
(:class:`~traitgraph.linker.merging.TensorMerge`), cast to the output dtype and
written straight into the output shard by
:class:`~traitgraph.linker.shard_writer.ShardWriter` (the safetensors layout,
header computed up front from the base's shapes), so no shard is ever held in memory.
TIES first reads each vector's whole tensor once to fit its trim threshold.
Peak memory is therefore about one float32 copy of the largest tensor (TIES's
magnitudes) plus a few chunks, whatever the model size or the number of
vectors (SmolLM2-135M: about the model's size, from 2 to 8 vectors). ``safe_open``
memory-maps files and touched pages count towards the process's resident
size until the file is closed, so handles are closed every
:data:`READ_BUDGET` bytes read.

**Atomic.** Everything is written into a hidden temporary directory beside
``out_dir`` and renamed into place at the end; an interrupted link leaves no
``out_dir`` (or the previous one, untouched). An existing ``out_dir`` is moved
aside, the new one renamed in, then the old one deleted.

**Reproducible.** Same inputs, same output bytes: the inputs are merged in
order of their names, the drop masks are seeded from names, the safetensors
metadata is ``{"format": "pt"}`` (no time stamps) and JSON is written with
sorted keys.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open

from traitgraph.atomic import sha256_file
from traitgraph.compiler.task_vector import open_task_vector, read_task_vector_meta
from traitgraph.errors import BuildError, UserError
from traitgraph.linker.install import check_replaceable, install, open_staging
from traitgraph.linker.merging import MergeOptions, TensorMerge, derive_seed, get_method, merge_whole
from traitgraph.linker.shard_writer import ShardWriter

if TYPE_CHECKING:
    from traitgraph.graph.schema import MergeSettings

#: Entries per chunk of one tensor (4 MiB in float32); the linker's unit of work.
CHUNK_ELEMENTS = 1 << 20
#: Bytes read through memory maps before every handle is closed (drops the mapped pages).
READ_BUDGET = 64 << 20

OUTPUT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
#: Files copied from the base directory: config, generation config, tokenizer, chat template, code.
SIDE_FILE_SUFFIXES = (".json", ".jinja", ".txt", ".model", ".tiktoken", ".py")
#: Never copied: weight indexes (ours replace them) and the base conversion's own record.
SIDE_FILE_EXCLUDE = {INDEX_FILE, "pytorch_model.bin.index.json", "traitgraph-base.json"}

_SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


@dataclass(frozen=True)
class LinkInput:
    """One task vector to link.

    ``path`` is a traitgraph task-vector file, or a fine-tuned Hugging Face
    directory whose τ = its weights − the base's is taken tensor by tensor
    (``traitgraph merge`` uses that). ``name`` (the node id) names errors and
    seeds DARE's drop mask; names must be unique. ``density`` overrides the
    merge settings' density for this input (mergekit's per-model density).
    """

    name: str
    path: Path
    weight: float
    density: float | None = None


def parse_size(text: str) -> int:
    """Bytes in ``"500MB"``, ``"2GB"``, ``"1.5GiB"`` (GB = 10^9, as transformers counts).

    >>> parse_size("2GB"), parse_size("1KiB")
    (2000000000, 1024)
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)\s*", text)
    if not m:
        raise UserError(f"cannot read size {text!r}; write e.g. 500MB, 2GB or 1GiB")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


# --------------------------------------------------------------------------- reading


class HandlePool:
    """Open ``safe_open`` handles, closed all together every ``budget`` bytes read.

    A memory-mapped page stays in the process's resident set while its file is
    open; closing the handles lets the kernel drop them, so reading a whole
    model costs ``budget`` of resident memory, not the model's size.
    """

    def __init__(self, budget: int | None = None) -> None:
        self.budget = READ_BUDGET if budget is None else budget
        self._open: dict[tuple[Path, bool], Any] = {}
        self._stack = contextlib.ExitStack()
        self._charged = 0

    def handle(self, path: Path, task_vector: bool):
        key = (path, task_vector)
        if key not in self._open:
            opener = open_task_vector if task_vector else (lambda p: safe_open(str(p), framework="pt"))
            self._open[key] = self._stack.enter_context(opener(path))
        return self._open[key]

    def charge(self, nbytes: int) -> None:
        self._charged += nbytes
        if self._charged >= self.budget:
            self.close()

    def close(self) -> None:
        self._stack.close()
        self._stack = contextlib.ExitStack()
        self._open.clear()
        self._charged = 0


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


def _tensor_info(handle, name: str, path: Path) -> TensorInfo:
    """Shape and torch dtype of one tensor, as ``safetensors`` maps its header (an empty slice is read)."""
    view = handle.get_slice(name)
    shape = tuple(view.get_shape())
    dtype = view[:0].dtype if shape else handle.get_tensor(name).dtype  # a 0-d tensor is one value
    return TensorInfo(path, shape, dtype)


def read_headers(files: Sequence[Path], task_vector: bool, what: str) -> dict[str, TensorInfo]:
    """Name -> shape, dtype and file of every tensor in ``files`` (headers only)."""
    infos: dict[str, TensorInfo] = {}
    for path in files:
        try:
            opener = open_task_vector if task_vector else (lambda p: safe_open(str(p), framework="pt"))
            with opener(path) as handle:
                for name in handle.keys():
                    infos[name] = _tensor_info(handle, name, path)
        except BuildError:
            raise
        except Exception as exc:  # safetensors raises several types for a torn file
            raise BuildError(f"{what}: cannot read {path} ({exc})") from exc
    return infos


def checkpoint_files(directory: Path) -> list[Path]:
    """The safetensors files of a Hugging Face directory (one file, or the index's shards)."""
    directory = Path(directory)
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            raise BuildError(f"{index}: not a safetensors index ({exc})") from exc
        files = [directory / f for f in sorted(set(weight_map.values()))]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise BuildError(f"{directory}: shards listed in {INDEX_FILE} are missing: {', '.join(missing)}")
        return files
    single = directory / SINGLE_FILE
    if single.is_file():
        return [single]
    if any(directory.glob("*.bin")):
        raise BuildError(f"{directory}: weights are pickles (*.bin); traitgraph loads weights only through safetensors")
    raise BuildError(f"{directory}: no {SINGLE_FILE} or {INDEX_FILE}; not a safetensors checkpoint")


class TensorFiles:
    """Read row ranges of named tensors through a shared handle pool."""

    def __init__(self, infos: dict[str, TensorInfo], pool: HandlePool, task_vector: bool) -> None:
        self.infos = infos
        self.pool = pool
        self.task_vector = task_vector

    def read_rows(self, name: str, r0: int, r1: int) -> torch.Tensor:
        """Rows ``[r0, r1)`` of ``name`` in its own dtype, flattened (a private copy)."""
        info = self.infos[name]
        handle = self.pool.handle(info.file, self.task_vector)
        if not info.shape:
            chunk = handle.get_tensor(name).reshape(1).clone()
        else:
            chunk = handle.get_slice(name)[r0:r1].reshape(-1)
        self.pool.charge(chunk.numel() * info.dtype.itemsize)
        return chunk


@dataclass
class _Source:
    """One input: reads chunks of its τ (float32), or None where it has none."""

    input: LinkInput
    tensors: TensorFiles
    minus_base: bool  # a fine-tuned model: τ = W − W_base

    def has(self, name: str) -> bool:
        return name in self.tensors.infos

    def tau_rows(self, name: str, r0: int, r1: int, base_rows: torch.Tensor) -> torch.Tensor:
        chunk = self.tensors.read_rows(name, r0, r1).to(torch.float32)
        if self.minus_base:
            return chunk - base_rows
        if not torch.isfinite(chunk.sum()):  # one NaN or inf makes the sum so; a cheap check
            raise BuildError(
                f"node '{self.input.name}': task vector {self.input.path} has NaN or infinite values in tensor '{name}'"
            )
        return chunk


def _check_inputs(
    base: dict[str, TensorInfo], base_dir: Path, inputs: Sequence[LinkInput], pool: HandlePool
) -> list[_Source]:
    names = [i.name for i in inputs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"link inputs must have unique names; repeated: {', '.join(duplicates)}")
    sources = []
    for inp in inputs:
        what = f"node '{inp.name}'"
        if not math.isfinite(inp.weight):
            raise UserError(f"{what}: weight must be a finite number, got {inp.weight}")
        if inp.density is not None and not 0.0 < inp.density <= 1.0:
            raise UserError(f"{what}: density must be in (0, 1], got {inp.density}")
        path = Path(inp.path)
        if path.is_dir():
            infos = read_headers(checkpoint_files(path), False, what)
            # integer buffers (position ids...) are not weights: the base's are kept
            infos = {n: i for n, i in infos.items() if i.dtype.is_floating_point or n not in base}
            missing = sorted(n for n in set(base) - set(infos) if base[n].dtype.is_floating_point)
            if missing:
                raise BuildError(f"{what}: model {path} lacks base tensors: {', '.join(missing[:5])}")
            minus_base = True
        elif path.is_file():
            read_task_vector_meta(path)  # the format check; raises BuildError naming the file
            infos = read_headers([path], True, what)
            minus_base = False
        else:
            raise BuildError(f"{what}: task vector not found: {path}")
        for name, info in infos.items():
            if name not in base:
                raise BuildError(f"{what}: tensor '{name}' of {path} is not in the base checkpoint {base_dir}")
            if info.shape != base[name].shape:
                raise BuildError(
                    f"{what}: tensor '{name}' has shape {list(info.shape)} in {path} "
                    f"but {list(base[name].shape)} in the base"
                )
            if not (info.dtype.is_floating_point and base[name].dtype.is_floating_point):
                raise BuildError(f"{what}: tensor '{name}' is not floating point; only float weights can be merged")
        sources.append(_Source(inp, TensorFiles(infos, pool, task_vector=not minus_base), minus_base))
    return sources


# --------------------------------------------------------------------------- writing


@dataclass
class _Shard:
    file: str
    names: list[str] = field(default_factory=list)
    nbytes: int = 0


def _plan_shards(names: Sequence[str], sizes: dict[str, int], max_bytes: int) -> list[_Shard]:
    """Greedy split in the base's tensor order; a tensor bigger than the limit gets its own shard."""
    shards = [_Shard("")]
    for name in names:
        if shards[-1].names and shards[-1].nbytes + sizes[name] > max_bytes:
            shards.append(_Shard(""))
        shards[-1].names.append(name)
        shards[-1].nbytes += sizes[name]
    if len(shards) == 1:
        shards[0].file = SINGLE_FILE
    else:
        for i, shard in enumerate(shards):
            shard.file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    return shards


def row_chunks(info: TensorInfo) -> Iterator[tuple[int, int, int]]:
    """(first row, end row, flat start) of each chunk of a tensor."""
    rows = info.rows
    per_row = max(1, info.numel // max(rows, 1))
    step = max(1, CHUNK_ELEMENTS // per_row)
    for r0 in range(0, rows, step):
        yield r0, min(rows, r0 + step), r0 * per_row


def _whole_tau(name: str, info: TensorInfo, base: TensorFiles, source: _Source) -> torch.Tensor:
    """One input's whole τ of tensor ``name`` (float32, the tensor's shape), read chunk by chunk."""
    tau = torch.empty(info.numel, dtype=torch.float32)
    for r0, r1, start in row_chunks(info):
        base_rows = base.read_rows(name, r0, r1).to(torch.float32) if source.minus_base else None
        rows = source.tau_rows(name, r0, r1, base_rows)
        tau[start : start + rows.numel()] = rows.reshape(-1)
    return tau.reshape(info.shape)


def _merge_tensor(
    name: str,
    info: TensorInfo,
    out_dtype: torch.dtype,
    base: TensorFiles,
    sources: Sequence[_Source],
    options: MergeOptions,
    writer: ShardWriter,
) -> None:
    present = [s for s in sources if s.has(name)]
    if not present:  # no vector touches this tensor: the base's bytes, cast if asked
        for r0, r1, _ in row_chunks(info):
            writer.write(base.read_rows(name, r0, r1).to(out_dtype))
        return
    weights = [s.input.weight for s in sources]
    densities = [s.input.density if s.input.density is not None else options.density for s in sources]
    seeds = [derive_seed(options.seed, name, s.input.name) for s in sources]
    if get_method(options.method).whole:  # SVD, row ranks or a sort: every input's whole tensor at once
        taus = [_whole_tau(name, info, base, s) if s.has(name) else None for s in sources]
        delta = merge_whole(options, taus, weights, densities, seeds).reshape(-1)
        del taus
        for r0, r1, start in row_chunks(info):
            base_rows = base.read_rows(name, r0, r1).to(torch.float32)
            writer.write((base_rows + delta[start : start + base_rows.numel()].reshape(base_rows.shape)).to(out_dtype))
        return
    merge = TensorMerge(options, weights=weights, numel=info.numel, densities=densities, seeds=seeds)
    if merge.needs_magnitudes:  # TIES: fit each vector's trim threshold on its whole |τ|
        for index, source in enumerate(sources):
            if not source.has(name):
                continue
            magnitudes = torch.empty(info.numel, dtype=torch.float32)
            for r0, r1, start in row_chunks(info):
                base_rows = base.read_rows(name, r0, r1).to(torch.float32) if source.minus_base else None
                tau = source.tau_rows(name, r0, r1, base_rows)
                magnitudes[start : start + tau.numel()] = tau.abs()
            merge.fit(index, magnitudes)
            del magnitudes
    for r0, r1, start in row_chunks(info):
        base_rows = base.read_rows(name, r0, r1).to(torch.float32)
        taus = (s.tau_rows(name, r0, r1, base_rows) if s.has(name) else None for s in sources)
        delta = merge.merge_chunk(taus, start)  # reads one input's chunk at a time
        writer.write((base_rows + delta).to(out_dtype))


# --------------------------------------------------------------------------- the linker


def _side_files(base_dir: Path) -> list[Path]:
    return sorted(
        p
        for p in base_dir.iterdir()
        if p.is_file()
        and p.suffix in SIDE_FILE_SUFFIXES
        and p.name not in SIDE_FILE_EXCLUDE
        and not p.name.startswith(".")
    )


def _copy_side_files(base_dir: Path, tmp: Path, dtype: str) -> None:
    for src in _side_files(base_dir):
        dst = tmp / src.name
        if src.name == "config.json" and dtype != "auto":
            config = json.loads(src.read_text(encoding="utf-8"))
            for key in ("dtype", "torch_dtype"):
                if key in config or key == "dtype":
                    config[key] = dtype
            dst.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        else:
            shutil.copyfile(src, dst)


def _check_out_dir(out_dir: Path, base_dir: Path, inputs: Sequence[LinkInput]) -> None:
    out = out_dir.resolve()
    for what, path in [("the base", base_dir), *((f"node '{i.name}'", Path(i.path)) for i in inputs)]:
        p = Path(path).resolve()
        if p == out or out in p.parents:
            raise UserError(f"output directory {out_dir} contains {what} ({path}); choose another output directory")
    check_replaceable(out_dir)


def _write_shards(
    tmp: Path,
    shards: Sequence[_Shard],
    base: TensorFiles,
    sources: Sequence[_Source],
    options: MergeOptions,
    out_dtypes: dict[str, torch.dtype],
    progress: bool,
) -> dict[str, str]:
    """Merge every tensor into its shard under ``tmp``; each shard file's name -> sha256."""
    from tqdm import tqdm

    outputs: dict[str, str] = {}
    with tqdm(total=len(base.infos), desc="link", unit="tensor", disable=not progress, file=sys.stderr) as bar:
        for shard in shards:
            writer = ShardWriter(tmp / shard.file, {n: (out_dtypes[n], base.infos[n].shape) for n in shard.names})
            try:
                for name in writer.order:
                    writer.begin(name)
                    _merge_tensor(name, base.infos[name], out_dtypes[name], base, sources, options, writer)
                    writer.end()
                    bar.update(1)
            except BaseException:
                writer.abort()
                raise
            outputs[shard.file] = writer.close()
    return outputs


def _output_dtypes(infos: dict[str, TensorInfo], dtype: str) -> dict[str, torch.dtype]:
    """Each output tensor's dtype: the base's, or ``dtype`` for floating-point weights when asked."""
    return {
        n: OUTPUT_DTYPES[dtype] if dtype != "auto" and info.dtype.is_floating_point else info.dtype
        for n, info in infos.items()
    }


def _write_index(tmp: Path, shards: Sequence[_Shard], total_size: int) -> None:
    index = {"metadata": {"total_size": total_size}, "weight_map": {n: s.file for s in shards for n in s.names}}
    (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def link(
    base_dir: str | os.PathLike,
    inputs: Sequence[LinkInput],
    options: MergeOptions,
    out_dir: str | os.PathLike,
    *,
    dtype: str = "auto",
    max_shard_size: str = "2GB",
    progress: bool = True,
    expect: dict[str, str] | None = None,
    refine: Callable[[Path], None] | None = None,
) -> dict[str, str]:
    """Link ``inputs`` onto the base with ``options``; see :func:`link_checkpoint`.

    ``expect`` (relative file name -> sha256, from a lock file) is checked before
    the output is renamed into place: on any difference nothing is replaced.
    ``refine`` (the consolidation step) may rewrite the weights in the staging
    directory, and add files to it, before they are hashed and installed.
    """
    if sys.byteorder != "little":
        raise BuildError("the linker writes safetensors (little-endian) and runs only on little-endian machines")
    if dtype != "auto" and dtype not in OUTPUT_DTYPES:
        raise UserError(f"output dtype must be auto or one of {', '.join(OUTPUT_DTYPES)}, got {dtype!r}")
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    max_bytes = parse_size(max_shard_size)
    inputs = sorted(inputs, key=lambda i: i.name)  # the sum's order is part of the bits
    _check_out_dir(out_dir, base_dir, inputs)

    pool = HandlePool()
    base = TensorFiles(read_headers(checkpoint_files(base_dir), False, f"base {base_dir}"), pool, task_vector=False)
    sources = _check_inputs(base.infos, base_dir, inputs, pool)
    out_dtypes = _output_dtypes(base.infos, dtype)
    sizes = {n: info.numel * out_dtypes[n].itemsize for n, info in base.infos.items()}
    shards = _plan_shards(list(base.infos), sizes, max_bytes)

    tmp = open_staging(out_dir)  # refuses a directory traitgraph did not write; sweeps old leftovers
    outputs: dict[str, str] = {}
    try:
        outputs.update(_write_shards(tmp, shards, base, sources, options, out_dtypes, progress))
        pool.close()
        if len(shards) > 1:
            _write_index(tmp, shards, sum(sizes.values()))
        _copy_side_files(base_dir, tmp, dtype)
        if refine is not None:
            refine(tmp)
        for path in sorted(tmp.iterdir()):
            if path.name not in outputs:
                outputs[path.name] = sha256_file(path)
        outputs = dict(sorted(outputs.items()))
        if expect is not None and outputs != expect:
            differ = sorted(n for n in set(outputs) | set(expect) if outputs.get(n) != expect.get(n))
            raise BuildError(
                f"relinked checkpoint differs from the lock in: {', '.join(differ)}; {out_dir} was left as it was"
            )
        install(tmp, out_dir)  # finite check, marker, atomic swap
    except BaseException:
        pool.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return outputs


def link_checkpoint(
    base_dir: Path,
    inputs: list[LinkInput],
    settings: MergeSettings,
    out_dir: Path,
    *,
    progress: bool = True,
    refine: Callable[[Path], None] | None = None,
) -> dict[str, str]:
    """Merge task vectors into a Hugging Face checkpoint at ``out_dir``.

    W = W_base + merge({w_i · τ_i}) tensor by tensor, with ``settings``
    (method, density, λ, sign vote, normalize, seed, output dtype, shard
    size). Returns each output file's name (relative to ``out_dir``) and
    sha256. A τ tensor the base lacks, or of another shape, is a
    :class:`BuildError` naming the node and the tensor.

    >>> link_checkpoint(base, [LinkInput("pirate", Path("pirate.safetensors"), 0.8)],
    ...                 MergeSettings(method="ties", density=0.2), Path("out/checkpoint"))  # doctest: +SKIP
    {'config.json': '...', 'model.safetensors': '...', ...}
    """
    return link(
        base_dir,
        inputs,
        MergeOptions.from_settings(settings),
        out_dir,
        dtype=settings.dtype,
        max_shard_size=settings.max_shard_size,
        progress=progress,
        refine=refine,
    )
