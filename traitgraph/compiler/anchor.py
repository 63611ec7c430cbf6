"""``training.anchor``: hold a node's training near its start weights.

Two pulls, each off at 0 (see docs/training.md):

``l2``  after every optimizer step, ``W ← W − l2 · (W − W_start)`` on the
        trained tensors: a decoupled pull (like AdamW's weight decay, but
        toward the start instead of toward zero), so τ shrinks by the share
        ``l2`` per step whatever the optimizer's scaling.
``kl``  adds ``kl · KL(p_start ‖ p_model)`` to the loss, averaged over the
        response tokens of the batch's *replay* rows: the model's next-token
        distribution on replay text is held to the start model's (a frozen
        copy), which protects what the base says about other things.

``W_start`` is the base for a node without parents and base + parents for a
node that ``refines`` others: τ is this node's own change, so that is what
is pulled back.

>>> anchor = Anchor(settings.anchor, named, reference_model)    # doctest: +SKIP
>>> loss = loss + anchor.kl_term(logits, batch, n_node)         # doctest: +SKIP
>>> opt.step(); anchor.pull(named)                              # doctest: +SKIP
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from traitgraph.compiler.data import Batch
from traitgraph.compiler.losses import response_logits
from traitgraph.graph.schema import AnchorSettings


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked tokens of ``KL(softmax(ref) ‖ softmax(logits))``.

    ``logits``, ``ref_logits``: (B, T, V); ``mask``: (B, T), 1 on scored tokens.

    >>> x = torch.randn(1, 2, 5); kl_to_reference(x, x, torch.ones(1, 2)).item()
    0.0
    """
    log_p = F.log_softmax(logits.float(), dim=-1)
    log_q = F.log_softmax(ref_logits.float(), dim=-1)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1)  # (B, T)
    m = mask.to(kl.dtype)
    return (kl * m).sum() / m.sum().clamp(min=1)


def _rows(batch: Batch, start: int) -> Batch:
    return Batch(
        batch.context_ids[start:], batch.context_mask[start:], batch.response_ids[start:], batch.response_mask[start:]
    )


class Anchor:
    """The configured pulls for one training run (see module doc)."""

    def __init__(self, settings: AnchorSettings, named: list[tuple[str, torch.nn.Parameter]], reference=None):
        self.settings = settings
        self.reference = reference
        self.start = {n: p.detach().clone() for n, p in named} if settings.l2 > 0 else {}

    def kl_term(self, logits: torch.Tensor, batch: Batch, n_node: int, context: str) -> torch.Tensor | None:
        """``kl · KL`` on the replay rows (``batch`` rows ``n_node:``), or None when off."""
        if self.settings.kl == 0 or n_node >= len(batch):
            return None
        replay = _rows(batch, n_node)
        with torch.no_grad():
            ref = response_logits(self.reference, replay, context)
        return self.settings.kl * kl_to_reference(logits[n_node:], ref, replay.response_mask)

    @torch.no_grad()
    def pull(self, named: list[tuple[str, torch.nn.Parameter]]) -> None:
        """``W ← W − l2 · (W − W_start)`` for every trained tensor (no-op when ``l2`` is 0)."""
        if self.settings.l2 == 0:
            return
        for name, p in named:
            p.sub_(p - self.start[name], alpha=self.settings.l2)
