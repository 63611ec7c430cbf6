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
import typing
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


def _put(document: dict[str, Any], keys: list[str], value: Any, path: str, model: type[BaseModel] | None) -> None:
    """Set ``document[k0][k1]...`` to ``value``; every key must be a field of ``model`` (the
    document's pydantic model, followed into nested models; a mapping field is left to validation)."""
    where = document
    for i, key in enumerate(keys):
        fields = _fields_by_name(model) if model is not None else None
        if not isinstance(where, dict) or (fields is not None and key not in fields):
            known = ", ".join(sorted(fields)) if fields is not None else "none (not a mapping)"
            raise UserError(f"--set {path}: unknown field '{'.'.join(keys[: i + 1])}'; known here: {known}")
        if i == len(keys) - 1:
            where[key] = value
        else:
            if where.get(key) is None:  # a section the file left out (a node's `training:`, its `replay:`)
                where[key] = {}
            where, model = where[key], _nested_model(fields[key]) if fields is not None else None


def _fields_by_name(model: type[BaseModel]) -> dict[str, Any]:
    """A model's fields by the name a spec file uses (the alias where there is one)."""
    return {info.alias or name: info for name, info in model.model_fields.items()}


def _nested_model(info: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (``X`` or ``X | None``), or None for any other field."""
    for candidate in (info.annotation, *typing.get_args(info.annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _validated(model: type[BaseModel], document: dict[str, Any], prefix: str, what: str) -> Any:
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(f"{prefix}{field_path(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise UserError(f"--set {what}: {problems}") from None


def _node_document(spec: Spec, node_id: str, path: str) -> dict[str, Any]:
    if node_id not in spec.nodes:
        raise UserError(f"--set {path}: no node '{node_id}'; nodes: {', '.join(sorted(spec.nodes))}")
    node = spec.nodes[node_id].spec
    document = node.model_dump(mode="json", by_alias=True)
    if node.training is not None:  # only what the file wrote: an unwritten block inherits the personality's
        document["training"] = node.training.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return document


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
            _put(document, keys[2:], value, path, NodeSpec)
        else:
            _put(personality, keys, value, path, Personality)
    what = ", ".join(f"{p}={v}" for p, v in point.items())
    new_nodes = dict(spec.nodes)
    for node_id, document in nodes.items():
        node_spec = _validated(NodeSpec, document, f"nodes.{node_id}.", what)
        new_nodes[node_id] = dataclasses.replace(spec.nodes[node_id], spec=node_spec)
    new_personality = _validated(Personality, personality, "", what)
    return dataclasses.replace(spec, personality=new_personality, nodes=new_nodes)
