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


def export_lora_from_build(out_dir: Path, specs_dir: Path | None, rank: int, target: Path, *, include_norms: bool = True):
    """A PEFT LoRA adapter of ``OUT/checkpoint`` relative to the build's base (see :mod:`traitgraph.linker.export_lora`)."""
    from traitgraph.linker.export_lora import export_lora

    out = OutputLayout(Path(out_dir))
    _, base = locked_base(out, specs_dir)
    # The adapter is relative to the exact base weights the build used (for the embedded
    # base: the dequantised GGUF in the cache, not the hub's original weights).
    return export_lora(base.path, out.checkpoint, rank, target, include_norms=include_norms, base_name=str(base.path))
