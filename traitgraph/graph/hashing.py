"""Content hashes: the build keys of traitgraph.

A node's **training hash** is the sha256 of a canonical JSON document holding
everything that can change its trained task vector, and nothing else:

===================  =====================================================
``trainer``          :data:`traitgraph.versions.TRAINER_VERSION`
``node.id``          the node id
``node.examples``    every training example after validation (inline, from
                     ``examples_file``, then from the ``training.dream``
                     file, parsed, in order)
``training``         the effective training settings (defaults merged with
                     the node's overrides), every field with its value;
                     ``device`` and ``vector_dtype`` resolved, a cpu device
                     left out (:func:`traitgraph.graph.device_policy.training_record`)
``base``             the base reference and the base weights' fingerprint
``parents``          the training hashes of the nodes it ``refines``
``replay``           when replay is on: the hash of the replay pool (the
                     shipped replay corpus or prompts, the examples of each
                     replayed node: the other nodes with a positive weight, or,
                     for ``contrast``, the prompts with the other nodes'
                     contexts, never their responses; for ``base_replies``,
                     the shipped prompts left out as the node's own contexts,
                     when there are any)
===================  =====================================================

A training field added after a release (``monitor``, and the others in
:data:`traitgraph.graph.schema.OPTIONAL_TRAINING_FIELDS`) enters the document only when it is set, so specs that do not
use it keep their hashes (and their cached vectors).

Not in it (so editing them never retrains): ``description``, ``weight``,
``eval`` cases, ``related``/``conflicts`` edges, ``training.dream``'s settings
(only its file's examples train), merge and eval settings,
YAML formatting, comments and key order. The hash is computed from the
validated pydantic models, never from file bytes.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from typing import Any

from traitgraph.graph.device_policy import base_parameters, training_record
from traitgraph.graph.load import Spec
from traitgraph.graph.replay import (
    BASE_REPLY_TOKENS,
    GENERAL_REPLAY_FILE,
    REPLAY_PROMPTS_FILE,
    base_replies_pool,
    contrast_pool,
    replay_nodes,
    shipped_text,
)
from traitgraph.graph.schema import TrainingSettings
from traitgraph.versions import TRAINER_VERSION


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def shipped_file_hash(name: str) -> str:
    """Hash of a data file shipped in ``traitgraph/data/``."""
    return sha256_hex(resources.files("traitgraph.data").joinpath(name).read_bytes())


def general_text_hash() -> str:
    """Hash of the shipped general text (the retention set)."""
    return shipped_file_hash("general_text.txt")


def settings_payload(settings: TrainingSettings) -> dict[str, Any]:
    """The effective settings as hashed: every field, except optional ones left unset.

    >>> settings_payload(TrainingSettings())["steps"]
    8
    """
    return settings.record()


def _replay_payload(spec: Spec, node_id: str, settings: TrainingSettings) -> dict[str, Any]:
    if settings.replay.source == "general":
        return {"replay_text": shipped_file_hash(GENERAL_REPLAY_FILE)}
    if settings.replay.source == "base_replies":  # the replies are the base's: its fingerprint is hashed already
        payload = {"base_replies": shipped_file_hash(REPLAY_PROMPTS_FILE), "reply_tokens": BASE_REPLY_TOKENS}
        replayed = set(base_replies_pool(spec, node_id).prompts)
        left_out = [p for p in shipped_text(REPLAY_PROMPTS_FILE) if p not in replayed]
        # Only a node that shares a context with the shipped prompts (and the nodes that refine it,
        # through ``parents``) hashes the ones left out; every other node keeps its hash and vector.
        return {**payload, "left_out": left_out} if left_out else payload
    if settings.replay.source == "contrast":  # the other nodes' contexts only: their responses are never replayed
        return {
            "contrast_prompts": sha256_hex(canonical_json(contrast_pool(spec, node_id).prompts)),
            "reply_tokens": BASE_REPLY_TOKENS,
        }
    return {
        "other_nodes": {
            other: sha256_hex(canonical_json(_examples_payload(spec, other))) for other in replay_nodes(spec, node_id)
        }
    }


def _examples_payload(spec: Spec, node_id: str) -> list[dict]:
    return [ex.model_dump(mode="json", exclude_none=True) for ex in spec.nodes[node_id].examples]


def _base_parameters(spec: Spec) -> int:
    """The base's parameter count for ``vector_dtype: auto``; 0 for a base that cannot be
    read here (hashing a spec never fails on its base: fingerprinting reports that)."""
    from traitgraph.errors import UserError

    try:
        return base_parameters(spec.personality.base, spec.specs_dir)
    except UserError:
        return 0


def training_payload(spec: Spec, node_id: str, base_fingerprint: str, parents: dict[str, str]) -> dict:
    """The document whose hash is the node's training hash (see module doc)."""
    settings = spec.training_settings(node_id)
    payload: dict[str, Any] = {
        "trainer": TRAINER_VERSION,
        "node": {"id": node_id, "examples": _examples_payload(spec, node_id)},
        "training": training_record(settings, _base_parameters(spec)),
        "base": {"reference": spec.personality.base, "fingerprint": base_fingerprint},
        "parents": {p: parents[p] for p in spec.dependencies(node_id)},
    }
    if settings.replay.fraction > 0:
        payload["replay"] = _replay_payload(spec, node_id, settings)
    return payload


def node_hashes(spec: Spec, base_fingerprint: str) -> dict[str, str]:
    """Training hash of every node, dependencies first.

    >>> node_hashes(load_specs("specs"), "sha256:ab12...")["listening"]   # doctest: +SKIP
    '3f9c...'
    """
    hashes: dict[str, str] = {}
    for node_id in spec.build_order():
        payload = training_payload(spec, node_id, base_fingerprint, hashes)
        hashes[node_id] = sha256_hex(canonical_json(payload))
    return hashes
