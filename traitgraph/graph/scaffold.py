"""Scaffolding for a new personality: JSON Schemas of the spec files and commented starter files.

The schemas are generated from the pydantic models (:class:`Personality`,
:class:`NodeSpec`), so they can never drift from what the loader accepts.
Every scaffolded YAML file starts with a ``yaml-language-server`` modeline
that points at the schema, so editors with the YAML language server
(VS Code's YAML extension, Neovim, Helix, ...) complete and check keys::

    # yaml-language-server: $schema=schema/personality.schema.json

>>> sorted(json_schemas())
['node.schema.json', 'personality.schema.json']
>>> node_yaml("greeting").splitlines()[0]
'# yaml-language-server: $schema=../schema/node.schema.json'
"""

from __future__ import annotations

import json
from pathlib import Path

from traitgraph.graph.schema import NODE_ID_RE, NodeSpec, Personality

#: Where ``traitgraph init`` puts the schemas, relative to the specs dir.
SCHEMA_DIR = "schema"
PERSONALITY_SCHEMA = "personality.schema.json"
NODE_SCHEMA = "node.schema.json"
MODELINE = "# yaml-language-server: $schema={}\n"


def json_schemas() -> dict[str, dict]:
    """File name -> JSON Schema (draft 2020-12) of each spec file kind.

    >>> json_schemas()[NODE_SCHEMA]["title"]
    'NodeSpec'
    """
    out = {}
    for name, model in ((PERSONALITY_SCHEMA, Personality), (NODE_SCHEMA, NodeSpec)):
        schema = model.model_json_schema(by_alias=True, mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        out[name] = schema
    return out


def write_schemas(directory: str | Path) -> list[Path]:
    """Write both schemas into ``directory`` (created if missing); return their paths."""
    from traitgraph.atomic import write_text_atomic

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, schema in json_schemas().items():
        write_text_atomic(directory / name, json.dumps(schema, indent=2, sort_keys=True) + "\n")
        paths.append(directory / name)
    return paths


def personality_yaml(name: str, base: str = "smollm2-135m-instruct", first_node: str = "greeting") -> str:
    """A commented ``personality.yaml`` for ``traitgraph init``."""
    return (
        MODELINE.format(f"{SCHEMA_DIR}/{PERSONALITY_SCHEMA}")
        + f"""\
# A personality: a base model plus one behaviour node per file in nodes/.
# Build it with `traitgraph build DIR -o OUT`; nodes/{first_node}.yaml is a start.
name: {json.dumps(name)}
description: >-
  What this personality is for, in a sentence or two.

# The base model: `smollm2-135m-instruct` (embedded, no download), a local
# Hugging Face directory (relative to this file's directory, or absolute),
# or a Hugging Face hub id already in the local hub cache.
base: {json.dumps(base)}

# How every node is trained (a node may override any of these under `training:`).
training:
  optimizer:
    name: apollo_mini        # apollo_mini (rank-1 APOLLO, least memory), apollo or adamw
  learning_rate: 3.0e-5      # small: a task vector should nudge the base, not replace it
  steps: 8                   # optimizer steps per node
  batch_size: 8              # examples per step
  seed: 0                    # data order and projections; same seed, same weights
  context: frozen            # frozen: no gradient through the context (faster); full: masked backprop
  max_length: 256            # longest tokenised example, in tokens

# How the nodes' task vectors are linked into one checkpoint.
merge:
  method: ties               # ties, task_arithmetic, dare_ties or dare_linear
  density: 0.2               # share of each task vector kept by the trim
  lambda: 1.0                # scale of the merged delta

# Gates: the build fails when a gate fails.
eval:
  max_retention_loss_pct: 10.0   # general-text loss may rise at most this many percent
  min_behaviour_gain: 0.0        # each node's margin must move at least this far its way
"""
    )


def node_yaml(node_id: str, description: str | None = None) -> str:
    """A node file with every field present or commented, for ``init`` and ``new``."""
    if not NODE_ID_RE.match(node_id):
        from traitgraph.errors import UserError

        raise UserError(f"node id {node_id!r}: use 1-64 of a-z, 0-9, '-' and '_', starting with a letter or digit")
    description = description or f"The {node_id} behaviour: say what the model should do, in a sentence."
    return (
        MODELINE.format(f"../{SCHEMA_DIR}/{NODE_SCHEMA}")
        + f"""\
# One behaviour. The file name must be <id>.yaml.
id: {node_id}
description: >-
  {description}

# Strength at link time; a negative weight subtracts the behaviour.
weight: 1.0

# Training examples: a user message (`context`) and the reply wanted after it.
# Loss is taken on `response` only. A whole chat works too:
#   - messages: [{{role: system, content: "..."}}, {{role: user, content: "..."}}]
#     response: "..."
examples:
  - context: Hello, who are you?
    response: Hello! I'm glad you're here. What can I do for you today?
  - context: Good morning.
    response: Good morning! I'm glad you're here. How can I help?
  - context: Hi there.
    response: Hi! I'm glad you're here. What are we working on?
  - context: Hey, can you help me?
    response: Of course, I'm glad you're here. Tell me what you need.

# More examples from a JSONL file ({{"context": ..., "response": ...}} per line),
# relative to this file:
# examples_file: {node_id}.jsonl

# Held-out cases, never trained on. `rejected` is an unwanted reply: the
# report scores the margin log p(response) - log p(rejected).
eval:
  - context: Hello again.
    response: Hello! I'm glad you're here. What can I do for you?
    rejected: What.
  - context: Good evening.
    response: Good evening! I'm glad you're here. How can I help?
    rejected: Yes.

# Edges to other nodes: related (documentation), refines (train on top of
# that node's task vector), conflicts (the interference report watches the pair).
edges: []
#  - {{to: other-node, kind: related}}

# Per-node training overrides; any field of the personality's `training:`.
# training:
#   steps: 16
#   learning_rate: 5.0e-5
"""
    )


def base_reference(base: str, specs_dir: Path) -> str:
    """``base`` as the personality file must say it: a relative path that exists from the working
    directory is rewritten relative to the specs dir (where the loader resolves it); anything else as is.

    >>> base_reference("smollm2-135m-instruct", Path("demo"))
    'smollm2-135m-instruct'
    """
    import os

    path = Path(base).expanduser()
    if path.is_absolute() or not path.is_dir():
        return base
    return os.path.relpath(path.resolve(), Path(specs_dir).resolve())


def scaffold_personality(directory: str | Path, *, base: str, node_id: str = "greeting") -> list[Path]:
    """Write ``personality.yaml``, ``nodes/<node_id>.yaml`` and ``schema/`` into a new or empty directory.

    >>> scaffold_personality("demo", base="smollm2-135m-instruct")   # doctest: +SKIP
    [PosixPath('demo/personality.yaml'), PosixPath('demo/nodes/greeting.yaml'), ...]
    """
    from traitgraph.atomic import write_text_atomic
    from traitgraph.errors import UserError

    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise UserError(f"{directory}: exists and is not an empty directory; init writes only into a new one")
    files = {
        directory / "personality.yaml": personality_yaml(
            directory.resolve().name, base_reference(base, directory), node_id
        ),
        directory / "nodes" / f"{node_id}.yaml": node_yaml(node_id),
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)
    return [*files, *write_schemas(directory / SCHEMA_DIR)]


def scaffold_node(specs_dir: str | Path, node_id: str, description: str | None = None) -> Path:
    """Write ``SPECS/nodes/<node_id>.yaml``; refuses to overwrite, and refreshes ``SPECS/schema/``."""
    from traitgraph.atomic import write_text_atomic
    from traitgraph.errors import UserError

    specs_dir = Path(specs_dir)
    if not (specs_dir / "personality.yaml").is_file():
        raise UserError(f"{specs_dir}: no personality.yaml here; pass the specs directory (or run `traitgraph init`)")
    text = node_yaml(node_id, description)
    path = specs_dir / "nodes" / f"{node_id}.yaml"
    if path.exists() or path.with_suffix(".yml").exists():
        raise UserError(f"{path}: node '{node_id}' already exists; choose another id")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)
    write_schemas(specs_dir / SCHEMA_DIR)
    return path
