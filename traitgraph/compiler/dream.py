"""Dream data: new training examples for a node, written by the base as a few-shot teacher.

A dream puts a node's behaviour into new situations and keeps what carries it
best (this is also the "in-context warm start": the behaviour the base shows
when it is *shown* the node's examples is distilled into the weights by
training on what it wrote)::

    contexts   situations from the graph walk (the neighbours' user messages,
               alone and joined with one of the node's own, seeded), plus
               contexts the teacher writes: new requests on shipped everyday
               topics, and old ones said in other words; a written context is
               kept only when it is one sane line, new, and no eval/ood case's
    teacher    the base (or a generator) with the node's description as the
               system prompt and ``shots`` of its examples as earlier turns,
               replying greedily to each context
    score      ``teacher``: mean per-token log p(reply | teacher prompt) − log
               p(reply | the bare context), how much the demonstrations rather
               than the base's habits wrote the reply; ``vector``: log p(reply |
               context) under start + τ_node − under the start (the node's own
               trained vector; the caller applies it)
    keep       the ``n`` best, written as a reviewable examples file

The generation function is passed in (``generate(model, tok, chats,
max_new_tokens=...)``), so this module holds no decoding loop of its own; the
choices (topics, examples shown, contexts rephrased) are seeded and the
decoding greedy, so one setting gives one file.

>>> contexts = candidate_contexts(walk.neighbour_contexts, own, walk.held_out, settings)      # doctest: +SKIP
>>> answered = answer(model, tok, generate, "Talks like a pirate.", shots, contexts, 64)       # doctest: +SKIP
>>> best(answered, teacher_scores(model, tok, "Talks like a pirate.", shots, answered), 8)[0]  # doctest: +SKIP
Dreamed(context='what is a ship', response='arr, a ship be a boat', score=0.91, source='graph')
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from traitgraph.compiler.data import collate, encode_example, pad_id
from traitgraph.compiler.losses import response_token_losses
from traitgraph.graph.replay import shipped_text
from traitgraph.graph.schema import DreamSettings, Example

#: The shipped everyday topics new contexts are written about (``traitgraph/data/``).
TOPICS_FILE = "dream_topics.txt"
#: User messages shown to the teacher when it writes a new context.
CONTEXT_EXAMPLES = 4
#: New tokens the teacher may use for one written context.
CONTEXT_TOKENS = 48
#: A written context is kept when it has at least and at most this many characters.
MIN_CONTEXT_CHARS, MAX_CONTEXT_CHARS = 8, 300
#: How each score is computed (recorded in the dream file's header).
SCORE_RULES = {
    "teacher": "mean per-token log p(reply | teacher prompt) - log p(reply | bare context)",
    "vector": "mean per-token log p(reply | bare context) under start + node vector - under start",
}
#: Where a candidate context came from: the graph walk, a new topic, a rephrasing.
GRAPH, NEW, REPHRASED = "graph", "new", "rephrased"


@dataclass(frozen=True)
class Candidate:
    """A context to answer and where it came from (``graph``, ``new: TOPIC``, ``rephrased: ORIGINAL``)."""

    context: str
    source: str = GRAPH


@dataclass(frozen=True)
class Dreamed:
    """One generated example and its score."""

    context: str
    response: str
    score: float
    source: str = GRAPH


def normalised(text: str) -> str:
    """Text as compared for duplicates and held-out cases: case-folded, whitespace collapsed.

    >>> normalised("  Hello\\tThere ")
    'hello there'
    """
    return " ".join(text.casefold().split())


def candidate_contexts(
    neighbour_contexts: Sequence[str],
    own_contexts: Sequence[str],
    held_out: Iterable[str],
    settings: DreamSettings,
) -> list[str]:
    """Neighbours' contexts first, then each joined with one of the node's own (seeded), held-out ones never.

    >>> candidate_contexts(["a?"], ["b?"], set(), DreamSettings(candidates=4))
    ['a?', 'a? b?']
    """
    rng = random.Random(settings.seed)
    joined = [f"{ctx} {rng.choice(list(own_contexts))}" for ctx in neighbour_contexts] if own_contexts else []
    skip = {normalised(c) for c in [*held_out, *own_contexts]}
    out: dict[str, None] = {}
    for ctx in [*neighbour_contexts, *joined]:
        if normalised(ctx) not in skip:
            out.setdefault(ctx, None)
    return list(out)[: settings.candidates]


# --------------------------------------------------------------------------- written contexts


def context_request(topic: str, examples: Sequence[str]) -> list[dict[str, str]]:
    """The teacher's prompt for a new context on ``topic``, shown ``examples`` of the kind wanted."""
    shown = "\n".join(f"- {ex}" for ex in examples)
    return [
        {
            "role": "user",
            "content": f"Here are some messages people have sent to an assistant:\n{shown}\n"
            f"Write one new message like these, about {topic}. Reply with the message only, on one line.",
        }
    ]


def rephrase_request(context: str) -> list[dict[str, str]]:
    """The teacher's prompt for ``context`` in other words."""
    return [
        {
            "role": "user",
            "content": "Say this message again in other words, keeping what it asks. Reply with the new "
            f"message only, on one line.\nMessage: {context}",
        }
    ]


def topics() -> tuple[str, ...]:
    """The shipped everyday topics (see ``traitgraph/data/README.md``)."""
    return shipped_text(TOPICS_FILE)


