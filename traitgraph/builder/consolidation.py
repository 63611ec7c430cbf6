"""``merge.consolidate``: the link step distils the freshly linked weights before they are installed.

With ``merge.consolidate.steps`` > 0 the link task merges as usual into its
staging directory, then :func:`consolidation_step` trains those weights for a
few steps (:func:`traitgraph.compiler.consolidate.consolidate`: toward each
node *alone* on that node's examples, toward the base on general text), writes
them back over the staged shards, and adds ``consolidation.json``: the KL to
each node alone and to the base, before and after. Only then are the files
hashed into the lock and installed, so the lock, the non-finite check and the
atomic swap cover the consolidated checkpoint like any other.

It is part of the link: the link task is up to date while its inputs (the
vectors, the merge settings with ``consolidate``, the base) are unchanged, so
a build whose nodes did not change does not distil again.

>>> refine = consolidation_step(plan, threads=1)   # None when merge.consolidate.steps is 0   # doctest: +SKIP
>>> link_checkpoint(base, inputs, settings, out, refine=refine)                       # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from traitgraph.environment import CONSOLIDATE_THREADS_ENV, thread_count
from traitgraph.errors import BuildError

if TYPE_CHECKING:
    from traitgraph.builder.plan import BuildPlan
    from traitgraph.graph.schema import ConsolidateSpec

#: Written into the checkpoint by a consolidating link (a lock output like the weights).
CONSOLIDATION_FILE = "consolidation.json"
#: The row of the KL to the base on general text in ``consolidation.json``.
GENERAL_ROW = "(base, general text)"
#: The KLs of ``consolidation.json`` are measured on each node's first this-many examples, and on
#: the first :data:`REPORT_GENERAL` general lines: scoring every example of every node before and
#: after took twice as long as the distillation itself (206 s of 306 s on the example).
REPORT_ROWS, REPORT_GENERAL = 8, 16
#: Rows scored together when measuring a KL.
REPORT_BATCH = 8


def consolidate_threads() -> int:
    """Threads for ``merge.consolidate`` (``$TRAITGRAPH_CONSOLIDATE_THREADS``, default 2). It runs
    alone, after every node has trained, on a fixed count like training's, so the bytes do not
    depend on the machine."""
    return thread_count(CONSOLIDATE_THREADS_ENV, 2)


def node_sources(plan: BuildPlan, tokenizer) -> list:
    """Each built node as a distillation source: its verified vector, its examples, its weight."""
    from traitgraph.compiler.consolidate import Source
    from traitgraph.compiler.data import encode_examples
    from traitgraph.graph.target import resolve_target

    sources = []
    for node_id in plan.spec.build_order():
        if not plan.node_is_built(node_id):
            raise BuildError(f"node '{node_id}' is not built; run `traitgraph build` first")
        target = resolve_target(plan.spec, node_id, plan.fingerprint, plan.hashes)
        examples = encode_examples(tokenizer, target.examples, max_length=target.settings.max_length)
        sources.append(
            Source(node_id, plan.cache.verify(plan.hashes[node_id]), examples, plan.spec.nodes[node_id].spec.weight)
        )
    return sources


def general_rows(tokenizer, lines: int) -> list:
    """The first ``lines`` lines of the shipped replay corpus (never the retention set), encoded."""
    from traitgraph.compiler.data import encode_text
    from traitgraph.graph.replay import GENERAL_REPLAY_FILE, shipped_text

    encoded = (encode_text(tokenizer, line, max_length=256) for line in shipped_text(GENERAL_REPLAY_FILE)[:lines])
    return [e for e in encoded if e is not None]


def consolidation_step(plan: BuildPlan, threads: int) -> Callable[[Path], None] | None:
    """The link's ``refine`` hook for ``merge.consolidate`` on ``threads`` torch threads (the
    training's: the same count gives the same bytes), or ``None`` when it is off."""
    settings = plan.spec.personality.merge.consolidate
    if not settings.steps:
        return None
    return lambda staging: consolidate_staged(plan, settings, staging, threads)


def consolidate_staged(plan: BuildPlan, settings: ConsolidateSpec, staging: Path, threads: int) -> dict[str, Any]:
    """Distil the checkpoint in ``staging`` in place; write and return ``consolidation.json``'s content."""
    import torch

    from traitgraph.compiler.base_model import ResolvedBase, load_model, resolve_base
    from traitgraph.compiler.consolidate import ConsolidateSettings, Teacher, consolidate, mean_kl
    from traitgraph.compiler.data import pad_id

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        student, tokenizer = load_model(ResolvedBase(str(staging), staging, ""), dtype=torch.float32)
        base = resolve_base(plan.spec.personality.base, plan.spec.specs_dir)
        teacher = Teacher(load_model(base, dtype=torch.float32)[0])
        pad, sources = pad_id(tokenizer), node_sources(plan, tokenizer)
        general = general_rows(tokenizer, settings.general_lines)
        names = [*(s.node_id for s in sources), GENERAL_ROW]

        def kls() -> dict[str, float]:
            values = [mean_kl(student, teacher, s, s.examples[:REPORT_ROWS], pad, REPORT_BATCH) for s in sources]
            return dict(
                zip(names, [*values, mean_kl(student, teacher, None, general[:REPORT_GENERAL], pad, REPORT_BATCH)])
            )

        before = kls()
        run = ConsolidateSettings(
            steps=settings.steps,
            learning_rate=settings.learning_rate,
            batch_size=settings.batch_size,
            general_weight=settings.general_weight,
            seed=settings.seed,
        )
        curve = consolidate(student, teacher, sources, general, pad, run, on_step=_print_step)
        after = kls()
        _write_weights(student, staging)
    finally:
        torch.set_num_threads(previous)
    result = {
        "steps": settings.steps,
        "threads": threads,
        "loss": curve,
        "kl_rows": {"per_node": REPORT_ROWS, "general": REPORT_GENERAL},
        "kl_before": before,
        "kl_after": after,
    }
    (staging / CONSOLIDATION_FILE).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def _print_step(step: int, steps: int, loss: float) -> None:
    print(f"consolidate: step {step}/{steps}, loss {loss:.4f}", flush=True)


def _write_weights(model, staging: Path) -> None:
    """Each staged safetensors file rewritten with the model's tensors of the same names and dtypes."""
    from safetensors.torch import load_file, save_file

    state = model.state_dict()
    for path in sorted(staging.glob("*.safetensors")):
        staged = load_file(str(path))
        missing = sorted(set(staged) - set(state))
        if missing:
            raise BuildError(f"consolidate: the model has no tensor '{missing[0]}' of {path.name}")
        tensors = {name: state[name].detach().to(t.dtype).contiguous() for name, t in staged.items()}
        del staged
        save_file(tensors, str(path), metadata={"format": "pt"})
