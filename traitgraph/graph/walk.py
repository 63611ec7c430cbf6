"""Walk the graph around one node: the contexts of its neighbours, for dreaming.

``dream`` (see docs/dream.md) writes new training examples for a node by
putting its behaviour into situations taken from the nodes it is ``related``
to or ``conflicts`` with (edges in either direction). This module collects
those situations; it never returns an eval or ood case's context, of this
node or of any other, so generated data cannot leak into what evaluation
holds out.

>>> walk_contexts(spec, "listening").neighbours        # doctest: +SKIP
('mode-awareness', 'not-rushing')
"""

from __future__ import annotations

from dataclasses import dataclass

from traitgraph.graph.load import Spec
from traitgraph.graph.schema import Example

#: Edge kinds whose other end lends its contexts to a dream.
DREAM_EDGE_KINDS = frozenset({"related", "conflicts"})


@dataclass(frozen=True)
class Walk:
    """What a dream of ``node_id`` starts from."""

    node_id: str
    description: str
    own: tuple[Example, ...]
    """The node's own training examples (the teacher's few-shot demonstrations)."""
    neighbours: tuple[str, ...]
    neighbour_contexts: tuple[str, ...]
    """User messages of the neighbours' training examples, deduplicated, in node-id order."""
    held_out: frozenset[str]
    """Every eval and ood case's user message in the personality: never used as a context."""


def user_message(example: Example) -> str:
    """The last user message of an example's context."""
    return example.chat()[-1]["content"]


def neighbours(spec: Spec, node_id: str) -> list[str]:
    """Nodes joined to ``node_id`` by a ``related`` or ``conflicts`` edge, either way, sorted."""
    out = {e.to for e in spec.nodes[node_id].spec.edges if e.kind in DREAM_EDGE_KINDS}
    out |= {
        other
        for other, n in spec.nodes.items()
        if any(e.to == node_id and e.kind in DREAM_EDGE_KINDS for e in n.spec.edges)
    }
    return sorted(out - {node_id})


def walk_contexts(spec: Spec, node_id: str) -> Walk:
    """The :class:`Walk` of ``node_id`` (see module doc)."""
    held_out = frozenset(user_message(case) for n in spec.nodes.values() for case in (*n.spec.eval, *n.spec.ood))
    own = spec.nodes[node_id].examples
    own_contexts = {user_message(ex) for ex in own}
    near = neighbours(spec, node_id)
    seen: dict[str, None] = {}
    for other in near:
        for ex in spec.nodes[other].examples:
            ctx = user_message(ex)
            if ctx not in held_out and ctx not in own_contexts:
                seen.setdefault(ctx, None)
    return Walk(node_id, spec.nodes[node_id].spec.description, tuple(own), tuple(near), tuple(seen), held_out)
