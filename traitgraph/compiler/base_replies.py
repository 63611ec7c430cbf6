"""The base model's own answers to the replay prompts (``replay.source: base_replies``).

A node trained only on its own examples learns its habit everywhere: trained
to decline improper requests, SmolLM2 also declined "What is 7 + 5?". Mixing
ordinary requests answered *as the base answers them* into every batch teaches
the contrast: the habit where the examples call for it, the base's behaviour
elsewhere. The replies are generated greedily from the base (before any parent
vector is applied) when a node first trains, and cached under
``$TRAITGRAPH_CACHE/replies/`` by the base fingerprint, the prompts, the token
budget and the torch thread count (greedy decoding can differ in the last bits
between thread counts, and so would the vectors).

>>> trim_to_sentence("Paris is the capital. It has many muse")
'Paris is the capital.'
>>> trim_to_sentence("Yes.")
'Yes.'
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

from traitgraph.atomic import write_text_atomic
from traitgraph.compiler.base_model import default_cache_dir
from traitgraph.compiler.generate import generate

#: Bump when the way replies are made changes (prompting, trimming).
REPLY_RULE = "1"

_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def trim_to_sentence(reply: str) -> str:
    """A reply cut off by the token budget, trimmed back to its last full sentence
    (kept whole when it has none, or when it already ends a sentence)."""
    reply = reply.strip()
    if not reply or reply[-1] in ".!?\"')":
        return reply
    ends = [m.end() for m in _SENTENCE_END.finditer(reply)]
    return reply[: ends[-1]] if ends else reply


def _key(fingerprint: str, prompts: Sequence[str], max_new_tokens: int, threads: int) -> str:
    doc = json.dumps([REPLY_RULE, fingerprint, list(prompts), max_new_tokens, threads], ensure_ascii=False)
    return hashlib.sha256(doc.encode("utf-8")).hexdigest()


def _cached(path: Path, n: int) -> list[str] | None:
    try:
        replies = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(replies, list) and len(replies) == n and all(isinstance(r, str) for r in replies)
    return replies if ok else None


def base_replies(
    model, tokenizer, prompts: Sequence[str], *, fingerprint: str, max_new_tokens: int, cache_dir: Path | None = None
) -> list[str]:
    """The base's greedy reply to each prompt (one user turn, chat template applied), trimmed
    to full sentences; cached (see module doc). ``model`` must be the base itself."""
    import torch

    path = (
        (cache_dir or default_cache_dir())
        / "replies"
        / (_key(fingerprint, prompts, max_new_tokens, torch.get_num_threads()) + ".json")
    )
    replies = _cached(path, len(prompts))
    if replies is None:
        chats = [[{"role": "user", "content": p}] for p in prompts]
        replies = [trim_to_sentence(r) for r in generate(model, tokenizer, chats, max_new_tokens=max_new_tokens)]
        write_text_atomic(path, json.dumps(replies, ensure_ascii=False, indent=0) + "\n")
    return replies
