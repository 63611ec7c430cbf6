"""The grid of a ``traitgraph sweep``: ``--set PATH=V1,V2`` options and the specs each point means.

A path is dotted: ``merge.method`` and ``eval.max_retention_loss_pct`` go into
``personality.yaml``; ``nodes.ID.FIELD`` (``nodes.voice.weight``,
``nodes.voice.training.steps``) into the node file of ``ID``. Values are read
as YAML scalars (``0.5`` is a number, ``true`` a boolean, ``ties`` a string).
Each point is the loaded specs with its values put in and validated again,
so a point's training hashes are those of the same edit made by hand::

    >>> sets = [parse_set("merge.method=ties,iso_c"), parse_set("nodes.voice.weight=0.5,1")]
    >>> [p for p in grid(sets)][1]
    {'merge.method': 'ties', 'nodes.voice.weight': 1}
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from traitgraph.errors import UserError, field_path
from traitgraph.graph.load import Spec
from traitgraph.graph.schema import NodeSpec, Personality


def parse_set(text: str) -> tuple[str, list[Any]]:
    """``PATH=V1,V2,...`` -> (path, [values]); a :class:`UserError` naming the option otherwise.

    >>> parse_set("merge.density=0.2,0.5")
    ('merge.density', [0.2, 0.5])
    """
    import yaml

    path, sep, values = text.partition("=")
    path = path.strip()
    if not sep or not path or not values.strip():
        raise UserError(f"--set {text!r}: expected PATH=VALUE[,VALUE...], e.g. merge.method=ties,iso_cts")
    parsed = []
    for item in values.split(","):
        try:
            parsed.append(yaml.safe_load(item.strip()))
        except yaml.YAMLError:
            raise UserError(f"--set {path}: value {item!r} is not a YAML scalar") from None
    if any(v is None or isinstance(v, (list, dict)) for v in parsed):
        raise UserError(f"--set {path}: every value must be a number, string or boolean, got {values!r}")
    return path, parsed


def grid(sets: Sequence[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
    """Every combination of the values, the last option varying fastest."""
    paths = [p for p, _ in sets]
    duplicates = sorted({p for p in paths if paths.count(p) > 1})
    if duplicates:
        raise UserError(f"--set given twice for {', '.join(duplicates)}; list all values in one --set")
    return [dict(zip(paths, combo)) for combo in itertools.product(*(v for _, v in sets))]


def _put(document: dict[str, Any], keys: list[str], value: Any, path: str) -> None:
    """Set ``document[k0][k1]...`` to ``value``; every key must be a field of the document."""
    where, free = document, False  # free: inside a section the file left out; validation checks the keys
    for i, key in enumerate(keys):
        if not free and (not isinstance(where, dict) or key not in where):
            known = ", ".join(sorted(where)) if isinstance(where, dict) else "none (not a mapping)"
            raise UserError(f"--set {path}: unknown field '{'.'.join(keys[: i + 1])}'; known here: {known}")
        if i == len(keys) - 1:
            where[key] = value
        else:
            if where.get(key) is None:  # an optional section left out of the file (a node's `training:`)
                where[key], free = {}, True
            where = where[key]


def _validated(model: type[BaseModel], document: dict[str, Any], prefix: str, what: str) -> Any:
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(f"{prefix}{field_path(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise UserError(f"--set {what}: {problems}") from None


def _node_document(spec: Spec, node_id: str, path: str) -> dict[str, Any]:
    if node_id not in spec.nodes:
        raise UserError(f"--set {path}: no node '{node_id}'; nodes: {', '.join(sorted(spec.nodes))}")
    return spec.nodes[node_id].spec.model_dump(mode="json", by_alias=True)


def apply_point(spec: Spec, point: dict[str, Any]) -> Spec:
    """``spec`` with every ``path: value`` of ``point`` put in and validated again."""
    personality = spec.personality.model_dump(mode="json", by_alias=True)
    nodes: dict[str, dict[str, Any]] = {}
    for path, value in point.items():
        keys = path.split(".")
        if keys[0] == "nodes":
            if len(keys) < 3:
                raise UserError(f"--set {path}: a node field is nodes.ID.FIELD, e.g. nodes.voice.weight")
            document = nodes.setdefault(keys[1], _node_document(spec, keys[1], path))
            _put(document, keys[2:], value, path)
        else:
            _put(personality, keys, value, path)
    what = ", ".join(f"{p}={v}" for p, v in point.items())
    new_nodes = dict(spec.nodes)
    for node_id, document in nodes.items():
        node_spec = _validated(NodeSpec, document, f"nodes.{node_id}.", what)
        new_nodes[node_id] = dataclasses.replace(spec.nodes[node_id], spec=node_spec)
    new_personality = _validated(Personality, personality, "", what)
    return dataclasses.replace(spec, personality=new_personality, nodes=new_nodes)
