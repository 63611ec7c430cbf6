"""The joint reference: one task vector trained on every positive node's examples together.

Merging papers compare a merge with the multi-task model trained on all tasks
at once. Here that model is base + τ_joint, where τ_joint is trained like a
node (same trainer, optimizer, learning rate and other settings: the
personality's ``training:`` defaults) on the union of the examples of every
node with a positive weight, for the *sum* of those nodes' steps (the same
training budget the merge's vectors took together). Negative-weight nodes
are left out: their examples teach a behaviour the personality should *not*
have, and a joint fine-tune cannot subtract. Their ratio to the joint model
is reported like any other (usually undefined: the joint model does not move
them as intended).

τ_joint is cached like a node, by the hash of its inputs (examples, settings,
base), so it trains once until one of those changes. Switched on by
``eval.joint_reference: true``. Per node, with directed gains g::

    kept_of_joint = g_linked / g_joint
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from traitgraph.errors import BuildError
from traitgraph.graph.load import LoadedNode, Spec
from traitgraph.graph.schema import NodeSpec

#: The joint reference's id in the cache and its hash payload.
JOINT_ID = "joint-reference"


def joint_spec(spec: Spec) -> Spec | None:
    """``spec`` plus the joint node (every positive node's examples; the summed steps), or
    None when no positive node has examples."""
    if JOINT_ID in spec.nodes:
        raise BuildError(f"a node is named '{JOINT_ID}', the joint reference's reserved id; rename it")
    positive = [n for n in spec.build_order() if spec.nodes[n].spec.weight > 0 and spec.nodes[n].examples]
    if not positive:
        return None
    steps = sum(spec.training_settings(n).steps for n in positive)
    node = NodeSpec.model_validate(
        {
            "id": JOINT_ID,
            "description": "joint reference: " + ", ".join(positive),
            "training": {"steps": steps},
        }
    )
    examples = tuple(ex for n in positive for ex in spec.nodes[n].examples)
    loaded = LoadedNode(spec=node, file=spec.personality_file, examples=examples)
    return dataclasses.replace(spec, nodes={**spec.nodes, JOINT_ID: loaded})


def joint_vector(spec: Spec, cache, base) -> tuple[Path, str] | None:
    """The joint reference's cached τ (trained on a miss) and its sha256; None without positive examples."""
    from traitgraph.compiler.train import train_node
    from traitgraph.graph.hashing import canonical_json, sha256_hex, training_payload
    from traitgraph.graph.target import resolve_target

    joint = joint_spec(spec)
    if joint is None:
        return None
    payload = training_payload(joint, JOINT_ID, base.fingerprint, {})
    h = sha256_hex(canonical_json(payload))
    if not cache.is_fresh(h):
        target = resolve_target(joint, JOINT_ID, base.fingerprint, {JOINT_ID: h})
        train_node(target, base, cache.vector_path(h), progress=False)
        cache.commit(h, JOINT_ID, payload)
    record = cache.record(h)
    return cache.verify(h), record.sha256


def score_joint(
    model, tokenizer, spec: Spec, order: list[str], vector: tuple[Path, str], memo_dir: Path, fingerprint: str
) -> dict[str, list]:
    """Every node's eval-case scores under base + τ_joint (remembered under τ_joint's hash)."""
    from traitgraph.evaluate.memo import ScoreMemo
    from traitgraph.evaluate.scorer import ModelScorer
    from traitgraph.evaluate.scorer import case_item as _case_item
    from traitgraph.evaluate.scores import vectors_applied

    path, sha = vector
    memo = ScoreMemo(memo_dir, f"joint {fingerprint} {sha}")
    every = [c for n in order for c in spec.nodes[n].spec.eval]
    if memo.has_all("case", [_case_item(c) for c in every]):
        scorer = ModelScorer(None, None, memo)
        return {n: scorer.cases(spec.nodes[n].spec.eval) for n in order}
    with vectors_applied(model, [(path, 1.0)]):
        scorer = ModelScorer(model, tokenizer, memo)
        out = {n: scorer.cases(spec.nodes[n].spec.eval) for n in order}
    memo.save()
    return out


def joint_reference_cases(plan, model, tokenizer, order: list[str], memo_dir: Path, base, notes: list[str]):
    """The joint reference's case scores per node (training it on a cache miss); {} with a note when
    no positive node has examples."""
    vector = joint_vector(plan.spec, plan.cache, base)
    if vector is None:
        notes.append("no joint reference: no node with a positive weight has training examples")
        return {}
    return score_joint(model, tokenizer, plan.spec, order, vector, memo_dir, base.fingerprint)


def with_joint(node, joint_cases):
    """``node`` (a NodeResult) with its gain under the joint reference and ``kept_of_joint``."""
    from traitgraph.evaluate.honest import ratio
    from traitgraph.evaluate.results import _measure
    from traitgraph.evaluate.results import model_score as _model_score

    if joint_cases is None or node.measure == "none" or node.base is None:
        return node
    gain = _measure(_model_score(joint_cases), node.measure) - _measure(node.base, node.measure)
    linked = None if node.gain_linked is None else node.direction * node.gain_linked
    return node.model_copy(update={"gain_joint": gain, "kept_of_joint": ratio(linked, node.direction * gain)})
