"""Scores of one model: response log-probabilities, general-text loss, greedy answers.

Every function here is a pure measurement of a ``(model, tokenizer)`` pair on
some data; which model is scored (the base, base + w·τ, the linked
checkpoint) is decided by :mod:`traitgraph.evaluate.run`. Tokenising goes
through the compiler's own chat template code
(:func:`traitgraph.compiler.data.encode_example`), so a response is scored on
exactly the tokens training put its loss on, end-of-turn token included.

>>> scores = score_cases(model, tok, spec.nodes["voice"].spec.eval)   # doctest: +SKIP
>>> scores[0].margin  # log p(response) - log p(rejected), summed over tokens  # doctest: +SKIP
3.71
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from traitgraph.compiler.data import (
    EncodedExample,
    collate,
    encode_example,
    encode_text,
    pad_id,
)
from traitgraph.compiler.generate import generate, prompt_ids, stop_ids  # noqa: F401  (re-exported)
from traitgraph.compiler.losses import shared_context_token_losses
from traitgraph.errors import BuildError
from traitgraph.graph.schema import EvalCase, Example

#: Longest eval case or general-text line scored (tokens, chat template included).
MAX_EVAL_TOKENS = 2048


@dataclass(frozen=True)
class ResponseScore:
    """The summed negative log-likelihood of one response and its token count."""

    nll: float
    tokens: int

    @property
    def logprob(self) -> float:
        """log p(response | context), summed over the response tokens."""
        return -self.nll

    @property
    def loss(self) -> float:
        """Mean per-token loss of the response."""
        return self.nll / max(self.tokens, 1)


@dataclass(frozen=True)
class CaseScore:
    """One eval case: its wanted response and, when given, its rejected one."""

    wanted: ResponseScore
    rejected: ResponseScore | None = None

    @property
    def margin(self) -> float | None:
        """log p(wanted) − log p(rejected), or ``None`` without a rejected reply."""
        return None if self.rejected is None else self.wanted.logprob - self.rejected.logprob


# --------------------------------------------------------------------------- log-probabilities


def _score_encoded(
    model, tokenizer, encoded: Sequence[EncodedExample], batch_size: int, group: int = 1
) -> list[ResponseScore]:
    """Summed NLL and token count of each encoded example, in input order.

    With ``group`` > 1 the examples come in runs of ``group`` sharing one context,
    kept together in one batch and scored with the context encoded once.
    """
    runs = sorted(range(0, len(encoded), group), key=lambda r: len(encoded[r]))  # similar lengths together
    order = [r + k for r in runs for k in range(group)]
    out: list[ResponseScore | None] = [None] * len(encoded)
    pad = pad_id(tokenizer)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = collate([encoded[i] for i in idx], pad)
            nll = shared_context_token_losses(model, batch, group).sum(dim=1)  # (B,)
            counts = batch.response_mask.sum(dim=1)
            for row, i in enumerate(idx):
                out[i] = ResponseScore(float(nll[row]), int(counts[row]))
    return out  # type: ignore[return-value]


def score_responses(model, tokenizer, examples: Sequence[Example], *, batch_size: int = 8) -> list[ResponseScore]:
    """The log-probability of each example's ``response`` given its context (chat template applied)."""
    encoded = [
        encode_example(tokenizer, ex, max_length=MAX_EVAL_TOKENS, where=f"eval case {i}")
        for i, ex in enumerate(examples)
    ]
    return _score_encoded(model, tokenizer, encoded, batch_size) if encoded else []


def rejected_example(case: EvalCase) -> Example:
    """The case's context with its ``rejected`` reply as the response."""
    if case.rejected is None:
        raise ValueError("case has no rejected reply")
    return Example(context=case.context, messages=case.messages, response=case.rejected)


