"""doit tasks for a personality build: ``base``, ``train:<node>``, ``link``, ``eval``.

:mod:`traitgraph.pipeline` puts these together with the ``eval`` task for
``dodo.py`` and ``traitgraph build``.

Up-to-dateness is decided by content (see :mod:`traitgraph.builder.plan`),
never by file times: each task carries an ``uptodate`` callable and no
``file_dep``. doit's own state is kept in a sqlite file under
``OUT/.traitgraph/`` (sqlite tolerates two processes; the default dbm
backend does not), but the truth lives in the cache and the lock file.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from traitgraph.builder.plan import BuildPlan, log_event, remove_outputs, write_stamps
from traitgraph.environment import TRAIN_THREADS_ENV, thread_count
from traitgraph.errors import UserError, environment_error
from traitgraph.faults import fault_point


def train_threads() -> int:
    """Torch threads per training process (``$TRAITGRAPH_TRAIN_THREADS``, default 1). Fixed
    (not "all cores") because float results differ in the last bits between thread counts,
    and a serial build must equal a parallel one bit for bit. Parallelism comes from doit -n."""
    return thread_count(TRAIN_THREADS_ENV, 1)


def doit_config(plan: BuildPlan, default_tasks: list[str]) -> dict[str, Any]:
    """doit's settings for a build: sqlite state under ``OUT/.traitgraph/``, full output."""
    plan.out.state.mkdir(parents=True, exist_ok=True)
    config = {
        "backend": "sqlite3",
        "dep_file": str(plan.out.state / "doit.sqlite"),
        "verbosity": 2,
        "default_tasks": default_tasks,
        # doit's default report stream is the sys.stdout of when doit was first imported; a build
        # run in-process (tests, a notebook) after stdout was swapped would write to a stale one
        "outfile": sys.stdout,
    }
    if plan.executor is not None:  # actions wait on Ray futures: threads share one Ray connection
        config["par_type"] = "thread"
    return config


# --------------------------------------------------------------------------- actions


def build_base(plan: BuildPlan) -> None:
    from traitgraph.compiler.base_model import resolve_base

    t0 = time.perf_counter()
    base = resolve_base(plan.spec.personality.base, plan.spec.specs_dir)
    print(f"base {plan.spec.personality.base}: {base.path} ({time.perf_counter() - t0:.1f}s)")


def train_node_action(plan: BuildPlan, node_id: str) -> dict[str, str]:
    """Train one node into the cache; on a cache hit, verify the cached vector (full sha256) instead.

    Returns the training hash, which doit keeps as the task's value (see :func:`train_is_current`).
    """
    h = plan.hashes[node_id]
    if plan.cache.is_fresh(h):
        verified_vector(plan, node_id)
        print(f"train:{node_id}: cache hit {h[:12]} (verified)")
        return {"training_hash": h}
    import torch

    from traitgraph.compiler.base_model import resolve_base
    from traitgraph.compiler.train import train_node
    from traitgraph.graph.target import resolve_target

    target = resolve_target(plan.spec, node_id, plan.fingerprint, plan.hashes)
    parents = [plan.cache.verify(parent_hash) for _, parent_hash in target.parents]
    t0 = time.perf_counter()
    with plan.cache.writing():  # `cache gc` refuses while a vector is being trained and saved
        fault_point("train")
        if plan.executor is not None:  # a Ray task; the executor commits the verified vector
            result = plan.executor.train(plan, node_id, parents, train_threads())
            steps, final_loss, where = result["steps"], result["final_loss"], " on ray"
        else:
            torch.set_num_threads(train_threads())
            base = resolve_base(plan.spec.personality.base, plan.spec.specs_dir)
            meta = train_node(target, base, plan.cache.vector_path(h), parent_vectors=parents, progress=True)
            fault_point("commit")
            plan.cache.commit(h, node_id, plan.payload(node_id))
            steps, final_loss, where = meta.steps, meta.final_loss, ""
    seconds = time.perf_counter() - t0
    print(f"train:{node_id}: {steps} steps, final loss {final_loss:.4f}, {seconds:.1f}s{where} -> {h[:12]}")
    log_event(plan.out, "train", node=node_id, hash=h, seconds=round(seconds, 2), final_loss=final_loss)
    return {"training_hash": h}


def train_is_current(plan: BuildPlan, node_id: str, values: dict[str, Any]) -> bool:
    """``train:<node>`` is up to date when the cache holds a fresh vector for the node's
    training hash and this output's doit state recorded that hash (``doit forget
    train:NODE`` clears it, so the next build re-verifies the cached vector)."""
    return values.get("training_hash") == plan.hashes[node_id] and plan.node_is_built(node_id)


def verified_vector(plan: BuildPlan, node_id: str) -> Path:
    """The node's cached vector after a full hash check; a corrupt one is retrained first."""
    from traitgraph.builder.cache import CorruptEntry

    try:
        return plan.cache.verify(plan.hashes[node_id])
    except CorruptEntry as exc:
        print(f"warning: {exc}; retraining '{node_id}'", file=sys.stderr)
        train_node_action(plan, node_id)
        return plan.cache.verify(plan.hashes[node_id])


