"""Verify a build: rebuild its checkpoint from the lock file and compare every hash.

Two things can be wrong with ``OUT``, and both are reported by file name:

* a file of ``OUT/checkpoint`` is missing, differs from the hash the lock
  recorded, or is there without the lock knowing it (*tampered*);
* the lock does not rebuild: relinking the cached task vectors it names onto
  its base gives other bytes (*not reproducible*), or a vector is missing or
  modified.

``OUT/checkpoint/README.md`` is the model card: documentation written from the
lock and the report after the link, not a lock output, so it is not compared.

>>> verify_build("out")                # doctest: +SKIP
VerifyResult(checked=8, rebuilt=8)
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from traitgraph.builder.cache import VectorCache
from traitgraph.builder.plan import OutputLayout
from traitgraph.errors import BuildError
from traitgraph.linker.install import MARKER

#: Files of OUT/checkpoint that are not lock outputs.
NOT_LOCK_OUTPUTS = frozenset({"README.md", MARKER})  # the model card, and the marker of a traitgraph output


@dataclass(frozen=True)
class VerifyResult:
    checked: int
    """Output files of OUT/checkpoint compared with the lock."""
    rebuilt: int
    """Output files rebuilt from the lock into a temporary directory, all equal to the lock's."""


def tampered_files(lock, checkpoint: Path) -> list[str]:
    """Checkpoint files that are missing, differ from the lock, or are unknown to it."""
    from traitgraph.linker.lock import verify_outputs

    bad = verify_outputs(lock, checkpoint)
    present = {p.relative_to(checkpoint).as_posix() for p in checkpoint.rglob("*") if p.is_file()}
    unknown = sorted(present - set(lock.outputs) - NOT_LOCK_OUTPUTS)
    return sorted(bad + unknown)


def rebuild_from_lock(lock, base_dir: Path, cache: VectorCache) -> int:
    """Relink ``lock`` into a temporary directory; a :class:`BuildError` naming the differing files otherwise."""
    from traitgraph.linker.lock import relink

    with tempfile.TemporaryDirectory(prefix="traitgraph-verify-") as tmp:
        outputs = relink(lock, cache.vector_path, base_dir, Path(tmp) / "checkpoint", progress=False)
    return len(outputs)


def verify_build(
    out_dir: str | Path, specs_dir: str | Path | None = None, cache: VectorCache | None = None
) -> VerifyResult:
    """Check ``OUT/checkpoint`` against ``OUT/traitgraph.lock`` and rebuild it from the lock.

    A relative base reference in the lock is resolved against ``specs_dir``.
    Any difference is a :class:`BuildError` naming the file.
    """
    from traitgraph.compiler.base_model import resolve_base
    from traitgraph.linker.lock import check_linker_version, read_lock

    out = OutputLayout(Path(out_dir))
    lock = read_lock(out.lock)
    check_linker_version(lock, out.lock)
    if not out.checkpoint.is_dir():
        raise BuildError(f"{out.checkpoint}: no checkpoint; the lock {out.lock} names one")
    tampered = tampered_files(lock, out.checkpoint)
    if tampered:
        raise BuildError(
            f"{out.checkpoint}: {', '.join(tampered)} differ{'s' if len(tampered) == 1 else ''} from the lock "
            f"{out.lock} (modified, missing or unknown); relink with `traitgraph link --lock {out.lock} -o DIR`"
        )
    base = resolve_base(lock.base.reference, None if specs_dir is None else Path(specs_dir))
    if base.fingerprint != lock.base.fingerprint:
        raise BuildError(
            f"{out.lock}: base '{lock.base.reference}' has fingerprint {base.fingerprint[:19]} here, "
            f"the lock was built on {lock.base.fingerprint[:19]}"
        )
    rebuilt = rebuild_from_lock(lock, base.path, cache or VectorCache())
    return VerifyResult(checked=len(lock.outputs), rebuilt=rebuilt)
