"""The optimizer registry and APOLLO (arXiv:2412.05270): the maths, the
memory, the state format and determinism, on tiny tensors."""

from __future__ import annotations

import copy
import io
import typing

import pytest
import torch

from traitgraph.compiler.optim import (
    OPTIMIZERS,
    Apollo,
    build_optimizer,
    effective_settings,
    optimizer_state_bytes,
)
from traitgraph.compiler.optim.apollo import random_projection
from traitgraph.errors import UserError
from traitgraph.graph.schema import OptimizerName, OptimizerSettings

torch.set_num_threads(1)

APOLLOS = ["apollo", "apollo_mini"]


def tiny_model(seed: int = 0) -> torch.nn.Module:
    """A tall matrix, a wide matrix, biases and a norm: every kind of parameter."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(16, 48),  # weight (48, 16): tall
        torch.nn.Tanh(),
        torch.nn.LayerNorm(48),  # 1-D weight and bias
        torch.nn.Linear(48, 8),  # weight (8, 48): wide
    )


def regression_batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 16, generator=g)
    w = torch.randn(16, 8, generator=g) / 4
    return x, torch.tanh(x @ w) * 2


def train(model, opt, steps: int, batch=None) -> list[float]:
    x, y = batch if batch is not None else regression_batch()
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def params_of(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def apollo(model, lr=1e-2, seed=0, **settings) -> Apollo:
    settings.setdefault("name", "apollo_mini")
    return build_optimizer(model.named_parameters(), OptimizerSettings(**settings), lr, seed)


# --------------------------------------------------------------------------- registry


def test_registry_matches_the_spec_names():
    assert set(OPTIMIZERS) == set(typing.get_args(OptimizerName)) == {"apollo", "apollo_mini", "adamw"}


def test_unknown_name_is_a_user_error_listing_the_valid_ones():
    bad = OptimizerSettings.model_construct(**{**OptimizerSettings().model_dump(), "name": "sgd"})
    with pytest.raises(UserError, match=r"'sgd'.*adamw, apollo, apollo_mini"):
        build_optimizer(tiny_model().named_parameters(), bad, 1e-3, 0)


def test_bad_learning_rate_and_nothing_to_train_are_user_errors():
    with pytest.raises(UserError, match="learning rate"):
        build_optimizer(tiny_model().named_parameters(), OptimizerSettings(), 0.0, 0)
    frozen = tiny_model().requires_grad_(False)
    with pytest.raises(UserError, match="nothing to train"):
        build_optimizer(frozen.named_parameters(), OptimizerSettings(), 1e-3, 0)


def test_plain_parameters_are_refused_with_a_hint():
    with pytest.raises(TypeError, match="named_parameters"):
        build_optimizer(tiny_model().parameters(), OptimizerSettings(), 1e-3, 0)


def test_builds_the_named_optimizer_with_preset_defaults():
    model = tiny_model()
    adamw = build_optimizer(model.named_parameters(), OptimizerSettings(name="adamw"), 1e-3, 0)
    assert type(adamw) is torch.optim.AdamW
    mini = apollo(model)
    group = next(g for g in mini.param_groups if g["apollo"])
    assert (group["rank"], group["scale_type"], group["scale"]) == (1, "tensor", 128.0)
    full = apollo(model, name="apollo")
    group = next(g for g in full.param_groups if g["apollo"])
    assert (group["rank"], group["scale_type"], group["scale"]) == (256, "channel", 1.0)
    # A set field beats the preset.
    tuned = apollo(model, name="apollo_mini", rank=4, scale=2.0)
    group = next(g for g in tuned.param_groups if g["apollo"])
    assert (group["rank"], group["scale_type"], group["scale"]) == (4, "tensor", 2.0)
    eff = effective_settings(OptimizerSettings(name="apollo", scale_type="tensor"))
    assert (eff.rank, eff.scale_type, eff.scale) == (256, "tensor", 1.0)


def test_frozen_and_tied_parameters():
    model = tiny_model()
    model[2].requires_grad_(False)
    named = list(model.named_parameters()) + [("tied.weight", model[0].weight)]
    opt = build_optimizer(named, OptimizerSettings(), 1e-3, 0)
    trained = [p for g in opt.param_groups for p in g["params"]]
    assert len(trained) == len({id(p) for p in trained}) == 4  # two weights, two biases
    assert all(p.requires_grad for p in trained)


# --------------------------------------------------------------------------- memory and state


def test_state_holds_low_rank_moments_projected_along_the_smaller_dimension():
    model = tiny_model()
    opt = apollo(model, name="apollo", rank=4)
    train(model, opt, 2)
    tall, wide = model[0].weight, model[3].weight  # (48, 16), (8, 48)
    assert opt.state[tall]["exp_avg"].shape == (48, 4)
    assert opt.state[wide]["exp_avg_sq"].shape == (4, 48)
    # Rank is capped at the smaller dimension.
    m2 = tiny_model()
    capped = apollo(m2, name="apollo", rank=256)
    train(m2, capped, 1)
    assert capped.state[m2[3].weight]["exp_avg"].shape == (8, 48)


def test_state_is_a_seed_not_a_matrix():
    model = tiny_model()
    opt = apollo(model, rank=2)
    train(model, opt, 3)
    for p in (model[0].weight, model[3].weight):
        state = opt.state[p]
        assert isinstance(state["proj_seed"], int) and isinstance(state["step"], int)
        shapes = {tuple(v.shape) for v in state.values() if isinstance(v, torch.Tensor)}
        low = (max(p.shape), 2) if p.shape[0] >= p.shape[1] else (2, max(p.shape))
        assert shapes == {low, ()}  # two moments and the previous update norm


def test_apollo_mini_state_is_under_a_fiftieth_of_adamw_on_matrices():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 512), torch.nn.Linear(512, 64))
    matrices = [p for p in model.parameters() if p.ndim == 2]
    sizes = {}
    for name in ("adamw", "apollo_mini"):
        m = copy.deepcopy(model)
        opt = build_optimizer(m.named_parameters(), OptimizerSettings(name=name), 1e-3, 0)
        x = torch.randn(8, 128)
        m(x).square().mean().backward()
        opt.step()
        sizes[name] = optimizer_state_bytes(opt, [p for p in m.parameters() if p.ndim == 2])
        assert optimizer_state_bytes(opt) > sizes[name]  # the biases add to the total
    assert sizes["adamw"] == 2 * 4 * sum(p.numel() for p in matrices) + 2 * 4  # + two step counters
    assert sizes["apollo_mini"] * 50 <= sizes["adamw"]


@pytest.mark.parametrize("name", APOLLOS)
def test_state_round_trips_through_torch_save_and_training_continues_identically(name):
    model = tiny_model()
    opt = apollo(model, name=name, rank=3, update_proj_gap=2)  # projections refresh
    train(model, opt, 3)

    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    clone = tiny_model(seed=99)
    clone.load_state_dict(saved["model"])
    reloaded = apollo(clone, name=name, rank=3, update_proj_gap=2)
    reloaded.load_state_dict(saved["optim"])

    train(model, opt, 4)
    train(clone, reloaded, 4)
    for a, b in zip(params_of(model), params_of(clone)):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", APOLLOS)
def test_same_seed_is_bit_identical_and_another_seed_differs(name):
    runs = {}
    for key, seed in (("a", 7), ("b", 7), ("c", 8)):
        model = tiny_model()
        train(model, apollo(model, name=name, rank=2, seed=seed, update_proj_gap=3), 6)
        runs[key] = params_of(model)
    assert all(torch.equal(a, b) for a, b in zip(runs["a"], runs["b"]))
    assert not all(torch.equal(a, c) for a, c in zip(runs["a"], runs["c"]))


def test_projections_depend_on_seed_name_and_period_only():
    def first_seed(named, seed):
        model = tiny_model()
        named = [(n, p) for n, p in named(model)]
        opt = build_optimizer(named, OptimizerSettings(), 1e-2, seed)
        train(model, opt, 1)
        return opt.state[model[0].weight]["proj_seed"]

    seed = first_seed(lambda m: m.named_parameters(), 3)
    assert seed == first_seed(lambda m: reversed(list(m.named_parameters())), 3)  # order-free
    assert seed != first_seed(lambda m: [(f"x.{n}", p) for n, p in m.named_parameters()], 3)
    assert seed != first_seed(lambda m: m.named_parameters(), 4)
    assert torch.equal(random_projection(seed, 0, 2, 16), random_projection(seed, 0, 2, 16))
    assert not torch.equal(random_projection(seed, 0, 2, 16), random_projection(seed, 1, 2, 16))
    # Entries are N(0, 1/r).
    big = random_projection(seed, 0, 4, 20_000)
    assert abs(big.var().item() - 1 / 4) < 0.01


def test_projection_is_redrawn_every_update_proj_gap_steps():
    def run(gap, steps):
        model = tiny_model()
        train(model, apollo(model, rank=2, update_proj_gap=gap), steps)
        return params_of(model)

    same = run(2, 2), run(1000, 2)  # both still on their first projection
    assert all(torch.equal(a, b) for a, b in zip(*same))
    redrawn = run(2, 3), run(1000, 3)  # step 3 uses a fresh projection with gap 2
    assert not all(torch.equal(a, b) for a, b in zip(*redrawn))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_other_dtypes_keep_their_dtype(dtype):
    model = tiny_model().to(dtype)
    opt = apollo(model, name="apollo", rank=2, weight_decay=0.01)
    x, y = regression_batch()
    losses = train(model, opt, 20, (x.to(dtype), y.to(dtype)))
    assert losses[-1] < losses[0]
    assert all(p.dtype == dtype for p in model.parameters())
    assert opt.state[model[0].weight]["exp_avg"].dtype == dtype


# --------------------------------------------------------------------------- the maths


def test_non_matrix_parameters_follow_torch_adamw_exactly():
    torch.manual_seed(0)
    vec = torch.nn.Parameter(torch.randn(32))
    mat = torch.nn.Parameter(torch.randn(16, 32))
    twin = torch.nn.Parameter(vec.detach().clone())
    settings = OptimizerSettings(name="apollo", weight_decay=0.1, betas=(0.8, 0.99), eps=1e-6)
    ours = build_optimizer([("vec", vec), ("mat", mat)], settings, 3e-2, 0)
    ref = torch.optim.AdamW([twin], lr=3e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        grad = torch.randn(32, generator=g)
        vec.grad, twin.grad, mat.grad = grad.clone(), grad.clone(), torch.randn(16, 32, generator=g)
        ours.step()
        ref.step()
    assert torch.equal(vec, twin)
    assert torch.equal(ours.state[vec]["exp_avg_sq"], ref.state[twin]["exp_avg_sq"])


def _one_step_ratio(shape, scale_type) -> tuple[torch.Tensor, torch.Tensor]:
    """Δw / g after one step from a fixed gradient: the per-element learning
    rate (float64, so that Δw is exact to far below the tolerances)."""
    g = torch.Generator().manual_seed(5)
    w = torch.nn.Parameter(torch.randn(*shape, generator=g, dtype=torch.float64))
    w0 = w.detach().clone()
    w.grad = torch.randn(*shape, generator=g, dtype=torch.float64)
    settings = OptimizerSettings(name="apollo", rank=3, scale_type=scale_type, norm_growth_limit=None)
    build_optimizer([("w", w)], settings, 0.1, 0).step()
    return (w.detach() - w0) / w.grad, w.grad


@pytest.mark.parametrize("shape", [(24, 6), (6, 24)])
def test_channel_scaling_is_one_factor_per_channel_of_the_larger_dimension(shape):
    ratio, _ = _one_step_ratio(shape, "channel")
    channel_dim = 0 if shape[0] >= shape[1] else 1  # the dimension that keeps its channels
    per_channel = ratio.mean(dim=1 - channel_dim, keepdim=True)  # (m, 1) or (1, n)
    assert per_channel.shape[channel_dim] == max(shape)
    torch.testing.assert_close(ratio, per_channel.expand_as(ratio), rtol=1e-5, atol=0)
    assert per_channel.std() > 1e-3 * per_channel.abs().mean()  # the channels do differ
    assert (ratio < 0).all()  # a descent step


@pytest.mark.parametrize("shape", [(24, 6), (6, 24)])
def test_tensor_scaling_is_one_factor_for_the_matrix(shape):
    ratio, _ = _one_step_ratio(shape, "tensor")
    torch.testing.assert_close(ratio, torch.full_like(ratio, ratio.mean().item()), rtol=1e-5, atol=0)


def test_scaling_factor_is_the_projected_adam_norm_ratio_times_sqrt_scale():
    """First step by hand: with bias correction, R̃ = R / (|R| + ε), so the
    tensor-wise factor is ‖R̃‖ / ‖R‖ and the update is lr · √scale · factor · G."""
    g = torch.Generator().manual_seed(2)
    w = torch.nn.Parameter(torch.randn(20, 5, generator=g))
    w0 = w.detach().clone()
    w.grad = torch.randn(20, 5, generator=g)
    settings = OptimizerSettings(name="apollo_mini", rank=2, norm_growth_limit=None)
    opt = build_optimizer([("w", w)], settings, 0.01, 11)
    opt.step()
    P = random_projection(opt.state[w]["proj_seed"], 0, 2, 5)  # (r, n), n = 5 is the smaller dim
    R = w.grad @ P.T  # (20, 2)
    R_tilde = R / (R.abs() + 1e-8)
    expected = w0 - 0.01 * 128**0.5 * (R_tilde.norm() / R.norm()) * w.grad
    torch.testing.assert_close(w.detach(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", APOLLOS)
def test_apollo_minimises_a_small_regression(name):
    model = tiny_model()
    losses = train(model, apollo(model, name=name, lr=3e-3 if name == "apollo_mini" else 1e-2), 150)
    assert losses[-1] < losses[0] / 10


def test_apollo_mini_fits_a_small_classification():
    torch.manual_seed(0)
    x = torch.randn(128, 16)
    labels = (x[:, :4].sum(dim=1) > 0).long() + (x[:, 4] > 0).long()  # 3 classes
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 3))
    opt = apollo(model, lr=3e-3)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    accuracy = (model(x).argmax(dim=1) == labels).float().mean().item()
    assert accuracy > 0.9


@pytest.mark.parametrize("name", ["apollo", "apollo_mini", "adamw"])
def test_weight_decay_is_decoupled(name):
    """With decay, the weights are the no-decay weights minus lr·λ·w: the
    decay never enters the moments (decoupled, not an L2 term in the gradient)."""
    results = {}
    for wd in (0.0, 0.5):
        model = tiny_model()
        opt = build_optimizer(model.named_parameters(), OptimizerSettings(name=name, weight_decay=wd), 1e-2, 0)
        before = params_of(model)
        train(model, opt, 1)
        results[wd] = (before, params_of(model))
    before, plain = results[0.0]
    _, decayed = results[0.5]
    for w0, a, b in zip(before, plain, decayed):
        torch.testing.assert_close(b, a - 1e-2 * 0.5 * w0, rtol=0, atol=1e-6)


def test_weight_decay_alone_shrinks_a_weight_with_zero_gradient():
    w = torch.nn.Parameter(torch.ones(6, 4))
    opt = build_optimizer([("w", w)], OptimizerSettings(weight_decay=0.1), 0.5, 0)
    for _ in range(3):
        w.grad = torch.zeros_like(w)
        opt.step()
    torch.testing.assert_close(w.detach(), torch.full((6, 4), (1 - 0.05) ** 3))
    assert opt.state[w]["exp_avg"].abs().sum() == 0


def _update_norms(gamma: float | None) -> list[float]:
    """Update norms for gradients G, -G, -G, -G, ...: the moments cancel on the
    flip, then the update grows fast as the new sign builds up."""
    g = torch.Generator().manual_seed(4)
    w = torch.nn.Parameter(torch.randn(12, 6, generator=g, dtype=torch.float64))
    G = torch.randn(12, 6, generator=g, dtype=torch.float64)
    opt = build_optimizer([("w", w)], OptimizerSettings(name="apollo", rank=2, norm_growth_limit=gamma), 1e-2, 0)
    norms = []
    for t in range(6):
        before = w.detach().clone()
        w.grad = G.clone() if t == 0 else -G
        opt.step()
        norms.append((w.detach() - before).norm().item())
    return norms


def test_norm_growth_limiter_caps_the_update_norm_ratio():
    free = _update_norms(None)
    assert max(b / a for a, b in zip(free, free[1:])) > 2  # without it, the update jumps
    limited = _update_norms(1.01)
    ratios = [b / a for a, b in zip(limited, limited[1:])]
    assert max(ratios) <= 1.01 * (1 + 1e-6)
    assert any(r == pytest.approx(1.01, rel=1e-6) for r in ratios)  # the cap is active
