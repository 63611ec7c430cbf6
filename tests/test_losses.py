"""Context-frozen training computes the masked full-forward loss, with a smaller gradient graph."""

from __future__ import annotations

import contextlib

import pytest
import torch

from traitgraph.compiler.base_model import load_model, resolve_base
from traitgraph.compiler.data import collate, encode_example, encode_text, pad_id
from traitgraph.compiler.losses import response_logprobs, response_loss, response_token_losses
from traitgraph.graph.schema import Example

EXAMPLES = [
    Example(context="hello there, how are you today?", response="good"),
    Example(context="a", response="the long answer is that we can go there and come back home again"),
    Example(
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yes?"},
            {"role": "user", "content": "what is the word for the water in the sea"},
        ],
        response="water",
    ),
    Example(context="tell me about the ship", response="arr, the ship is big"),
]


@pytest.fixture(scope="module")
def model_and_batch(tiny_base_dir):
    model, tok = load_model(resolve_base(str(tiny_base_dir)))
    # A real pico model at init is near-uniform; perturb it so that the test means something.
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(1)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    encoded = [encode_example(tok, ex, max_length=512) for ex in EXAMPLES]
    encoded.append(encode_text(tok, "The sea is big and the ship is small.", max_length=64))  # 1-token context
    lengths = {(len(e.context), len(e.response)) for e in encoded}
    assert len(lengths) == len(encoded)  # every row pads differently
    return model, tok, encoded, collate(encoded, pad_id(tok))


def _loss_and_grads(model, batch, context):
    model.zero_grad(set_to_none=True)
    loss = response_loss(model, batch, context)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def test_frozen_loss_equals_masked_full_forward(model_and_batch):
    model, _, _, batch = model_and_batch
    frozen, g_frozen = _loss_and_grads(model, batch, "frozen")
    full, g_full = _loss_and_grads(model, batch, "full")
    assert abs(frozen.item() - full.item()) < 1e-5
    for name, g in g_frozen.items():
        assert torch.isfinite(g).all(), name
        assert g.abs().sum() > 0, name
    # Not equal in general: the context's encoding gets no gradient when frozen.
    assert not torch.allclose(
        g_frozen["model.layers.0.mlp.up_proj.weight"], g_full["model.layers.0.mlp.up_proj.weight"]
    )


def test_frozen_loss_equals_per_example_losses(model_and_batch):
    """Padding changes nothing: the batch loss is the token-weighted mean of single-example losses."""
    model, tok, encoded, batch = model_and_batch
    with torch.no_grad():
        total = sum(response_loss(model, collate([e], pad_id(tok)), "full").item() * len(e.response) for e in encoded)
        assert abs(response_loss(model, batch, "frozen").item() - total / batch.n_tokens) < 1e-5


@contextlib.contextmanager
def _detached_context_kv(model, n_prefix: int):
    """Full forward in which the keys/values of the first ``n_prefix`` positions carry no gradient."""

    def hook(_module, _inputs, out):  # out: (B, T, kv)
        return torch.cat([out[:, :n_prefix].detach(), out[:, n_prefix:]], dim=1)

    handles = [
        proj.register_forward_hook(hook)
        for layer in model.model.layers
        for proj in (layer.self_attn.k_proj, layer.self_attn.v_proj)
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def test_frozen_gradient_is_full_gradient_with_context_kv_detached(model_and_batch):
    """What "frozen" means, exactly: the gradient of a full forward whose context
    keys/values (all but the last context token) are constants."""
    model, _, _, batch = model_and_batch
    _, g_frozen = _loss_and_grads(model, batch, "frozen")
    with _detached_context_kv(model, batch.context_ids.shape[1] - 1):
        _, g_detached = _loss_and_grads(model, batch, "full")
    for name, g in g_frozen.items():
        torch.testing.assert_close(g, g_detached[name], rtol=1e-4, atol=1e-6, msg=name)


def test_logprobs_and_token_losses(model_and_batch):
    model, tok, encoded, batch = model_and_batch
    per_token = response_token_losses(model, batch)
    assert per_token.shape == batch.response_ids.shape
    assert (per_token[batch.response_mask == 0] == 0).all() and (per_token[batch.response_mask == 1] > 0).all()
    logprobs = response_logprobs(model, batch)
    for i, e in enumerate(encoded):
        alone = response_logprobs(model, collate([e], pad_id(tok)))
        assert abs(logprobs[i].item() - alone.item()) < 1e-4
    assert abs(-logprobs.sum().item() / batch.n_tokens - response_loss(model, batch, "full").item()) < 1e-5


def test_no_deprecation_warning_from_our_calls_into_transformers(model_and_batch):
    """transformers 5.24 deprecates `past_key_values=` (removed in 5.40); the context-frozen loss uses
    the current `cache` argument, so neither a training step nor scoring warns."""
    import warnings

    model, _, _, batch = model_and_batch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        response_loss(model, batch, "frozen").backward()
        response_token_losses(model, batch)
    model.zero_grad(set_to_none=True)
    deprecations = [
        str(w.message)
        for w in caught
        if issubclass(w.category, (DeprecationWarning, FutureWarning)) or "deprecat" in str(w.message).lower()
    ]
    assert deprecations == []
