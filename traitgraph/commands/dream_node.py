"""One node's dream, in order: contexts, the teacher's replies, scores, the file.

:mod:`traitgraph.commands.dream` decides which nodes to dream for and where
each file goes; this module does the work for one of them with the pure
pieces of :mod:`traitgraph.compiler.dream`, loading each model once per run.
"""

from __future__ import annotations

from traitgraph.compiler.dream import (
    GRAPH,
    NEW,
    REPHRASED,
    SCORE_RULES,
    Candidate,
    answer,
    best,
    candidate_contexts,
    new_context_requests,
    rephrase_requests,
    reply_logprobs,
    teacher_scores,
    topics,
    write_contexts,
)
from traitgraph.errors import UserError
from traitgraph.graph.walk import Walk, user_message, walk_contexts


class Models:
    """Models and tokenizers loaded once per run, by directory."""

    def __init__(self) -> None:
        self._loaded: dict[str, tuple] = {}

    def get(self, resolved) -> tuple:
        from traitgraph.compiler.base_model import load_model

        key = str(resolved.path)
        if key not in self._loaded:
            self._loaded[key] = load_model(resolved)
        return self._loaded[key]


def _graph_candidates(spec, walk: Walk, settings) -> list[Candidate]:
    own = [user_message(e) for e in walk.own]
    contexts = candidate_contexts(walk.neighbour_contexts, own, walk.held_out, settings)
    if not contexts and settings.new_contexts == 0 and settings.rephrase == 0:
        raise UserError(_nothing_to_dream(spec, walk.node_id, asked=0))
    return [Candidate(c, GRAPH) for c in contexts]


def _nothing_to_dream(spec, node_id: str, asked: int) -> str:
    written = f"and the teacher wrote no usable context ({asked} asked)" if asked else "and no context is written"
    return (
        f"{spec.nodes[node_id].file}: node '{node_id}' has no `related` or `conflicts` neighbour with training "
        f"contexts to dream from (field edges), {written}; add such an edge, or let the teacher write contexts "
        "(--new-contexts, --rephrase; a stronger --generator writes more usable ones)"
    )


def _written(model, tokenizer, walk: Walk, graph: list[Candidate], settings) -> tuple[list[Candidate], dict]:
    """Contexts the teacher writes (new topics, rephrasings), kept by the filter; and how many of each."""
    from traitgraph.evaluate.scores import generate

    own = [user_message(e) for e in walk.own]
    shown = list(dict.fromkeys([*own, *walk.neighbour_contexts]))
    new = new_context_requests(topics(), shown, settings)
    again = rephrase_requests(shown, settings)
    taken = [*shown, *(c.context for c in graph)]
    kept = write_contexts(model, tokenizer, generate, [*new, *again], taken, walk.held_out)
    counts = {
        kind: {"asked": len(asked), "kept": sum(c.source.startswith(f"{kind}: ") for c in kept)}
        for kind, asked in ((NEW, new), (REPHRASED, again))
    }
    return kept, counts


def _vector_scores(spec, node_id: str, answered, models: Models) -> tuple[list[float], dict]:
    """The ``vector`` score: log p(reply | context) under start + τ_node minus under the start
    (start: the base plus the vectors the node refines), τ from the cache or trained into it."""
    from traitgraph.builder.cache import VectorCache
    from traitgraph.builder.vectors import cached_or_trained
    from traitgraph.compiler.base_model import resolve_base
    from traitgraph.evaluate.scores import vectors_applied
    from traitgraph.graph.hashing import node_hashes

    base = resolve_base(spec.personality.base, spec.specs_dir)
    hashes = node_hashes(spec, base.fingerprint)
    paths = cached_or_trained(spec, node_id, base, hashes, VectorCache(), say=lambda m: print(f"dream:{node_id}: {m}"))
    model, tokenizer = models.get(base)
    with vectors_applied(model, [(paths[p], 1.0) for p in spec.dependencies(node_id)]):
        start = reply_logprobs(model, tokenizer, answered)
        with vectors_applied(model, [(paths[node_id], 1.0)]):
            moved = reply_logprobs(model, tokenizer, answered)
    return [m - s for m, s in zip(moved, start)], {"vector": {"node": node_id, "training_hash": hashes[node_id]}}


def dream_node(spec, job, models: Models) -> None:
    """Dream for ``job.node_id`` and write ``job.out`` (see :mod:`traitgraph.commands.dream`)."""
    from traitgraph.atomic import write_text_atomic
    from traitgraph.compiler.base_model import resolve_base
    from traitgraph.evaluate.scores import generate
    from traitgraph.graph.dreamfile import render_dream_file

    settings, walk = job.settings, walk_contexts(spec, job.node_id)
    graph = _graph_candidates(spec, walk, settings)
    if settings.generator:
        teacher = resolve_base(settings.generator, job.generator_base)
    else:
        teacher = resolve_base(spec.personality.base, spec.specs_dir)
    model, tokenizer = models.get(teacher)
    written, counts = _written(model, tokenizer, walk, graph, settings)
    if not graph and not written:
        raise UserError(_nothing_to_dream(spec, job.node_id, sum(c["asked"] for c in counts.values())))
    shots = walk.own[: settings.shots]
    answered = answer(model, tokenizer, generate, walk.description, shots, [*graph, *written], settings.max_new_tokens)
    if settings.score == "vector":
        scores, extra = _vector_scores(spec, job.node_id, answered, models)
    else:
        scores, extra = teacher_scores(model, tokenizer, walk.description, shots, answered), {}
    kept = best(answered, scores, settings.n)
    header = {
        **extra,
        "node": job.node_id,
        "generator": teacher.reference,
        "generator_fingerprint": teacher.fingerprint,
        "neighbours": list(walk.neighbours),
        "settings": settings.record(),
        "contexts": {GRAPH: len(graph), **counts},
        "score_rule": SCORE_RULES[settings.score],
        "scores": [round(d.score, 4) for d in kept],
        "sources": [d.source for d in kept],
        "traitgraph_version": _version(),
    }
    write_text_atomic(job.out, render_dream_file([(d.context, d.response) for d in kept], header))
    new, again = counts[NEW], counts[REPHRASED]
    print(
        f"dream:{job.node_id}: {len(kept)} of {len(answered)} replies kept ({len(graph)} contexts from the graph, "
        f"{new['kept']} of {new['asked']} new and {again['kept']} of {again['asked']} rephrased ones written) "
        f"-> {job.out}"
    )
    print(_next_step(spec, job))


def _version() -> str:
    from traitgraph import __version__

    return __version__


def _next_step(spec, job) -> str:
    import os

    node = spec.nodes[job.node_id]
    if job.in_spec:
        return f"review it: `traitgraph build` trains on it (training.dream of node '{job.node_id}')"
    rel = os.path.relpath(job.out, node.file.parent)
    if node.spec.examples_file is None:
        return f"review it, then add `examples_file: {rel}` to {node.file}, or set `training.dream`"
    return f"review it, then append its example lines to {node.spec.examples_file} (the examples_file of {node.file})"
