"""Export a built checkpoint as one GGUF file (llama.cpp, Ollama, LM Studio), using a GGUF of the base as template.

The template (the embedded base's own GGUF, or one the user names) gives
everything but the weights: every metadata key (architecture, hyper-parameters,
the tokenizer's vocabulary, merges, special tokens and chat template) and the
tensor layout (names, order, which tensors exist). Each weight is then taken
from the built checkpoint and written in the requested type:

======  =====================================================================
type    2-D weights                       1-D weights (norms)
======  =====================================================================
f32     float32                           float32
f16     float16 (llama.cpp's default)     float32
q8_0    8-bit blocks of 32 (``Q8_0``);    float32
        a row not a multiple of 32: f16
======  =====================================================================

Layout differences between Hugging Face and GGUF:

* llama.cpp's converter permutes the rows of the Q and K projections of
  Llama-family models (interleaved → halves rotary layout, per head), and
  transformers undoes that when it reads a GGUF; :func:`llama_permute` does it
  again here, exactly as ``convert_hf_to_gguf.py``.
* Tied embeddings: a template without ``output.weight`` ties the head to
  ``token_embd.weight``; a template with one gets the checkpoint's
  ``lm_head.weight`` (the embeddings when the checkpoint ties them).

>>> export_gguf(Path("base.gguf"), Path("out/checkpoint"), Path("out/p-f16.gguf"), "f16")   # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from traitgraph.errors import BuildError, UserError

#: traitgraph type -> (GGML tensor type of 2-D weights, general.file_type)
GGUF_TYPES = {"f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "q8_0": ("Q8_0", "MOSTLY_Q8_0")}
#: GGUF architectures whose Q/K rows llama.cpp permutes (and transformers un-permutes).
PERMUTED_ARCHS = {"llama", "mistral"}


def llama_permute(weights: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's row permutation of a Q or K projection (out × in), per head.

    Within each head, the rows (the two rotary halves) are interleaved:
    row order [0, h/2, 1, h/2+1, ...] becomes the GGUF order. Transformers'
    GGUF loader applies the inverse.

    >>> llama_permute(torch.arange(4.0)[:, None], 1).flatten().tolist()
    [0.0, 2.0, 1.0, 3.0]
    """
    out = weights.shape[0]
    return weights.reshape(n_head, 2, out // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def encode(data: np.ndarray, gguf_type: str):
    """``(array to write, GGML type)`` of a float32 tensor in ``gguf_type`` (1-D tensors stay float32)."""
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    if data.ndim == 1 or gguf_type == "F32":
        return data.astype(np.float32), Q.F32
    if gguf_type == "Q8_0" and data.shape[-1] % 32 == 0:
        return quants.quantize(data.astype(np.float32), Q.Q8_0), Q.Q8_0
    return data.astype(np.float16), Q.F16


def _field_value(reader, key: str):
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def hf_names_by_gguf_name(reader, checkpoint_names: list[str], tied: bool) -> dict[str, str]:
    """Template tensor name -> the checkpoint tensor written into it."""
    import gguf

    arch = _field_value(reader, "general.architecture")
    n_blocks = int(_field_value(reader, f"{arch}.block_count"))
    arch_enum = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)
    tmap = gguf.get_tensor_name_map(arch_enum, n_blocks)
    names = list(checkpoint_names)
    if "lm_head.weight" not in names and tied:
        names.append("lm_head.weight")  # stored once as the embeddings; the head reads the same tensor
    mapping = {}
    for hf in names:
        gguf_name = tmap.get_name(hf, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise BuildError(f"checkpoint tensor {hf} has no GGUF name for architecture {arch}")
        mapping[gguf_name] = hf
    return mapping


def _built_tensor(hf: str, files: dict[str, Path], tied: bool) -> torch.Tensor:
    from safetensors import safe_open

    if hf == "lm_head.weight" and hf not in files and tied:
        hf = next(n for n in files if n.endswith("embed_tokens.weight"))
    with safe_open(files[hf], "pt") as f:
        return f.get_tensor(hf).float()


def _checkpoint_files(checkpoint: Path) -> dict[str, Path]:
    from safetensors import safe_open

    files = {}
    for path in sorted(checkpoint.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            files.update({name: path for name in f.keys()})
    if not files:
        raise BuildError(f"{checkpoint}: no *.safetensors files; is this a built checkpoint?")
    return files


def plan_tensors(reader, checkpoint: Path, config: dict) -> list[tuple[str, str | None]]:
    """``[(template tensor name, checkpoint tensor or None to copy the template's), ...]`` in template order.

    Every checkpoint tensor must land in the template and every shape must agree;
    a template for another model is a :class:`UserError` naming the tensor.
    """
    files = _checkpoint_files(checkpoint)
    tied = bool(config.get("tie_word_embeddings", False))
    by_gguf = hf_names_by_gguf_name(reader, list(files), tied)
    template = {t.name: t for t in reader.tensors}
    missing = sorted(set(by_gguf) - set(template) - ({"output.weight"} if tied else set()))
    if missing:
        raise UserError(
            f"the GGUF template has no tensor {missing[0]} (for {by_gguf[missing[0]]}); "
            "it is not a GGUF of this checkpoint's base"
        )
    plan = []
    for t in reader.tensors:
        hf = by_gguf.get(t.name)
        if hf is not None:
            shape = _built_shape(hf, files, tied)
            if list(reversed([int(x) for x in t.shape])) != list(shape):
                raise UserError(
                    f"GGUF template tensor {t.name} has shape {list(reversed(t.shape.tolist()))}, "
                    f"the checkpoint's {hf} has {list(shape)}: not a GGUF of this base"
                )
        plan.append((t.name, hf))
    return plan


def _built_shape(hf: str, files: dict[str, Path], tied: bool) -> tuple[int, ...]:
    from safetensors import safe_open

    name = hf if hf in files else next(n for n in files if n.endswith("embed_tokens.weight"))
    with safe_open(files[name], "pt") as f:
        return tuple(f.get_slice(name).get_shape())


def gguf_data(hf: str, tensor: torch.Tensor, arch: str, config: dict) -> np.ndarray:
    """A checkpoint tensor in GGUF's row order (Q/K permuted for Llama-family archs), float32."""
    if arch in PERMUTED_ARCHS and hf.endswith("self_attn.q_proj.weight"):
        tensor = llama_permute(tensor, config["num_attention_heads"])
    elif arch in PERMUTED_ARCHS and hf.endswith("self_attn.k_proj.weight"):
        tensor = llama_permute(tensor, config.get("num_key_value_heads") or config["num_attention_heads"])
    return tensor.contiguous().numpy()


def _copy_metadata(reader, writer, file_type: int, name: str | None) -> None:
    from gguf import GGUFValueType

    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        value = field.contents()
        if field.name == "general.file_type":
            value = file_type
        elif field.name == "general.name" and name:
            value = name
        writer.add_key_value(field.name, value, vtype, sub_type=sub)
    if "general.file_type" not in reader.fields:
        writer.add_file_type(file_type)


def export_gguf(
    template: Path, checkpoint: Path, out_path: Path, type_name: str = "f16", *, name: str | None = None
) -> Path:
    """Write ``checkpoint``'s weights into ``template``'s metadata and layout at ``out_path`` (atomically)."""
    import json

    import gguf

    if type_name not in GGUF_TYPES:
        raise UserError(f"--type must be one of {', '.join(GGUF_TYPES)}, got {type_name!r}")
    if out_path.is_dir():
        raise UserError(f"{out_path} is a directory; -o names the GGUF file to write")
    if not Path(template).is_file():
        raise UserError(f"GGUF template {template} does not exist")
    reader = gguf.GGUFReader(template)
    arch = _field_value(reader, "general.architecture")
    if arch not in PERMUTED_ARCHS:
        raise UserError(
            f"GGUF template {template}: architecture {arch!r} is not supported "
            f"(supported: {', '.join(sorted(PERMUTED_ARCHS))})"
        )
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    plan = plan_tensors(reader, checkpoint, config)
    tensor_type, file_type = GGUF_TYPES[type_name]
    files = _checkpoint_files(checkpoint)
    tied = bool(config.get("tie_word_embeddings", False))
    template_data = {t.name: t for t in reader.tensors}

    def data_of(gguf_name: str, hf: str | None):
        if hf is None:  # a tensor the checkpoint does not have (e.g. rope_freqs): as the template has it
            t = template_data[gguf_name]
            return np.asarray(t.data), t.tensor_type
        return encode(gguf_data(hf, _built_tensor(hf, files, tied), arch, config), tensor_type)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", dir=out_path.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, arch=arch, endianess=reader.endianess)
        _copy_metadata(reader, writer, int(gguf.LlamaFileType[file_type]), name)
        for gguf_name, hf in plan:  # infos first (sizes), then the data, one tensor at a time
            data, qtype = data_of(gguf_name, hf)
            writer.add_tensor_info(gguf_name, data.shape, data.dtype, data.nbytes, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for gguf_name, hf in plan:
            writer.write_tensor_data(data_of(gguf_name, hf)[0])
        writer.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out_path
