"""Examples to token batches: one chat template, loss on the response only.

An :class:`~traitgraph.graph.schema.Example` renders through the tokenizer's
chat template into two token runs::

    context  = apply_chat_template(example.chat(), add_generation_prompt=True)
             = "<|im_start|>system ...<|im_end|>\\n<|im_start|>user\\n{context}<|im_end|>\\n<|im_start|>assistant\\n"
    response = the rest of the rendered full conversation (context + assistant turn),
               cut after the end-of-turn special token: "{response}<|im_end|>"

so the response tokens are what the model must produce after the generation
prompt, end-of-turn token included (the model learns to stop). These are the
*decision tokens*: the loss covers them and nothing else. A tokenizer without a
chat template uses :data:`FALLBACK_CHAT_TEMPLATE`.

Batches are padded explicitly so that a key/value cache of the context lines
up for every row (see :mod:`traitgraph.compiler.losses`)::

    context (left-padded)        response (right-padded)
    [pad pad c1 c2 c3 c4]        [r1 r2 r3 pad]
    [c1 c2 c3 c4 c5 c6]          [r1 r2 r3 r4]

An example longer than ``max_length`` is an error naming the node, the file
and the example, never a silent cut.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from traitgraph.errors import UserError

#: Used when a tokenizer has no chat template: plain "Role: text" turns, and the
#: assistant's turn ends with the tokenizer's end-of-sequence token.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ 'Assistant: ' + message['content'] + (eos_token or '') + '\n' }}"
    "{% else %}"
    "{{ (message['role'] | capitalize) + ': ' + message['content'] + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


@dataclass(frozen=True)
class EncodedExample:
    """One example as token ids: the context (no loss) and the response (loss)."""

    context: tuple[int, ...]
    response: tuple[int, ...]
    where: str = ""
    """Where it came from, for error messages (``nodes/x.yaml: node 'x', examples[3]``)."""

    def __len__(self) -> int:
        return len(self.context) + len(self.response)


@dataclass(frozen=True)
class Batch:
    """Padded token tensors of a list of :class:`EncodedExample` (see module doc)."""

    context_ids: torch.Tensor  # (B, Tc) left-padded
    context_mask: torch.Tensor  # (B, Tc) 1 on real tokens
    response_ids: torch.Tensor  # (B, Tr) right-padded
    response_mask: torch.Tensor  # (B, Tr) 1 on real tokens

    @property
    def input_ids(self) -> torch.Tensor:  # (B, Tc+Tr)
        return torch.cat([self.context_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:  # (B, Tc+Tr)
        return torch.cat([self.context_mask, self.response_mask], dim=1)

    @property
    def position_ids(self) -> torch.Tensor:  # (B, Tc+Tr)
        return position_ids(self.attention_mask)

    @property
    def n_tokens(self) -> int:
        """Response (loss) tokens in the batch."""
        return int(self.response_mask.sum())

    def __len__(self) -> int:
        return self.context_ids.shape[0]


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only (0 for the padding on the left)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


# --------------------------------------------------------------------------- encoding


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _render(tokenizer, messages: list[dict[str, str]], **kwargs) -> str:
    template = None if getattr(tokenizer, "chat_template", None) else FALLBACK_CHAT_TEMPLATE
    return tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template, **kwargs)


def render_chat(tokenizer, messages: list[dict[str, str]], response: str) -> tuple[list[int], list[int]]:
    """``(context_ids, response_ids)`` of a conversation and the wanted assistant reply.

    >>> ctx, resp = render_chat(tok, [{"role": "user", "content": "Hi"}], "Hello!")  # doctest: +SKIP
    >>> tok.decode(resp)                                                            # doctest: +SKIP
    'Hello!<|im_end|>'
    """
    context_text = _render(tokenizer, messages, add_generation_prompt=True)
    full_text = _render(tokenizer, [*messages, {"role": "assistant", "content": response}])
    if not full_text.startswith(context_text):
        raise UserError(
            "the tokenizer's chat template does not render the conversation so far as a prefix of the "
            "conversation with the reply, so the reply's tokens cannot be told apart; use a base whose "
            "template does (ChatML, e.g. SmolLM2) "
            f"(context renders as {context_text[-60:]!r}, the full chat as {full_text[len(context_text) - 60 :][:120]!r})"
        )
    context_ids = _ids(tokenizer, context_text)
    full_ids = _ids(tokenizer, full_text)
    if full_ids[: len(context_ids)] == context_ids:
        response_ids = full_ids[len(context_ids) :]
    else:  # a merge across the boundary: tokenise the reply on its own, as generation would
        response_ids = _ids(tokenizer, full_text[len(context_text) :])
    # Keep the end-of-turn token(s), drop what the template puts after them ("\n").
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    ends = [i for i, t in enumerate(response_ids) if t in special]
    if ends and ends[-1] > 0:
        response_ids = response_ids[: ends[-1] + 1]
    return context_ids, response_ids


def encode_example(tokenizer, example, *, max_length: int, where: str = "") -> EncodedExample:
    """Tokenise one :class:`Example` (or :class:`EvalCase`); too long is a :class:`UserError`."""
    context, response = render_chat(tokenizer, example.chat(), example.response)
    encoded = EncodedExample(tuple(context), tuple(response), where)
    if not response:
        raise UserError(f"{where}: the response renders to no tokens")
    if len(encoded) > max_length:
        raise UserError(
            f"{where}: the example is {len(encoded)} tokens ({len(context)} context + {len(response)} "
            f"response, chat template included), more than max_length {max_length}. Shorten it, or raise "
            "`training: max_length:` (per node or in personality.yaml); examples are never cut."
        )
    return encoded


def encode_examples(tokenizer, located: Sequence, *, max_length: int) -> list[EncodedExample]:
    """Tokenise located examples (``.example``, ``.where``: a resolved target's
    examples or replay examples); a too-long one names where it was written."""
    return [encode_example(tokenizer, ex.example, max_length=max_length, where=ex.where) for ex in located]


def encode_text(tokenizer, text: str, *, max_length: int) -> EncodedExample | None:
    """Plain text as a language-modelling example: the first token is the context,
    every later token is scored. Cut to ``max_length`` (this is replay or
    retention text, not a user's example). ``None`` when under two tokens."""
    ids = _ids(tokenizer, text)[:max_length]
    if len(ids) < 2:
        return None
    return EncodedExample((ids[0],), tuple(ids[1:]), "general text")


def load_general_text(path: Path | None = None) -> list[str]:
    """Non-empty lines of a general text file; the shipped one by default
    (``traitgraph/data/general_text.txt``)."""
    if path is None:
        try:
            text = resources.files("traitgraph.data").joinpath("general_text.txt").read_text(encoding="utf-8")
        except (FileNotFoundError, OSError) as exc:
            raise UserError(f"the shipped general text is missing ({exc}); reinstall traitgraph") from None
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot read general text file {path}: {exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


# --------------------------------------------------------------------------- batching


def pad_id(tokenizer) -> int:
    """The id used for padding (never scored, never attended to)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def collate(examples: Sequence[EncodedExample], pad: int) -> Batch:
    """Left-pad contexts, right-pad responses (see module doc)."""
    if not examples:
        raise ValueError("collate: no examples")
    if any(not ex.context or not ex.response for ex in examples):
        raise ValueError("collate: every example needs at least one context and one response token")
    tc = max(len(ex.context) for ex in examples)
    tr = max(len(ex.response) for ex in examples)
    b = len(examples)
    context_ids = torch.full((b, tc), pad, dtype=torch.long)
    context_mask = torch.zeros((b, tc), dtype=torch.long)
    response_ids = torch.full((b, tr), pad, dtype=torch.long)
    response_mask = torch.zeros((b, tr), dtype=torch.long)
    for i, ex in enumerate(examples):
        nc, nr = len(ex.context), len(ex.response)
        context_ids[i, tc - nc :] = torch.tensor(ex.context, dtype=torch.long)
        context_mask[i, tc - nc :] = 1
        response_ids[i, :nr] = torch.tensor(ex.response, dtype=torch.long)
        response_mask[i, :nr] = 1
    return Batch(context_ids, context_mask, response_ids, response_mask)


class EpochSampler:
    """Indices ``0..n-1`` in epoch-wise shuffled order, from a seeded generator.

    Each epoch is a fresh permutation; a batch may span two epochs. The same
    seed always gives the same sequence.

    >>> s = EpochSampler(5, seed=0); s.take(3), s.take(3)     # doctest: +SKIP
    ([4, 1, 2], [0, 3, 2])
    """

    def __init__(self, n: int, seed: int):
        if n <= 0:
            raise ValueError("EpochSampler needs at least one item")
        self.n = n
        self.generator = torch.Generator().manual_seed(int(seed))
        self._buffer: list[int] = []

    def take(self, k: int) -> list[int]:
        while len(self._buffer) < k:
            self._buffer.extend(torch.randperm(self.n, generator=self.generator).tolist())
        out, self._buffer = self._buffer[:k], self._buffer[k:]
        return out


def batches_in_order(examples: Sequence[EncodedExample], batch_size: int, pad: int) -> Iterator[Batch]:
    """Consecutive batches in the given order (for evaluation)."""
    for start in range(0, len(examples), batch_size):
        yield collate(examples[start : start + batch_size], pad)
