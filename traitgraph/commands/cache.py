"""Inspect and clean the task-vector cache ($TRAITGRAPH_CACHE, default ~/.cache/traitgraph).

traitgraph cache ls                    entries: hash, node, size
traitgraph cache size                  total size
traitgraph cache gc [--lock FILE ...]  drop vectors no lock file references
traitgraph cache key [--specs DIR]     one key over the specs' training hashes (for CI caches)
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["ls", "size", "gc", "key"], help="what to do")
    parser.add_argument(
        "--lock",
        action="append",
        default=None,
        help="a lock file whose vectors gc keeps (repeatable; default: out/traitgraph.lock)",
    )
    parser.add_argument("--specs", default="specs", help="key: the specs directory (default: specs)")
    parser.add_argument("--dry-run", action="store_true", help="gc: only say what would go")


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def print_cache_key(specs_dir: str) -> int:
    from traitgraph.builder.cache_key import training_hashes_key
    from traitgraph.builder.plan import BuildPlan

    print(training_hashes_key(BuildPlan.load(specs_dir, "out").hashes))
    return 0


def run(args: argparse.Namespace) -> int:
    from traitgraph.builder.cache import VectorCache
    from traitgraph.errors import UserError
    from traitgraph.linker.lock import read_lock

    if args.action == "key":
        return print_cache_key(args.specs)
    cache = VectorCache()
    entries = cache.entries()
    if args.action == "ls":
        print(f"{cache.vectors}")
        for e in sorted(entries, key=lambda e: (e.node_id, e.training_hash)):
            print(f"  {e.training_hash[:12]}  {e.node_id:<28} {human(e.size):>9}")
        print(f"{len(entries)} vectors, {human(sum(e.size for e in entries))}")
        return 0
    if args.action == "size":
        print(f"{human(sum(e.size for e in entries))} in {len(entries)} vectors ({cache.root})")
        return 0
    locks = [Path(p) for p in (args.lock or ["out/traitgraph.lock"])]
    keep: set[str] = set()
    for lock_path in locks:
        if not lock_path.is_file():
            raise UserError(f"{lock_path}: no such lock file; name the locks to keep with --lock FILE")
        keep |= {n.training_hash for n in read_lock(lock_path).nodes}
    drop = [e for e in entries if e.training_hash not in keep]
    if args.dry_run:
        for e in drop:
            print(f"would remove {e.training_hash[:12]} {e.node_id} ({human(e.size)})")
        return 0
    removed, freed = cache.gc(keep)
    print(f"removed {removed} vectors, freed {human(freed)}; kept {len(keep)} referenced by {len(locks)} lock file(s)")
    return 0
