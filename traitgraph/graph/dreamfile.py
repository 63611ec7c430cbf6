"""The dream file: a node's generated examples, and what ``training.dream`` asks of it.

``traitgraph dream`` writes one JSON Lines examples file per node (see
docs/dream.md)::

    # traitgraph dream: {"node": ..., "generator": ..., "settings": {...}, "scores": [...], ...}
    # Review every example below; delete or edit lines before you train on them.
    {"context": "...", "response": "..."}
    ...

Its first line, the header, records how it was written; every ``#`` line is a
comment to the loader, so the file is an ordinary examples file. With
``training.dream`` set, the loader (:mod:`traitgraph.graph.load`) reads it
after the node's own examples, with the confinement rule of ``examples_file``;
its examples then enter the training hash like any others, and the settings
never do (only the file's content is trained on). This module is the format
and the comparisons; it reads and writes no file.

>>> dream_rel(DreamSettings(), "voice")
'data/voice.dream.jsonl'
>>> read_header('# traitgraph dream: {"settings": {"n": 3}}\\n{}')
{'settings': {'n': 3}}
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from traitgraph.graph.schema import DreamSettings

#: The header line's prefix in a dream file (examples files skip ``#`` lines).
HEADER_PREFIX = "# traitgraph dream: "
#: The line after the header.
REVIEW_LINE = "# Review every example below; delete or edit lines before you train on them."
#: The spec field a dream file's problems are reported against.
DREAM_FIELD = "training.dream.file"


def dream_rel(settings: DreamSettings, node_id: str) -> str:
    """The node's dream file, relative to the specs dir (``{node}`` replaced by its id)."""
    return settings.file.replace("{node}", node_id)


def dream_spec_file(node, personality_file: Path) -> Path:
    """The YAML file that sets a loaded node's ``training.dream``: its own file when it
    overrides the block, else ``personality.yaml``."""
    overrides = node.spec.training
    return node.file if overrides is not None and overrides.dream is not None else personality_file


def read_header(text: str) -> dict | None:
    """The header of a dream file's text; ``None`` when its first line is not one (a file
    traitgraph did not write, or whose header was deleted)."""
    first = text.split("\n", 1)[0]
    if not first.startswith(HEADER_PREFIX):
        return None
    try:
        header = json.loads(first[len(HEADER_PREFIX) :])
    except ValueError:
        return None
    return header if isinstance(header, dict) else None


def settings_differences(header: dict | None, settings: DreamSettings) -> list[str]:
    """What differs between the settings a file was written with and ``settings``, as ``key: file X, spec Y``.

    >>> settings_differences({"settings": {**DreamSettings().record(), "n": 3}}, DreamSettings())
    ['n: file 3, spec 16']
    >>> settings_differences(None, DreamSettings())
    ['no traitgraph dream header']
    """
    if header is None or not isinstance(header.get("settings"), dict):
        return ["no traitgraph dream header"]
    recorded, wanted = header["settings"], settings.record()
    return [
        f"{key}: file {json.dumps(recorded.get(key))}, spec {json.dumps(wanted[key])}"
        for key in sorted(wanted)
        if recorded.get(key, "absent") != wanted[key]
    ]


def render_dream_file(examples: Sequence[tuple[str, str]], header: dict) -> str:
    """The file's text: the header (as one JSON line), the review line, one ``{context, response}`` per line.

    >>> print(render_dream_file([("hi", "arr")], {"node": "pirate"}), end="")
    # traitgraph dream: {"node": "pirate"}
    # Review every example below; delete or edit lines before you train on them.
    {"context": "hi", "response": "arr"}
    """
    lines = [HEADER_PREFIX + json.dumps(header, sort_keys=True, ensure_ascii=False), REVIEW_LINE]
    lines += [json.dumps({"context": c, "response": r}, ensure_ascii=False) for c, r in examples]
    return "\n".join(lines) + "\n"


def stale_dream_files(spec) -> list[str]:
    """One warning per dream file whose header's settings differ from its node's
    ``training.dream`` (the file still trains: it is the input; the settings only
    say how to write it again)."""
    warnings = []
    for node_id in sorted(spec.nodes):
        node, settings = spec.nodes[node_id], spec.training_settings(node_id).dream
        if settings is None or node.dream_file is None:
            continue
        diff = settings_differences(node.dream_header, settings)
        if diff:
            warnings.append(
                f"{node.dream_file}: node '{node_id}', field '{DREAM_FIELD}': written with other settings than "
                f"{dream_spec_file(node, spec.personality_file).name} gives ({'; '.join(diff)}); it trains as it is, "
                f"or write it again with `traitgraph dream {spec.specs_dir} {node_id} --force`"
            )
    return warnings
