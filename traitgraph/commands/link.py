"""Link task vectors into a checkpoint.

    traitgraph link [SPECS_DIR] [-o OUT]      link the current specs from the cache
    traitgraph link --lock FILE -o DIR        rebuild exactly the checkpoint a lock file describes

With ``--lock``, every task vector is checked against the sha256 the lock
recorded and every output file against the lock's hashes: a missing or
tampered vector is an error naming the node, never a different checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("specs_dir", nargs="?", default="specs", help="specs directory (default: specs)")
    parser.add_argument("-o", "--out", default=None, help="output directory (default: out; with --lock, required)")
    parser.add_argument("--lock", default=None, help="relink the build recorded in this lock file")


def run(args: argparse.Namespace) -> int:
    from traitgraph.builder.cache import VectorCache
    from traitgraph.builder.output_dir import check_output_dir
    from traitgraph.builder.output_lock import OutputLock
    from traitgraph.builder.plan import BuildPlan, OutputLayout, write_stamps
    from traitgraph.builder.tasks import link_action
    from traitgraph.compiler.base_model import base_fingerprint, resolve_base
    from traitgraph.errors import BuildError, UserError
    from traitgraph.linker.lock import check_linker_version, read_lock, relink

    if args.lock is None:
        plan = BuildPlan.load(args.specs_dir, args.out or "out")
        check_output_dir(plan.out.root, plan.spec)  # a file, unwritable, or the base's own directory
        missing = [n for n in plan.spec.build_order() if not plan.node_is_built(n)]
        if missing:
            raise BuildError(f"not built yet: {', '.join(missing)}; run `traitgraph build` (or doit) first")
        with OutputLock(plan.out):
            link_action(plan)
        return 0

    if args.out is None:
        raise UserError("--lock needs an output directory: -o DIR")
    lock = read_lock(args.lock)
    check_linker_version(lock, args.lock)
    # the fingerprint first (milliseconds): never convert a base the lock was not built on
    fingerprint = base_fingerprint(lock.base.reference, Path(args.specs_dir))
    if fingerprint != lock.base.fingerprint:
        raise BuildError(
            f"{args.lock}: base '{lock.base.reference}' has fingerprint {fingerprint[:19]}, "
            f"the lock was built on {lock.base.fingerprint[:19]}; nothing was converted or linked"
        )
    base = resolve_base(lock.base.reference, Path(args.specs_dir))
    cache = VectorCache()
    out = OutputLayout(Path(args.out))
    with OutputLock(out):
        relink(lock, cache.vector_path, base.path, out.checkpoint)
        from traitgraph.linker.lock import write_lock

        write_lock(out.lock, lock)
        write_stamps(out, lock.outputs)
    print(
        f"relinked {len(lock.nodes)} task vectors into {out.checkpoint}; all {len(lock.outputs)} output hashes match the lock"
    )
    return 0
