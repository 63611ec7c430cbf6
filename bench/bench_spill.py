"""How far one node's habit spreads: replies to the *other* nodes' prompts that carry it.

    python bench/bench_spill.py [SPECS] [-o OUT] --phrase "can't" --phrase cannot

A node trained to decline ("I can't ...") may decline everything; its own eval
cases cannot show that. This asks every node's eval and ood prompts (greedy,
``eval.max_new_tokens`` tokens) of the base, of each node alone (base + w·τ from
the task-vector cache, as the build trained it) and of the built checkpoint in
``OUT/checkpoint`` when there is one, and counts the replies that contain any
``--phrase`` (case-insensitive), per node whose prompts were asked. Build first:
a node whose vector is not in the cache is an error (exit 2).

A table goes to stdout; ``--json FILE`` also writes one JSON line per model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from traitgraph.builder.cache import VectorCache
from traitgraph.compiler.base_model import ResolvedBase, load_model, resolve_base
from traitgraph.compiler.generate import generate
from traitgraph.evaluate.scores import vectors_applied
from traitgraph.graph import load_specs
from traitgraph.graph.hashing import node_hashes


def carries(reply: str, phrases: list[str]) -> bool:
    """Whether ``reply`` contains any of ``phrases``, case-insensitively.

    >>> carries("I can't help you with the garden.", ["can't", "cannot"])
    True
    >>> carries("What kind of garden is it?", ["can't"])
    False
    """
    text = reply.lower()
    return any(p.lower() in text for p in phrases)


def spill_row(name: str, replies: dict[str, list[str]], phrases: list[str]) -> dict:
    """Per asked node, ``[replies carrying a phrase, replies]``.

    >>> spill_row("base", {"a": ["I can't.", "Sure."]}, ["can't"])
    {'model': 'base', 'a': [1, 2]}
    """
    return {"model": name, **{n: [sum(carries(r, phrases) for r in rs), len(rs)] for n, rs in replies.items()}}


def ask(model, tok, chats: dict[str, list], max_new_tokens: int) -> dict[str, list[str]]:
    flat = [c for n in chats for c in chats[n]]
    out = iter(generate(model, tok, flat, max_new_tokens=max_new_tokens, batch_size=48))
    return {n: [next(out) for _ in chats[n]] for n in chats}


def cached_vectors(spec, base) -> dict[str, Path]:
    cache, hashes = VectorCache(), node_hashes(spec, base.fingerprint)
    missing = [n for n, h in hashes.items() if not cache.is_fresh(h)]
    if missing:
        print(f"error: no cached vector for {', '.join(missing)}; run `traitgraph build` first", file=sys.stderr)
        raise SystemExit(2)
    return {n: cache.verify(h) for n, h in hashes.items()}


def table(rows: list[dict], order: list[str]) -> str:
    head = "| model | " + " | ".join(order) + " | all |"
    lines = [head, "|---|" + "---:|" * (len(order) + 1)]
    for row in rows:
        hit, n = sum(row[k][0] for k in order), sum(row[k][1] for k in order)
        lines.append(f"| {row['model']} | " + " | ".join(f"{row[k][0]}/{row[k][1]}" for k in order) + f" | {hit}/{n} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("specs", nargs="?", default="specs")
    ap.add_argument("-o", "--out", default="out", help="build directory whose checkpoint is also asked")
    ap.add_argument("--phrase", action="append", required=True, help="a phrase that marks the habit (repeatable)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write one JSON line per model to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = load_specs(args.specs)
    order = sorted(spec.nodes)
    chats = {n: [c.chat() for c in (*spec.nodes[n].spec.eval, *spec.nodes[n].spec.ood)] for n in order}
    max_new = spec.personality.eval.max_new_tokens
    base = resolve_base(spec.personality.base, spec.specs_dir)
    vectors = cached_vectors(spec, base)
    model, tok = load_model(base)
    rows = [spill_row("base", ask(model, tok, chats, max_new), args.phrase)]
    for n in order:
        weight = spec.nodes[n].spec.weight
        with vectors_applied(model, [(vectors[n], weight)]):
            rows.append(spill_row(f"{n} alone (w {weight:g})", ask(model, tok, chats, max_new), args.phrase))
        print(f"{n} alone: done", file=sys.stderr, flush=True)
    checkpoint = Path(args.out) / "checkpoint"
    if (checkpoint / "config.json").is_file():
        built, btok = load_model(ResolvedBase(reference=str(checkpoint), path=checkpoint, fingerprint=""))
        rows.append(spill_row(f"the build ({checkpoint})", ask(built, btok, chats, max_new), args.phrase))
    phrases = " or ".join(repr(p) for p in args.phrase)
    print(f"Replies containing {phrases}; each column holds one node's eval and ood prompts:\n")
    print(table(rows, order))
    if args.json:
        with open(args.json, "a", encoding="utf-8") as fh:
            fh.writelines(json.dumps({"phrases": args.phrase, **r}) + "\n" for r in rows)


if __name__ == "__main__":
    main()
