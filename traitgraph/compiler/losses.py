"""Response-only language-modelling loss, context-frozen or full.

Both modes compute the same number: the mean negative log-likelihood of the
response tokens (the *decision tokens*) given the context. They differ in
what the backward pass covers.

``full``
    One forward over ``[context | response]`` with the padding masked; the
    gradient flows through every position, context included.

``frozen`` (the default; see BACKGROUND.md, "Context-frozen training")
    1. ``context[:-1]`` runs under ``torch.no_grad()`` with ``use_cache=True``:
       its key/value cache holds the context's encoding, with no graph.
    2. ``[context[-1], response[:-1]]`` runs with gradients on top of that
       cache and predicts ``response``. The first response token is predicted
       from the last context position, exactly as in the full forward.

    The gradient reaches every weight through the response positions (and
    through the query projections that read the cached context) but not the
    encoding of the context itself, so backward work scales with the response,
    not the context. The loss equals the full forward's (tests check 1e-5).

Shapes: ``B`` rows, ``Tc`` context and ``Tr`` response columns, ``V`` vocabulary.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from traitgraph.compiler.data import Batch, position_ids

ContextMode = Literal["frozen", "full"]


def _full_logits(model, batch: Batch) -> torch.Tensor:
    """Logits predicting each response token, from one forward over everything. (B, Tr, V)"""
    tr = batch.response_ids.shape[1]
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
        logits_to_keep=tr + 1,  # the last context position and the response
    )
    return out.logits[:, :-1]  # position t predicts token t+1


def _frozen_logits(model, batch: Batch, group: int = 1) -> torch.Tensor:
    """Logits predicting each response token, the context encoded without gradient. (B, Tr, V)

    With ``group`` > 1 the rows come in runs of ``group`` sharing one context: it is
    encoded once per run and its key/value cache repeated for the run's rows.
    """
    if len(batch) % group:
        raise ValueError(f"{len(batch)} rows do not come in runs of {group}")
    prefix_ids = batch.context_ids[::group, :-1]  # (B/group, Tc-1)
    prefix_mask = batch.context_mask[::group, :-1]
    if group > 1 and not torch.equal(batch.context_ids[:, :-1], prefix_ids.repeat_interleave(group, dim=0)):
        raise ValueError("rows of one run must share their context")
    past = None
    if prefix_ids.shape[1] > 0:
        with torch.no_grad():
            past = model(
                input_ids=prefix_ids,
                attention_mask=prefix_mask,
                position_ids=position_ids(prefix_mask),
                use_cache=True,
                logits_to_keep=1,  # the logits are not needed; keep the lm_head cheap
            ).cache
        if group > 1:
            past.batch_repeat_interleave(group)
    # [last context token, response[:-1]]: row i has 1 + (len_i - 1) real tokens
    step_ids = torch.cat([batch.context_ids[:, -1:], batch.response_ids[:, :-1]], dim=1)  # (B, Tr)
    step_mask = torch.cat([batch.context_mask[:, -1:], batch.response_mask[:, :-1]], dim=1)
    mask = torch.cat([batch.context_mask[:, :-1], step_mask], dim=1)  # (B, Tc-1+Tr): cache columns, then new ones
    out = model(
        input_ids=step_ids,
        attention_mask=mask,
        position_ids=position_ids(mask)[:, prefix_ids.shape[1] :],
        cache=past,
        use_cache=past is not None,
    )
    return out.logits


def response_logits(model, batch: Batch, context: ContextMode = "frozen") -> torch.Tensor:
    """Logits at the positions that predict the response tokens. (B, Tr, V)"""
    if context == "frozen":
        return _frozen_logits(model, batch)
    if context == "full":
        return _full_logits(model, batch)
    raise ValueError(f"context mode must be 'frozen' or 'full', not {context!r}")


def token_nll(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Per-token NLL of the response, 0 on padding. (B, Tr)"""
    b, tr, v = logits.shape
    nll = F.cross_entropy(logits.float().reshape(b * tr, v), batch.response_ids.reshape(b * tr), reduction="none").view(
        b, tr
    )
    return nll * batch.response_mask.to(nll.dtype)


def response_loss(model, batch: Batch, context: ContextMode = "frozen") -> torch.Tensor:
    """Mean per-token NLL over every response token of the batch (a scalar with grad).

    >>> loss = response_loss(model, collate(encoded, pad), "frozen"); loss.backward()  # doctest: +SKIP
    """
    nll = token_nll(response_logits(model, batch, context), batch)
    return nll.sum() / batch.response_mask.sum().clamp(min=1)


@torch.no_grad()
def response_token_losses(model, batch: Batch) -> torch.Tensor:
    """Per-token NLL of each response (0 on padding; mask: ``batch.response_mask``). (B, Tr)"""
    return token_nll(response_logits(model, batch, "frozen"), batch)


@torch.no_grad()
def response_logprobs(model, batch: Batch) -> torch.Tensor:
    """Summed log-probability of each row's response given its context. (B,)"""
    return -response_token_losses(model, batch).sum(dim=1)


@torch.no_grad()
def shared_context_token_losses(model, batch: Batch, group: int) -> torch.Tensor:
    """:func:`response_token_losses` of a batch whose rows come in runs of ``group`` with one
    context (an eval case's wanted and rejected replies): each context is encoded once and its
    key/value cache repeated for the run. (B, Tr)

    The numbers are the ones :func:`response_token_losses` gives (tests check 1e-4); the
    context's share of the work is divided by ``group``.
    """
    return token_nll(_frozen_logits(model, batch, group), batch)
