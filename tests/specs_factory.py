"""Write a small, valid specs directory from Python dicts, for tests to break.

The default personality has four nodes::

    alpha  <-refines-  beta  <-refines-  gamma         (a dependency chain)
    delta  -related-> alpha,  delta -conflicts-> gamma (documentation edges)

and its ``base`` is a local directory holding a ``config.json`` (a local
Hugging Face directory reference), so nothing is downloaded.

>>> specs = write_specs(tmp_path)                                   # doctest: +SKIP
>>> nodes = default_nodes(); nodes["beta"]["weight"] = "high"       # doctest: +SKIP
>>> write_specs(tmp_path, nodes=nodes)                              # doctest: +SKIP
"""

from __future__ import annotations

import copy
import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import yaml

SPECS = "specs"
BASE = "base-model"


def example(i: int, topic: str = "topic") -> dict[str, str]:
    """A training example whose context is unique for ``(topic, i)``."""
    return {"context": f"Question {i} about {topic}?", "response": f"Answer {i} about {topic}."}


def eval_case(i: int, topic: str = "topic") -> dict[str, str]:
    """A held-out eval case (its context never appears among the examples)."""
    return {
        "context": f"Held-out question {i} about {topic}?",
        "response": f"Good answer {i} about {topic}.",
        "rejected": f"Bad answer {i} about {topic}.",
    }


def node(
    node_id: str,
    *,
    n_examples: int = 2,
    n_eval: int = 1,
    edges: list[tuple[str, str]] = (),
    **fields: Any,
) -> dict[str, Any]:
    """A valid node dict; ``edges`` as ``(kind, to)`` pairs; ``fields`` override keys."""
    data: dict[str, Any] = {
        "id": node_id,
        "description": f"The {node_id} behaviour.",
        "weight": 1.0,
        "examples": [example(i, node_id) for i in range(n_examples)],
        "eval": [eval_case(i, node_id) for i in range(n_eval)],
    }
    if edges:
        data["edges"] = [{"to": to, "kind": kind} for kind, to in edges]
    data.update(fields)
    return data


def default_nodes() -> dict[str, dict[str, Any]]:
    """A fresh copy of the four default nodes, keyed by id (safe to mutate)."""
    return {
        "alpha": node("alpha"),
        "beta": node("beta", edges=[("refines", "alpha")]),
        "gamma": node("gamma", edges=[("refines", "beta")]),
        "delta": node("delta", weight=-0.5, edges=[("related", "alpha"), ("conflicts", "gamma")]),
    }


def default_personality(base: str | Path) -> dict[str, Any]:
    """A valid personality dict with explicit training, merge and eval settings."""
    return {
        "name": "test-personality",
        "description": "A personality written by the tests.",
        "base": str(base),
        "training": {
            "optimizer": {"name": "apollo_mini"},
            "learning_rate": 1.0e-4,
            "steps": 24,
            "batch_size": 8,
            "seed": 0,
        },
        "merge": {"method": "ties", "density": 0.2, "lambda": 1.0},
        "eval": {"max_retention_loss_pct": 10.0},
    }


def write_base(root: Path) -> Path:
    """A tiny local 'model directory': a ``config.json`` and an empty (tensor-less)
    safetensors file. Enough for a base fingerprint; not a loadable model."""
    base = Path(root) / BASE
    base.mkdir(parents=True, exist_ok=True)
    (base / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}), encoding="utf-8")
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    header += b" " * (-len(header) % 8)
    (base / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return base


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def write_specs(
    root: Path,
    *,
    personality: dict[str, Any] | None = None,
    nodes: dict[str, dict[str, Any]] | None = None,
    files: dict[str, str] | None = None,
) -> Path:
    """Write ``root/specs`` (and ``root/base-model``); return the specs dir.

    ``nodes`` maps a file name (``"beta"`` means ``nodes/beta.yaml``; a name
    with a suffix is used as is) to a node dict. ``files`` maps paths relative
    to the specs dir to raw text, written last (to break YAML by hand).
    """
    root = Path(root)
    base = write_base(root)
    specs = root / SPECS
    (specs / "nodes").mkdir(parents=True, exist_ok=True)
    p = default_personality(base) if personality is None else personality
    (specs / "personality.yaml").write_text(dump_yaml(p), encoding="utf-8")
    for name, data in (default_nodes() if nodes is None else nodes).items():
        filename = name if Path(name).suffix else f"{name}.yaml"
        (specs / "nodes" / filename).write_text(dump_yaml(data), encoding="utf-8")
    for rel, text in (files or {}).items():
        target = specs / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return specs


def edit_yaml(path: Path, edit) -> None:
    """Load ``path``, let ``edit(data)`` change it in place (its return value is ignored), write it back."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    edit(data)
    Path(path).write_text(dump_yaml(data), encoding="utf-8")


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` with the sha256 of its bytes (to prove nothing was written)."""
    directory = Path(directory)
    if not directory.exists():
        return {}
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
        for p in sorted(directory.rglob("*"))
    }


def mutated(**changes: Any) -> dict[str, dict[str, Any]]:
    """Default nodes with ``changes[node_id]`` applied: a dict of fields, or a callable."""
    nodes = default_nodes()
    for node_id, change in changes.items():
        if callable(change):
            change(nodes[node_id])
        else:
            nodes[node_id].update(copy.deepcopy(change))
    return nodes