def new_context_requests(
    topic_list: Sequence[str], examples: Sequence[str], settings: DreamSettings
) -> list[tuple[str, list[dict[str, str]]]]:
    """``(source, prompt)`` for ``settings.new_contexts`` new contexts: topics in a seeded order
    (again from the top when there are fewer topics), each shown a seeded few ``examples``.

    >>> [s for s, _ in new_context_requests(["boats", "tea"], ["hi"], DreamSettings(new_contexts=3, seed=1))]
    ['new: boats', 'new: tea', 'new: boats']
    """
    if not topic_list or not examples:
        return []
    rng = random.Random(settings.seed)
    order = rng.sample(list(topic_list), len(topic_list))
    out = []
    for i in range(settings.new_contexts):
        shown = rng.sample(list(examples), min(CONTEXT_EXAMPLES, len(examples)))
        topic = order[i % len(order)]
        out.append((f"{NEW}: {topic}", context_request(topic, shown)))
    return out


def rephrase_requests(contexts: Sequence[str], settings: DreamSettings) -> list[tuple[str, list[dict[str, str]]]]:
    """``(source, prompt)`` for ``settings.rephrase`` of ``contexts`` (a seeded choice, each at most once).

    >>> [s for s, _ in rephrase_requests(["a?", "b?", "c?"], DreamSettings(rephrase=2))]
    ['rephrased: b?', 'rephrased: c?']
    """
    rng = random.Random(settings.seed)
    chosen = rng.sample(list(contexts), min(settings.rephrase, len(contexts)))
    return [(f"{REPHRASED}: {ctx}", rephrase_request(ctx)) for ctx in chosen]


def clean_context(text: str) -> str | None:
    """A written context as it is used, or ``None`` when it is not one sane line: a list
    dash and surrounding quotes are taken off; empty, several lines, or shorter than
    :data:`MIN_CONTEXT_CHARS` or longer than :data:`MAX_CONTEXT_CHARS` characters is junk.

    >>> clean_context('  "How do I fix a tap?" '), clean_context("- Can you help me pack?")
    ('How do I fix a tap?', 'Can you help me pack?')
    >>> clean_context("Sure! Here it is:\\nHow do I fix a tap?"), clean_context("ok"), clean_context("")
    (None, None, None)
    """
    text = text.strip()
    if text.startswith("- "):
        text = text[2:].strip()
    for quote in ('"', "'", "“"):
        closing = "”" if quote == "“" else quote
        if len(text) > 1 and text.startswith(quote) and text.endswith(closing):
            text = text[1:-1].strip()
    if "\n" in text or "\r" in text or not MIN_CONTEXT_CHARS <= len(text) <= MAX_CONTEXT_CHARS:
        return None
    return text


def keep_contexts(written: Iterable[tuple[str, str]], taken: Iterable[str], held_out: Iterable[str]) -> list[Candidate]:
    """The written ``(source, text)`` worth answering: clean (:func:`clean_context`), not a
    duplicate of ``taken`` or of each other, never a held-out (eval or ood) context.

    >>> keep_contexts([("new: tea", "How do I brew tea?"), ("new: tea", "how do i  brew tea?"),
    ...                ("new: x", "Say hello to me."), ("new: y", "Held out one?")], ["say hello to me."], ["held out ONE?"])
    [Candidate(context='How do I brew tea?', source='new: tea')]
    """
    seen = {normalised(t) for t in taken}
    blocked = {normalised(h) for h in held_out}
    out = []
    for source, text in written:
        context = clean_context(text)
        if context is None or normalised(context) in seen or normalised(context) in blocked:
            continue
        seen.add(normalised(context))
        out.append(Candidate(context, source))
    return out


def write_contexts(
    model,
    tokenizer,
    generate: Callable,
    requests: Sequence[tuple[str, list[dict[str, str]]]],
    taken: Iterable[str],
    held_out: Iterable[str],
) -> list[Candidate]:
    """The teacher's greedy answers to ``requests``, kept by :func:`keep_contexts`."""
    if not requests:
        return []
    replies = generate(model, tokenizer, [chat for _, chat in requests], max_new_tokens=CONTEXT_TOKENS)
    return keep_contexts(zip([source for source, _ in requests], replies), taken, held_out)


# --------------------------------------------------------------------------- replies and scores


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


def answer(
    model,
    tokenizer,
    generate: Callable,
    description: str,
    shots: Sequence[Example],
    candidates: Sequence[Candidate],
    max_new_tokens: int,
) -> list[tuple[Candidate, str]]:
    """The teacher's greedy reply to each candidate, stripped; empty replies dropped."""
    chats = [teacher_chat(description, shots, c.context) for c in candidates]
    replies = generate(model, tokenizer, chats, max_new_tokens=max_new_tokens)
    return [(c, reply.strip()) for c, reply in zip(candidates, replies) if reply.strip()]


def reply_logprobs(model, tokenizer, answered: Sequence[tuple[Candidate, str]]) -> list[float]:
    """Mean per-token log p(reply | the bare context) of each answered candidate."""
    model.eval()
    return [mean_logprob(model, tokenizer, [{"role": "user", "content": c.context}], r) for c, r in answered]


def teacher_scores(
    model, tokenizer, description: str, shots: Sequence[Example], answered: Sequence[tuple[Candidate, str]]
) -> list[float]:
    """The ``teacher`` score of each answered candidate (see module doc)."""
    model.eval()
    prompted = [mean_logprob(model, tokenizer, teacher_chat(description, shots, c.context), r) for c, r in answered]
    return [p - b for p, b in zip(prompted, reply_logprobs(model, tokenizer, answered))]


def best(answered: Sequence[tuple[Candidate, str]], scores: Sequence[float], n: int) -> list[Dreamed]:
    """The ``n`` best-scored answers, best first (ties keep the candidates' order).

    >>> [d.response for d in best([(Candidate("a"), "x"), (Candidate("b"), "y")], [0.1, 0.5], 1)]
    ['y']
    """
    dreamed = [Dreamed(c.context, reply, score, c.source) for (c, reply), score in zip(answered, scores)]
    return sorted(dreamed, key=lambda d: -d.score)[:n]
