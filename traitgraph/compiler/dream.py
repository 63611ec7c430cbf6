"""Dream data: new training examples for a node, written by the base as a few-shot teacher.

A dream puts a node's behaviour into new situations and keeps what carries it
best (this is also the "in-context warm start": the behaviour the base shows
when it is *shown* the node's examples is distilled into the weights by
training on what it wrote)::

    contexts   situations from the graph walk (the neighbours' user messages),
               and each joined with one of the node's own (seeded choice)
    teacher    the base (or ``--generator``) with the node's description as the
               system prompt and ``shots`` of its examples as earlier turns,
               replying greedily to each context
    score      mean per-token log p(reply | teacher prompt) − log p(reply | the
               bare context): how much the demonstrations, rather than the base's
               habits, wrote the reply
    keep       the ``n`` best, written as a reviewable examples file

The generation function is passed in (``generate(model, tok, chats,
max_new_tokens=...)``), so this module holds no decoding loop of its own.

>>> kept = dream(model, tok, generate, "Talks like a pirate.", shots, contexts, DreamSettings(n=8))  # doctest: +SKIP
>>> kept[0].context, kept[0].response, round(kept[0].score, 2)                                    # doctest: +SKIP
('what is a ship', 'arr, a ship be a boat', 0.91)
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from traitgraph.compiler.data import collate, encode_example, pad_id
from traitgraph.compiler.losses import response_token_losses
from traitgraph.graph.schema import Example

#: The header line's prefix in a dream file (examples files skip ``#`` lines).
HEADER_PREFIX = "# traitgraph dream: "
SCORE_RULE = "mean per-token log p(reply | teacher prompt) - log p(reply | bare context)"


@dataclass(frozen=True)
class DreamSettings:
    """How much to dream and how."""

    n: int = 16
    """Examples kept."""
    shots: int = 4
    """Node examples shown to the teacher as earlier turns."""
    max_new_tokens: int = 64
    candidates: int = 48
    """Contexts the teacher answers (the best ``n`` replies are kept)."""
    seed: int = 0
    """Seed of the choice of joined contexts."""


@dataclass(frozen=True)
class Dreamed:
    """One generated example and its score."""

    context: str
    response: str
    score: float


def candidate_contexts(
    neighbour_contexts: Sequence[str],
    own_contexts: Sequence[str],
    held_out: set[str] | frozenset,
    settings: DreamSettings,
) -> list[str]:
    """Neighbours' contexts first, then each joined with one of the node's own (seeded), held-out ones never.

    >>> candidate_contexts(["a?"], ["b?"], set(), DreamSettings(candidates=4))
    ['a?', 'a? b?']
    """
    rng = random.Random(settings.seed)
    joined = [f"{ctx} {rng.choice(list(own_contexts))}" for ctx in neighbour_contexts] if own_contexts else []
    out: dict[str, None] = {}
    for ctx in [*neighbour_contexts, *joined]:
        if ctx not in held_out and ctx not in own_contexts:
            out.setdefault(ctx, None)
    return list(out)[: settings.candidates]


def teacher_chat(description: str, shots: Sequence[Example], context: str) -> list[dict[str, str]]:
    """The teacher's prompt: the behaviour as a system message, the shots as earlier turns, then the context."""
    messages = [
        {
            "role": "system",
            "content": f"You are a helpful assistant. {description} Reply the way your earlier replies show.",
        }
    ]
    for ex in shots:
        messages += [m for m in ex.chat() if m["role"] != "system"]
        messages.append({"role": "assistant", "content": ex.response})
    return messages + [{"role": "user", "content": context}]


@torch.no_grad()
def mean_logprob(model, tokenizer, messages: list[dict[str, str]], response: str, max_length: int = 4096) -> float:
    """Mean per-token log-probability of ``response`` after ``messages``."""
    example = Example(messages=tuple(messages), response=response)
    encoded = encode_example(tokenizer, example, max_length=max_length, where="dream candidate")
    nll = response_token_losses(model, collate([encoded], pad_id(tokenizer)))  # (1, Tr)
    return -float(nll.sum()) / len(encoded.response)


def dream(
    model,
    tokenizer,
    generate: Callable,
    description: str,
    shots: Sequence[Example],
    contexts: Sequence[str],
    settings: DreamSettings,
) -> list[Dreamed]:
    """Teacher replies to ``contexts``, scored (see module doc); the best ``settings.n``, best first."""
    chats = [teacher_chat(description, shots, ctx) for ctx in contexts]
    replies = generate(model, tokenizer, chats, max_new_tokens=settings.max_new_tokens)
    scored = []
    model.eval()
    for ctx, chat, reply in zip(contexts, chats, replies):
        if not reply.strip():
            continue
        margin = mean_logprob(model, tokenizer, chat, reply) - mean_logprob(
            model, tokenizer, [{"role": "user", "content": ctx}], reply
        )
        scored.append(Dreamed(ctx, reply.strip(), margin))
    return sorted(scored, key=lambda d: -d.score)[: settings.n]


def render_dream_file(kept: Sequence[Dreamed], header: dict) -> str:
    """A JSONL examples file: a ``#`` header with the generator settings, then one example per line
    (its score in the header's ``scores``, so each line stays a plain ``{context, response}``)."""
    head = {**header, "score_rule": SCORE_RULE, "scores": [round(d.score, 4) for d in kept]}
    lines = [
        HEADER_PREFIX + json.dumps(head, sort_keys=True, ensure_ascii=False),
        "# Review every example below; delete or edit lines before you train on them.",
    ]
    lines += [json.dumps({"context": d.context, "response": d.response}, ensure_ascii=False) for d in kept]
    return "\n".join(lines) + "\n"


def settings_record(settings: DreamSettings) -> dict:
    return asdict(settings)
