"""Exports of a finished build (``OUT/checkpoint`` + ``OUT/traitgraph.lock``): LoRA adapter, GGUF.

The lock names the base the checkpoint was linked on; its fingerprint is
checked before anything is exported, so an adapter or GGUF is never computed
against another base than the build's.

>>> export_lora_from_build(Path("out"), Path("specs"), 32, Path("out/lora-r32"))   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from traitgraph.builder.plan import OutputLayout
from traitgraph.errors import BuildError


def locked_base(out: OutputLayout, specs_dir: Path | None):
    """``(lock, resolved base)`` of a build; a :class:`BuildError` when the base changed since."""
    from traitgraph.compiler.base_model import resolve_base
    from traitgraph.linker.lock import read_lock

    lock = read_lock(out.lock)
    if not out.checkpoint.is_dir():
        raise BuildError(f"{out.checkpoint}: no checkpoint; build first (`traitgraph build`)")
    base = resolve_base(lock.base.reference, specs_dir)
    if base.fingerprint != lock.base.fingerprint:
        raise BuildError(
            f"{out.lock}: base '{lock.base.reference}' has fingerprint {base.fingerprint[:19]} here, "
            f"the checkpoint was linked on {lock.base.fingerprint[:19]}; rebuild before exporting"
        )
    return lock, base


def export_lora_from_build(
    out_dir: Path, specs_dir: Path | None, rank: int, target: Path, *, include_norms: bool = True
):
    """A PEFT LoRA adapter of ``OUT/checkpoint`` relative to the build's base (see :mod:`traitgraph.linker.export_lora`)."""
    from traitgraph.linker.export_lora import export_lora

    out = OutputLayout(Path(out_dir))
    _, base = locked_base(out, specs_dir)
    # The adapter is relative to the exact base weights the build used (for the embedded
    # base: the dequantised GGUF in the cache, not the hub's original weights).
    return export_lora(base.path, out.checkpoint, rank, target, include_norms=include_norms, base_name=str(base.path))


def export_gguf_from_build(
    out_dir: Path,
    specs_dir: Path | None,
    type_name: str,
    target: Path | None,
    template: Path | None,
) -> list[Path]:
    """``[GGUF file, Modelfile]`` of ``OUT/checkpoint``; the template is the base's own GGUF when it came as one.

    A Hugging Face base has no GGUF to copy the tokenizer metadata and layout
    from: the user names one with ``template`` (a GGUF of the same base, as
    llama.cpp's ``convert_hf_to_gguf.py`` writes it), or gets a :class:`UserError`.
    """
    from traitgraph.atomic import write_text_atomic
    from traitgraph.compiler.base_model import base_gguf
    from traitgraph.errors import UserError
    from traitgraph.linker.export_gguf import export_gguf
    from traitgraph.linker.ollama import modelfile_text

    out = OutputLayout(Path(out_dir))
    lock, _ = locked_base(out, specs_dir)
    template = template or base_gguf(lock.base.reference, specs_dir)
    if template is None:
        raise UserError(
            f"base '{lock.base.reference}' is a Hugging Face model, so there is no GGUF of it to take the "
            "tokenizer, chat template and tensor layout from; name one with --template FILE (a GGUF of the same "
            "base, e.g. written by llama.cpp's convert_hf_to_gguf.py)"
        )
    name = personality_name(specs_dir) or out.root.resolve().name
    target = target or out.root / f"{name}-{type_name}.gguf"
    export_gguf(Path(template), out.checkpoint, target, type_name, name=name)
    chat_template, eos = gguf_chat_facts(target)
    modelfile = target.parent / "Modelfile"
    write_text_atomic(modelfile, modelfile_text(target.name, chat_template, eos))
    return [target, modelfile]


def gguf_chat_facts(path: Path) -> tuple[str | None, str | None]:
    """``(chat template, end-of-sequence token text)`` from a GGUF's metadata."""
    import gguf

    reader = gguf.GGUFReader(path)
    template = reader.fields.get("tokenizer.chat_template")
    eos_id = reader.fields.get("tokenizer.ggml.eos_token_id")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    eos = None
    if eos_id is not None and tokens is not None:
        eos = tokens.contents()[int(eos_id.contents())]
    return (None if template is None else template.contents()), eos


def personality_name(specs_dir: Path | None) -> str | None:
    """The personality's name from its specs, or None when they are not at hand."""
    from traitgraph.errors import UserError
    from traitgraph.graph import load_specs

    if specs_dir is None or not (Path(specs_dir) / "personality.yaml").is_file():
        return None
    try:
        return load_specs(specs_dir).personality.name
    except UserError:
        return None
