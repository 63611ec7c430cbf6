"""Specs to a validated graph: schema, loading, validation, hashing, drawing."""

from traitgraph.graph.load import LoadedNode, Spec, load_specs

__all__ = ["LoadedNode", "Spec", "load_specs"]
