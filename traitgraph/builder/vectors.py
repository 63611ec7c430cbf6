"""A node's task vector from the cache, trained into it first when it is missing.

``traitgraph dream --score vector`` scores candidates with the node's own
vector, the one trained on its own examples (no dream file). That vector has
the node's training hash over the spec loaded without dream files, so it is
what ``traitgraph build`` or ``traitgraph train`` left in the cache for a node
without ``training.dream``; with ``training.dream`` set, no build makes it
(the build trains on the dream file too), so it is trained here, exactly as
``traitgraph train`` would, and cached under that hash for next time.

>>> paths = cached_or_trained(spec, "voice", base, node_hashes(spec, base.fingerprint), VectorCache())  # doctest: +SKIP
>>> paths["voice"]                                                                                      # doctest: +SKIP
PosixPath('/home/me/.cache/traitgraph/vectors/3f9c....safetensors')
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import networkx as nx

from traitgraph.builder.cache import VectorCache
from traitgraph.graph.load import Spec


def refines_chain(spec: Spec, node_id: str) -> list[str]:
    """``node_id`` and every node it ``refines``, directly or not, dependencies first."""
    needed = nx.ancestors(spec.refines_graph(), node_id) | {node_id}
    return [n for n in spec.build_order() if n in needed]


def cached_or_trained(
    spec: Spec, node_id: str, base, hashes: dict[str, str], cache: VectorCache, say: Callable[[str], None] = print
) -> dict[str, Path]:
    """Verified cached vectors of ``node_id`` and of the chain it refines, by node id; each one
    missing is trained into the cache first (parents first), and ``say`` is told so."""
    from traitgraph.compiler.train import train_node
    from traitgraph.graph.hashing import training_payload
    from traitgraph.graph.target import resolve_target

    paths: dict[str, Path] = {}
    for node in refines_chain(spec, node_id):
        h = hashes[node]
        if not cache.is_fresh(h):
            target = resolve_target(spec, node, base.fingerprint, hashes)
            say(f"training '{node}' on its own examples (no vector {h[:12]} in the cache {cache.vectors})")
            with cache.writing():
                parents = [paths[p] for p in target.parent_ids]
                train_node(target, base, cache.vector_path(h), parent_vectors=parents, progress=False)
                cache.commit(h, node, training_payload(spec, node, base.fingerprint, hashes))
        paths[node] = cache.verify(h)
    return paths