def link_action(plan: BuildPlan) -> None:
    """Link every node's vector into OUT/checkpoint and write the lock file."""
    from traitgraph import __version__, versions
    from traitgraph.compiler.base_model import resolve_base
    from traitgraph.linker.link import LinkInput, link_checkpoint
    from traitgraph.linker.lock import LockBase, LockFile, LockNode, write_lock

    spec = plan.spec
    inputs, nodes = [], []
    for node_id in spec.build_order():
        h = plan.hashes[node_id]
        path = verified_vector(plan, node_id)
        record = plan.cache.record(h)
        weight = spec.nodes[node_id].spec.weight
        inputs.append(LinkInput(name=node_id, path=path, weight=weight))
        device = record.payload["training"].get("device")  # absent on the cpu (see compiler.device)
        if device is not None:
            device = f"{device}/{record.payload['training']['precision']}"
        nodes.append(LockNode(id=node_id, training_hash=h, vector_sha256=record.sha256, weight=weight, device=device))
    base = resolve_base(spec.personality.base, spec.specs_dir)
    t0 = time.perf_counter()
    from traitgraph.builder.consolidation import consolidate_threads, consolidation_step

    refine = consolidation_step(plan, consolidate_threads())
    outputs = link_checkpoint(
        base.path, inputs, spec.personality.merge, plan.out.checkpoint, progress=True, refine=refine
    )
    lock = LockFile(
        traitgraph_version=__version__,
        linker_version=versions.LINKER_VERSION,
        base=LockBase(reference=spec.personality.base, fingerprint=plan.fingerprint),
        nodes=nodes,
        merge=spec.personality.merge,
        outputs=outputs,
    )
    fault_point("lock")
    write_lock(plan.out.lock, lock)
    write_stamps(plan.out, outputs)
    from traitgraph.linker.model_card import write_model_card  # not a lock output (see its docstring)

    write_model_card(plan.out.root, spec, lock, base.path)
    seconds = time.perf_counter() - t0
    print(
        f"link: {len(inputs)} task vectors, {spec.personality.merge.method} -> {plan.out.checkpoint} ({seconds:.1f}s)"
    )
    log_event(plan.out, "link", nodes=[n.id for n in nodes], seconds=round(seconds, 2))


# --------------------------------------------------------------------------- tasks


def task_action(fn: Callable[..., None], *args: Any) -> Callable[[], Any]:
    """A doit python-action with traitgraph's exit codes (README, "Exit codes").

    A user mistake or a failed gate prints ``error: ...`` without a traceback
    and becomes doit's *error* (doit exits 2); anything else is a bug: its
    traceback is printed and it becomes doit's *failure* (doit exits 1).
    """

    def action() -> Any:
        from doit.exceptions import TaskError, TaskFailed

        try:
            result = fn(*args)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return TaskError(str(exc).splitlines()[0])
        except (OSError, RecursionError) as exc:  # the machine's failure (disk full, read-only): exit 2
            user_error = environment_error(exc)
            if user_error is None:
                traceback.print_exc()
                return TaskFailed("internal error in traitgraph (traceback above)")
            print(f"error: {user_error}", file=sys.stderr)
            return TaskError(str(user_error).splitlines()[0])
        except Exception:  # a bug: keep its traceback, exit 1
            traceback.print_exc()
            return TaskFailed("internal error in traitgraph (traceback above)")
        return result if isinstance(result, dict) else None  # a dict is kept as the task's values

    action.__name__ = getattr(fn, "__name__", "action")
    return action


def base_task(plan: BuildPlan) -> dict[str, Any]:
    from traitgraph.compiler.base_model import base_is_ready

    return {
        "basename": "base",
        "doc": f"prepare the base model ({plan.spec.personality.base})",
        "actions": [task_action(build_base, plan)],
        "uptodate": [lambda: base_is_ready(plan.spec.personality.base, plan.spec.specs_dir)],
    }


def train_tasks(plan: BuildPlan) -> Iterator[dict[str, Any]]:
    yield {"basename": "train", "name": None, "doc": "train every node whose training hash changed"}
    for node_id in plan.spec.build_order():
        yield {
            "basename": "train",
            "name": node_id,
            "doc": plan.spec.nodes[node_id].spec.description.strip().splitlines()[0][:70],
            "actions": [task_action(train_node_action, plan, node_id)],
            "task_dep": ["base", *(f"train:{d}" for d in plan.spec.dependencies(node_id))],
            "uptodate": [lambda task, values, n=node_id: train_is_current(plan, n, values)],
        }


def link_task(plan: BuildPlan) -> dict[str, Any]:
    return {
        "basename": "link",
        "doc": f"link the task vectors ({plan.spec.personality.merge.method}) into {plan.out.checkpoint}",
        "actions": [task_action(link_action, plan)],
        "task_dep": ["train"],
        "uptodate": [plan.link_is_current],
        "clean": [lambda: remove_outputs(plan.out.checkpoint, plan.out.lock, plan.out.stamps)],
    }


#: doit commands that only read the build; every other invocation runs tasks.
READ_ONLY_DOIT_COMMANDS = frozenset(
    {"list", "info", "help", "dumpdb", "strace", "tabcompletion", "forget", "ignore", "reset-dep", "auto"}
)


def runs_tasks(argv: list[str]) -> bool:
    """Whether a doit command line runs tasks (``doit``, ``doit -n 2 link``) or only reads."""
    return not any(arg in READ_ONLY_DOIT_COMMANDS for arg in argv if not arg.startswith("-"))
