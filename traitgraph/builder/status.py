"""``traitgraph status``: what a build would do, and why.

For each node: *built* (the cache holds its vector), *cached* (built, but the
last link used another one), or *stale* with the fields that changed since
the lock file's build (from the training payloads recorded in the cache).
"""

from __future__ import annotations

from pathlib import Path

from traitgraph.builder.cache import payload_diff
from traitgraph.builder.plan import BuildPlan, lock_inputs


def node_reasons(plan: BuildPlan, node_id: str, locked_hash: str | None) -> list[str]:
    """Why a node is stale: the payload fields that differ from the locked build's."""
    if locked_hash is None:
        return ["new node (not in the last build)"]
    old = plan.cache.record(locked_hash)
    if old is None:
        return ["changed since the last build (its old record is not in the cache)"]
    return payload_diff(old.payload, plan.payload(node_id)) or ["cache entry missing or corrupt"]


def describe_status(specs_dir: str | Path, out_dir: str | Path) -> str:
    plan = BuildPlan.load(specs_dir, out_dir)
    lock = plan.last_lock()
    locked = {n.id: n for n in lock.nodes} if lock else {}
    lines = [f"{plan.spec.personality.name}: {len(plan.spec.nodes)} nodes -> {plan.out.root}"]
    stale = 0
    for node_id in plan.spec.build_order():
        h = plan.hashes[node_id]
        prev = locked.get(node_id)
        if plan.node_is_built(node_id):
            state = "up to date" if prev and prev.training_hash == h else "cached"
            lines.append(f"  {node_id:<28} {state:<10} {h[:12]}")
            continue
        stale += 1
        lines.append(f"  {node_id:<28} {'stale':<10} {h[:12]}")
        for reason in node_reasons(plan, node_id, prev.training_hash if prev else None)[:8]:
            lines.append(f"      {reason}")
    for gone in sorted(set(locked) - set(plan.spec.nodes)):
        lines.append(f"  {gone:<28} {'removed':<10} (in the last build, no longer in the specs)")
    if plan.link_is_current():
        lines.append("link: up to date")
    elif lock is None:
        lines.append("link: never built")
    else:
        diff = [d for d in payload_diff(lock_inputs(lock), plan.link_inputs()) if "vector_sha256" not in d]
        why = diff[:8] or (["trained vectors changed"] if stale else ["checkpoint files changed on disk"])
        lines.append("link: stale")
        lines.extend(f"      {d}" for d in why)
    lines.append(f"{stale} node(s) to train" if stale else "all nodes built")
    return "\n".join(lines)