def score_cases(model, tokenizer, cases: Sequence[EvalCase], *, batch_size: int = 8) -> list[CaseScore]:
    """Wanted (and rejected) response scores of each eval case, batched.

    A case's two replies share its context, which is encoded once for both
    (:func:`~traitgraph.compiler.losses.shared_context_token_losses`).

    >>> [round(s.margin, 2) for s in score_cases(model, tok, cases)]   # doctest: +SKIP
    [1.2, -0.4]
    """

    def encoded(example: Example, i: int) -> EncodedExample:
        return encode_example(tokenizer, example, max_length=MAX_EVAL_TOKENS, where=f"eval case {i}")

    wanted = {i: encoded(c, i) for i, c in enumerate(cases)}
    rejected = {i: encoded(rejected_example(c), i) for i, c in enumerate(cases) if c.rejected is not None}
    pairs = [i for i in rejected if rejected[i].context == wanted[i].context]
    rest = [(i, 0, wanted[i]) for i in wanted if i not in pairs]
    rest += [(i, 1, rejected[i]) for i in rejected if i not in pairs]
    scored = dict(
        zip([(i, k) for i, k, _ in rest], _score_encoded(model, tokenizer, [e for *_, e in rest], batch_size))
    )
    rows = [e for i in pairs for e in (wanted[i], rejected[i])]
    for n, score in enumerate(_score_encoded(model, tokenizer, rows, 2 * batch_size, group=2)):
        scored[pairs[n // 2], n % 2] = score
    return [CaseScore(scored[i, 0], scored.get((i, 1))) for i in range(len(cases))]


def text_scores(model, tokenizer, lines: Sequence[str], *, batch_size: int = 16) -> list[ResponseScore | None]:
    """Summed NLL and token count of each plain text line (every token after its first);
    ``None`` for a line of fewer than two tokens."""
    encoded = [encode_text(tokenizer, line, max_length=MAX_EVAL_TOKENS) for line in lines]
    present = [i for i, e in enumerate(encoded) if e is not None]
    scores = _score_encoded(model, tokenizer, [encoded[i] for i in present], batch_size) if present else []
    out: list[ResponseScore | None] = [None] * len(lines)
    for i, score in zip(present, scores):
        out[i] = score
    return out


def total(scores: Sequence[ResponseScore | None]) -> ResponseScore:
    """Scores summed: ``total(...).loss`` is the token-weighted mean loss.

    >>> total(text_scores(model, tok, load_general_text())).loss      # doctest: +SKIP
    2.93
    """
    present = [s for s in scores if s is not None]
    return ResponseScore(sum(s.nll for s in present), sum(s.tokens for s in present))


# --------------------------------------------------------------------------- generation


def contains_answer(output: str, answer: str) -> bool:
    """The general-prompts rule: the output contains the answer, case-insensitively."""
    return answer.casefold() in output.casefold()


# --------------------------------------------------------------------------- task vectors in place


@contextlib.contextmanager
def vectors_applied(model, vectors: Sequence[tuple[Path, float]]) -> Iterator[None]:
    """``W += α·τ`` for each ``(τ file, α)`` inside the block; the touched weights are
    restored exactly afterwards (copied back, not subtracted, so no rounding drift).

    >>> with vectors_applied(model, [(tau_path, -0.5)]):                 # doctest: +SKIP
    ...     alone = score_cases(model, tok, cases)
    """
    from traitgraph.compiler.task_vector import open_task_vector
    from traitgraph.compiler.weights import apply_task_vectors

    params = dict(model.named_parameters())
    touched: set[str] = set()
    for path, _ in vectors:
        with open_task_vector(path) as tv:
            touched.update(tv.keys())
    unknown = sorted(touched - set(params))
    if unknown:
        raise BuildError(f"task vector tensor '{unknown[0]}' is not a parameter of the model being evaluated")
    saved = {name: params[name].detach().clone() for name in touched}
    try:
        for path, alpha in vectors:
            apply_task_vectors(model, [path], alpha=alpha)
        yield
    finally:
        with torch.no_grad():
            for name, tensor in saved.items():
                params[name].copy_(tensor)
