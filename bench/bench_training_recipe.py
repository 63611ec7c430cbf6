"""Training recipes side by side, judged the way a user judges a node: alone, on new prompts.

    python bench/bench_training_recipe.py [SPECS] --node boundaries \
        --recipe own='{"replay": {"fraction": 0}, "trainable": ["*"]}' \
        --recipe replay='{"trainable": ["*"]}' \
        --recipe replay+layers='{}' \
        --recipe stronger='{"learning_rate": 1e-4, "steps": 16}'

Each recipe is a JSON patch over the node's effective training settings (the
personality's ``training:`` merged with the node's). The node is trained under
each recipe (vectors are kept in the task-vector cache by their training hash,
so a rerun trains nothing) and scored *alone*, as base + w·τ, on:

* its ``eval`` and ``ood`` cases: mean directed margin gain over the base (nats);
* its behaviour tests (``expect:`` on eval and ood cases): pass rate, base -> alone;
* the 30 shipped general prompts: how many the base answers and this model no longer does;
* the shipped general text: loss change in percent.

A table goes to stdout and one JSON line per recipe to ``--json`` (default
``bench/results/training_recipe.jsonl``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import torch

from traitgraph.builder.cache import VectorCache
from traitgraph.compiler.base_model import load_model, resolve_base
from traitgraph.compiler.data import load_general_text
from traitgraph.compiler.train import train_node
from traitgraph.evaluate.expectations import check_reply
from traitgraph.evaluate.inputs import general_prompts
from traitgraph.evaluate.scores import contains_answer, generate, score_cases, text_scores, total, vectors_applied
from traitgraph.graph import load_specs
from traitgraph.graph.hashing import node_hashes, training_payload
from traitgraph.graph.schema import TrainingSettings
from traitgraph.graph.target import resolve_target

PROMPT_TOKENS = 24


def merged(base: dict, patch: dict) -> dict:
    """``base`` with ``patch`` applied recursively (a mapping merges, anything else replaces).

    >>> merged({"replay": {"fraction": 0.5, "source": "general"}}, {"replay": {"fraction": 0}})
    {'replay': {'fraction': 0, 'source': 'general'}}
    """
    out = dict(base)
    for key, value in patch.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def recipe_spec(spec, node_id: str, patch: dict):
    """The specs with ``node_id`` trained under its effective settings patched by ``patch``."""
    settings = TrainingSettings.model_validate(merged(spec.training_settings(node_id).model_dump(mode="json"), patch))
    nodes = dict(spec.nodes)
    node = nodes[node_id]
    nodes[node_id] = dataclasses.replace(node, spec=node.spec.model_copy(update={"training": None}))
    personality = spec.personality.model_copy(update={"training": settings})
    return dataclasses.replace(spec, personality=personality, nodes=nodes)


def trained_vector(spec, node_id: str, base, cache: VectorCache) -> tuple[Path, float]:
    """The node's vector under ``spec`` (trained into the cache on a miss) and the training seconds."""
    hashes = node_hashes(spec, base.fingerprint)
    h = hashes[node_id]
    if cache.is_fresh(h):
        return cache.verify(h), 0.0
    t0 = time.perf_counter()
    train_node(resolve_target(spec, node_id, base.fingerprint, hashes), base, cache.vector_path(h), progress=True)
    cache.commit(h, node_id, training_payload(spec, node_id, base.fingerprint, hashes))
    return cache.verify(h), time.perf_counter() - t0


def measure(model, tok, node, lines, prompts, max_new_tokens: int) -> dict:
    """Margins on eval and ood cases, behaviour tests passed, general prompts answered, general-text loss."""
    cases = [*node.spec.eval, *node.spec.ood]
    margins = [s.margin for s in score_cases(model, tok, cases)]
    k = len(node.spec.eval)
    with_expect = [c for c in cases if c.expect is not None]
    replies = generate(model, tok, [c.chat() for c in with_expect], max_new_tokens=max_new_tokens)
    answers = generate(
        model, tok, [[{"role": "user", "content": p["prompt"]}] for p in prompts], max_new_tokens=PROMPT_TOKENS
    )
    return {
        "eval": sum(margins[:k]) / k,
        "ood": sum(margins[k:]) / max(1, len(margins) - k),
        "tests": [not check_reply(r, c.expect) for r, c in zip(replies, with_expect)],
        "ood_tests": [not check_reply(r, c.expect) for r, c in zip(replies, with_expect) if c in node.spec.ood],
        "answered": [contains_answer(a, p["answer"]) for a, p in zip(answers, prompts)],
        "text": total(text_scores(model, tok, lines)).loss,
    }


def compare(name: str, patch: dict, weight: float, before: dict, after: dict, seconds: float) -> dict:
    sign = math.copysign(1.0, weight)
    return {
        "recipe": name,
        "patch": patch,
        "gain_eval": sign * (after["eval"] - before["eval"]),
        "gain_ood": sign * (after["ood"] - before["ood"]),
        "tests_base": f"{sum(before['tests'])}/{len(before['tests'])}",
        "tests_alone": f"{sum(after['tests'])}/{len(after['tests'])}",
        "ood_tests_alone": f"{sum(after['ood_tests'])}/{len(after['ood_tests'])}",
        "prompts_lost": sum(b and not a for b, a in zip(before["answered"], after["answered"])),
        "text_pct": 100 * (after["text"] / before["text"] - 1),
        "train_s": round(seconds, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("specs", nargs="?", default="specs")
    ap.add_argument("--node", required=True)
    ap.add_argument("--recipe", action="append", required=True, metavar="NAME=JSON")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="bench/results/training_recipe.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = load_specs(args.specs)
    node = spec.nodes[args.node]
    base = resolve_base(spec.personality.base, spec.specs_dir)
    model, tok = load_model(base)
    lines, prompts = load_general_text(None), general_prompts()
    max_new = spec.personality.eval.max_new_tokens
    before = measure(model, tok, node, lines, prompts, max_new)
    rows, cache = [], VectorCache()
    for item in args.recipe:
        name, _, text = item.partition("=")
        patch = json.loads(text or "{}")
        torch.set_num_threads(1)  # training is bit-identical at one thread, as in a build
        path, seconds = trained_vector(recipe_spec(spec, args.node, patch), args.node, base, cache)
        torch.set_num_threads(args.threads)
        with vectors_applied(model, [(path, node.spec.weight)]):
            after = measure(model, tok, node, lines, prompts, max_new)
        rows.append(compare(name, patch, node.spec.weight, before, after, seconds))
        print(json.dumps(rows[-1]), flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    with open(args.json, "a", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"node": args.node, **r}) + "\n" for r in rows)
    keys = [
        "recipe",
        "gain_eval",
        "gain_ood",
        "tests_base",
        "tests_alone",
        "ood_tests_alone",
        "prompts_lost",
        "text_pct",
        "train_s",
    ]
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:+.2f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
