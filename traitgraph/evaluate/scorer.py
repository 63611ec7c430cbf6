"""Scores of one loaded model on the evaluation's data, through a :class:`ScoreMemo`.

>>> scorer = ModelScorer(model, tokenizer, ScoreMemo(cache / "eval", "base sha256:..."))  # doctest: +SKIP
>>> scorer.cases(node.eval)                                                             # doctest: +SKIP
[CaseScore(wanted=ResponseScore(nll=..., tokens=...), rejected=...), ...]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from traitgraph.evaluate.memo import ScoreMemo
from traitgraph.graph.schema import EvalCase

#: Greedy replies decoded together. On a 2-core CPU, 71 replies of 48 tokens to SmolLM2-135M took
#: 34 s in batches of 16 and 22 s in batches of 48, with the same text (bench/bench_eval_speed.py).
REPLY_BATCH = 48


def case_item(case) -> dict[str, Any]:
    """An eval case as the memo keys it."""
    return case.model_dump(mode="json")


def reply_item(chat, max_new_tokens: int) -> list:
    """A greedy reply as the memo keys it: the conversation and its token budget."""
    return [list(chat), max_new_tokens]


def _pack(score) -> list:
    """A :class:`~traitgraph.evaluate.scores.CaseScore` as JSON: [nll, tokens, rejected nll, rejected tokens]."""
    r = score.rejected
    return [score.wanted.nll, score.wanted.tokens, None if r is None else r.nll, None if r is None else r.tokens]


def _unpack(v: list):
    from traitgraph.evaluate.scores import CaseScore, ResponseScore

    return CaseScore(ResponseScore(v[0], v[1]), None if v[2] is None else ResponseScore(v[2], v[3]))


class ModelScorer:
    """Scores of one model on the evaluation's data, remembered when ``memo`` is given."""

    def __init__(self, model, tokenizer, memo: ScoreMemo | None = None, loader=None):
        """``loader()`` (optional) gives ``(model, tokenizer)`` the first time a score is not remembered."""
        self._model, self._tokenizer, self._loader = model, tokenizer, loader
        self.memo = memo if memo is not None else ScoreMemo(None, "")

    def loaded(self) -> tuple:
        """``(model, tokenizer)``, asking the loader for them the first time."""
        if self._model is None and self._loader is not None:
            self._model, self._tokenizer = self._loader()
        return self._model, self._tokenizer

    def cases(self, cases) -> list:
        from traitgraph.evaluate.scores import score_cases

        def compute(items):
            validated = [EvalCase.model_validate(i) for i in items]
            return [_pack(s) for s in score_cases(*self.loaded(), validated)]

        return [_unpack(v) for v in self.memo.lookup("case", [case_item(c) for c in cases], compute)]

    def text(self, lines: Sequence[str]):
        from traitgraph.evaluate.scores import ResponseScore, text_scores, total

        def compute(items):
            return [None if s is None else [s.nll, s.tokens] for s in text_scores(*self.loaded(), items)]

        values = self.memo.lookup("text", list(lines), compute)
        return total([None if v is None else ResponseScore(v[0], v[1]) for v in values])

    def replies(self, chats: Sequence[list[dict[str, str]]], max_new_tokens: int) -> list[str]:
        from traitgraph.evaluate.scores import generate

        def compute(items):
            chats = [i[0] for i in items]
            return generate(*self.loaded(), chats, max_new_tokens=max_new_tokens, batch_size=REPLY_BATCH)

        return self.memo.lookup("reply", [reply_item(c, max_new_tokens) for c in chats], compute)
