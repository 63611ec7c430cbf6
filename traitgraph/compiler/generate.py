"""Greedy generation with the chat template: batched, left-padded, in input order.

Evaluation scores what a model *says* with it, and the compiler uses it to
have the base answer the replay prompts (``replay.source: base_replies``).

>>> generate(model, tok, [[{"role": "user", "content": "Capital of France?"}]], max_new_tokens=24)  # doctest: +SKIP
['The capital of France is Paris.']
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from traitgraph.compiler.data import pad_id, render_chat


def prompt_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """The tokens of a conversation up to and including the assistant's generation prompt."""
    context, _ = render_chat(tokenizer, messages, ".")  # the context half is the generation prompt
    return context


def stop_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant turn: the eos token and ChatML's ``<|im_end|>``."""
    ids = {tokenizer.eos_token_id}
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    ids.add(im_end)
    return sorted(i for i in ids if i is not None)


def generate(
    model, tokenizer, chats: Sequence[list[dict[str, str]]], *, max_new_tokens: int, batch_size: int = 16
) -> list[str]:
    """Greedy replies to each conversation (chat template applied), batched, in input order.

    >>> generate(model, tok, [[{"role": "user", "content": "Capital of France?"}]], max_new_tokens=24)  # doctest: +SKIP
    ['The capital of France is Paris.']
    """
    from transformers import GenerationConfig

    prompts = [prompt_ids(tokenizer, list(chat)) for chat in chats]
    pad = pad_id(tokenizer)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad, eos_token_id=stop_ids(tokenizer)
    )
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)  # (B, T) left-padded
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i], dtype=torch.long)
                mask[row, width - len(prompts[i]) :] = 1
            generated = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
            for row, i in enumerate(idx):
                out[i] = tokenizer.decode(generated[row, width:], skip_special_tokens=True).strip()
    return out
