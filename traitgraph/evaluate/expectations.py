"""Behaviour tests: check a reply against an eval case's ``expect:``.

Every function here is pure: ``(reply text, expectation) -> failures``, each
failure one sentence a user understands. An empty list means the reply
passed. Text checks ignore case and treat any run of whitespace as one space,
so ``"can't  help"`` in a reply matches the phrase ``"Can't help"``.

>>> from traitgraph.graph.schema import Expectation
>>> check_reply("Congratulations, that's great!", Expectation(contains_any=("congratulations",)))
[]
>>> check_reply("Have you considered tea instead?", Expectation(avoids=("instead",)))
['says "instead" (should avoid it)']
"""

from __future__ import annotations

import re
from collections import Counter

from traitgraph.graph.schema import REPETITION_MAX_COUNT, REPETITION_NGRAM, Expectation

_WORD_RE = re.compile(r"[\w']+")


def normalise(text: str) -> str:
    """Case-folded text with every run of whitespace made one space and curly apostrophes straight.

    >>> normalise("  Can’t\\n  HELP ")
    "can't help"
    """
    return " ".join(_straight(text).casefold().split())


def _straight(text: str) -> str:
    return text.replace("\u2019", "'").replace("\u2018", "'")


def words(text: str) -> list[str]:
    """The words of a text, case-folded (letters, digits and apostrophes; punctuation dropped).

    >>> words("Hi, it's me!")
    ['hi', "it's", 'me']
    """
    return _WORD_RE.findall(_straight(text).casefold())


def repeated_ngrams(
    text: str, n: int = REPETITION_NGRAM, max_count: int = REPETITION_MAX_COUNT
) -> list[tuple[str, int]]:
    """The ``n``-word runs that occur more than ``max_count`` times, most frequent first.

    >>> repeated_ngrams("a rice cooker with a rice cooker that has a rice cooker")
    [('a rice cooker', 3)]
    """
    ws = words(text)
    counts = Counter(" ".join(ws[i : i + n]) for i in range(len(ws) - n + 1))
    return sorted(((g, c) for g, c in counts.items() if c > max_count), key=lambda gc: (-gc[1], gc[0]))


def _has(reply: str, phrase: str) -> bool:
    return normalise(phrase) in reply


def check_reply(reply: str, expect: Expectation) -> list[str]:
    """Every check of ``expect`` the reply fails, in the order the fields are declared.

    ``matches`` is searched in the reply as written (case-insensitively, curly
    apostrophes made straight); the phrase checks in its normalised form (see
    :func:`normalise`).

    >>> check_reply("Sure, it is Paris.", Expectation(contains_all=("paris", "france"), max_words=3))
    ['does not say "france"', 'has 4 words (at most 3)']
    """
    text = normalise(reply)
    failures: list[str] = []
    if expect.contains_any and not any(_has(text, p) for p in expect.contains_any):
        failures.append("says none of " + ", ".join(f'"{p}"' for p in expect.contains_any))
    failures += [f'does not say "{p}"' for p in expect.contains_all if not _has(text, p)]
    failures += [f'says "{p}" (should avoid it)' for p in expect.avoids if _has(text, p)]
    if expect.matches is not None and re.search(expect.matches, _straight(reply), re.IGNORECASE) is None:
        failures.append(f"does not match /{expect.matches}/")
    if expect.max_words is not None and len(words(reply)) > expect.max_words:
        failures.append(f"has {len(words(reply))} words (at most {expect.max_words})")
    if expect.no_repetition:
        repeats = repeated_ngrams(reply)
        if repeats:
            gram, count = repeats[0]
            failures.append(f'repeats "{gram}" {count} times (at most {REPETITION_MAX_COUNT})')
    return failures
