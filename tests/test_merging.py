"""The merge methods' maths: hand-made answers, identities, and the reference implementations.

PEFT's ``ties`` and mergekit's generalized task arithmetic are called on the
same tensors; with their options our functions must agree to float32 rounding.
"""

from __future__ import annotations

import re
import typing

import pytest
import torch

from traitgraph.errors import UserError
from traitgraph.graph.schema import MergeMethodName, MergeSettings
from traitgraph.linker.merging import (
    METHODS,
    MagnitudeTrim,
    MergeOptions,
    TensorMerge,
    dare_linear,
    dare_ties,
    derive_seed,
    get_method,
    keep_count,
    keep_mask,
    task_arithmetic,
    ties,
    trim,
)

from conftest import require_reference

T = torch.tensor


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- hand-made answers


def test_ties_sign_election_and_disjoint_mean_by_hand():
    a = T([3.0, -1.0, 2.0, 0.0])
    b = T([-1.0, -2.0, 2.0, 0.0])
    c = T([-1.0, 4.0, -1.0, 0.0])
    # votes sum to [1, 1, 3, 0]: + everywhere (0 elects +); keep only the agreeing entries:
    # entry 0: a alone (3); entry 1: c alone (4); entry 2: a and b, mean 2; entry 3: nobody.
    assert torch.equal(ties([a, b, c], [1.0, 1.0, 1.0], density=1.0), T([3.0, 4.0, 2.0, 0.0]))


def test_ties_vote_tied_at_zero_elects_plus():
    assert torch.equal(ties([T([1.0]), T([-1.0])], [1.0, 1.0], density=1.0), T([1.0]))


@pytest.mark.parametrize(
    "normalize, expected", [("count", 7.0), ("weights", 3.5), ("signed_weights", 3.5), ("none", 14.0)]
)
def test_ties_divisors(normalize, expected):
    # w·τ = 2 and 12 agree: count 2, Σ|w| = Σw = 4, none 1
    out = ties([T([2.0]), T([4.0])], [1.0, 3.0], density=1.0, normalize=normalize)
    assert out.item() == pytest.approx(expected)


def test_weighted_vote_sees_what_a_negative_weight_pushes():
    # A pushes +2, B (weight −1, τ=+1) pushes −1: they conflict; the weighted vote keeps A.
    a, b = T([2.0]), T([1.0])
    assert ties([a, b], [1.0, -1.0], density=1.0, sign_vote="weighted").item() == 2.0
    # The unweighted vote sees two positive τ, calls them agreeing and averages +2 and −1.
    assert ties([a, b], [1.0, -1.0], density=1.0, sign_vote="unweighted").item() == 0.5


def test_trim_keeps_exactly_k_breaking_ties_by_position():
    assert torch.equal(trim(T([1.0, -1.0, 1.0, 1.0]), 0.5), T([1.0, -1.0, 0.0, 0.0]))
    assert torch.equal(trim(T([0.1, -5.0, 0.3, 2.0]), 0.5), T([0.0, -5.0, 0.0, 2.0]))
    assert int((trim(randn(10), 0.01) != 0).sum()) == 1  # max(1, ⌊d·n⌋), as mergekit


def test_trim_in_chunks_equals_whole_with_many_ties():
    tau = randn(300, seed=3).to(torch.bfloat16).to(torch.float32)  # bf16 rounding: many equal magnitudes
    whole = trim(tau, 0.37)
    fit = MagnitudeTrim.fit(tau.abs(), 0.37)
    chunked = torch.cat([fit.apply(tau[i : i + 7]) for i in range(0, 300, 7)])
    assert torch.equal(whole, chunked)
    assert int((whole != 0).sum()) == int(0.37 * 300)


@pytest.mark.parametrize("n", [(1 << 16) + 3, (1 << 21) + 7])  # sizes where the sampled bracket is used
@pytest.mark.parametrize("kind", ["normal", "bf16 ties", "sparse"])
def test_large_tensor_threshold_is_exact(kind, n):
    x = randn(n, seed=5).abs()
    if kind == "bf16 ties":
        x = x.to(torch.bfloat16).to(torch.float32)
    if kind == "sparse":
        x[: n * 9 // 10] = 0  # fewer nonzeros than k: the threshold is 0
    k = keep_count(n, 0.2)
    fit = MagnitudeTrim.fit(x, 0.2)
    assert fit.threshold == torch.kthvalue(x, n - k + 1).values.item()
    assert int((x > fit.threshold).sum()) + fit.ties_left == k


# --------------------------------------------------------------------------- identities


CHUNKED = sorted(m for m in METHODS if not METHODS[m].whole)  # the whole-tensor methods: test_merge_methods.py


@pytest.mark.parametrize("method", CHUNKED)
def test_density_one_single_vector_is_lambda_tau(method):
    tau = randn(5, 7)
    delta = get_method(method).function(
        [tau], [1.0], **({} if method == "task_arithmetic" else {"density": 1.0}), lambda_=0.5
    )
    assert torch.equal(delta, tau * 0.5)


def test_default_ties_subtracts_a_lone_negative_vector():
    tau = randn(40)
    delta = ties([tau], [-0.5], density=1.0)  # the defaults: weighted vote, count
    assert torch.equal(delta, -0.5 * tau)
    # mergekit's formula (signed weights) divides −0.5·τ by −0.5: the behaviour is *added*.
    assert torch.equal(ties([tau], [-0.5], density=1.0, normalize="signed_weights"), tau)
    # Σ|w| keeps the direction but not the strength.
    assert torch.equal(ties([tau], [-0.5], density=1.0, normalize="weights"), -tau)


def test_schema_defaults_are_the_ones_that_subtract():
    s = MergeSettings()
    assert (s.sign_vote, s.normalize) == ("weighted", "count")


def test_twin_vectors_cancel_under_task_arithmetic():
    tau = randn(3, 4)
    assert torch.equal(task_arithmetic([tau, tau], [1.0, -1.0]), torch.zeros(3, 4))


def test_every_spec_method_is_registered_with_a_paper():
    assert set(typing.get_args(MergeMethodName)) == set(METHODS)
    for m in METHODS.values():
        assert re.fullmatch(r"\S.* (19|20)\d\d, arXiv \d{4}\.\d{5}", m.paper), m.paper  # authors year, arXiv id
    with pytest.raises(UserError, match="unknown merge method 'slerp'"):
        get_method("slerp")


def test_linear_methods_ignore_the_disjoint_mean_divisor():
    opts = MergeOptions.from_settings(MergeSettings(method="task_arithmetic", normalize="count"))
    assert opts.normalize == "none"
    assert MergeOptions.from_settings(MergeSettings(method="ties", normalize="weights")).normalize == "weights"


# --------------------------------------------------------------------------- DARE


def test_dare_mask_is_seeded_stable_and_chunk_independent():
    n = (1 << 20) + 12345  # crosses a random block
    mask = keep_mask(n, 0.3, seed=7)
    assert torch.equal(mask, keep_mask(n, 0.3, seed=7))
    assert not torch.equal(mask, keep_mask(n, 0.3, seed=8))
    assert torch.equal(torch.cat([keep_mask(n, 0.3, 7, 0, 1000), keep_mask(n, 0.3, 7, 1000, n)]), mask)
    assert mask.float().mean().item() == pytest.approx(0.3, abs=0.005)
    # The seed derivation is part of the reproducibility guarantee: pin it.
    assert derive_seed(0, "w", "a") == 6815986407253315206


def test_dare_rescales_to_keep_the_expected_value():
    tau = torch.ones(200_000)
    out = dare_linear([tau], [1.0], density=0.25, seed=1)
    assert set(out.unique().tolist()) == {0.0, 4.0}
    assert out.mean().item() == pytest.approx(1.0, abs=0.02)


def test_dare_ties_elects_on_the_dropped_vectors():
    a, b = randn(64, seed=1), randn(64, seed=2)
    seeds = [11, 22]
    dropped = [torch.where(keep_mask(64, 0.5, s), t / 0.5, 0.0) for t, s in zip((a, b), seeds)]
    expected = ties(dropped, [1.0, 0.5], density=1.0)
    assert torch.equal(dare_ties([a, b], [1.0, 0.5], 0.5, seeds=seeds), expected)


# --------------------------------------------------------------------------- streaming = whole


@pytest.mark.parametrize("method", CHUNKED)
@pytest.mark.parametrize(
    "sign_vote, normalize", [("weighted", "count"), ("unweighted", "count"), ("weighted", "signed_weights")]
)
def test_tensor_merge_in_chunks_equals_the_pure_function(method, sign_vote, normalize):
    taus = [randn(37, 11, seed=s) for s in range(3)]
    taus[2][5:20] = 0  # a sparse vector
    weights, densities, seeds = [0.8, -0.6, 1.1], [0.2, 0.5, 0.35], [5, 6, 7]
    opts = MergeOptions(method, lambda_=0.9, sign_vote=sign_vote, normalize=normalize)
    fn = get_method(method).function
    kwargs: dict = {"lambda_": 0.9}
    if method != "task_arithmetic":
        kwargs["density"] = densities
    if get_method(method).consensus:
        kwargs.update(sign_vote=sign_vote, normalize=normalize)
    if method.startswith("dare"):
        kwargs["seeds"] = seeds
    whole = fn(taus, weights, **kwargs)

    merge = TensorMerge(
        opts if get_method(method).consensus else MergeOptions(method, lambda_=0.9, normalize="none"),
        weights,
        numel=37 * 11,
        densities=densities,
        seeds=seeds,
    )
    if merge.needs_magnitudes:
        for i, t in enumerate(taus):
            merge.fit(i, t.abs())
    flat = [t.reshape(-1) for t in taus]
    chunks = [merge.merge_chunk([f[s : s + 50] for f in flat], s) for s in range(0, 37 * 11, 50)]
    assert torch.allclose(torch.cat(chunks), whole.reshape(-1), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- references


@pytest.mark.parametrize("weights", [[0.7, 1.3, 0.4], [1.0, -0.5, 0.8], [-1.0, -0.3, 2.0]])
@pytest.mark.parametrize("density", [0.1, 0.5, 1.0])
def test_equals_peft_ties(weights, density):
    merge_utils = require_reference("peft.utils.merge_utils")
    taus = [randn(48, 40, seed=s) for s in range(3)]
    ours = ties(taus, weights, density, sign_vote="unweighted", normalize="count")
    ref = (
        merge_utils.ties(taus, torch.tensor(weights), density)
        if density < 1
        else _peft_no_warning(merge_utils, taus, weights)
    )
    assert torch.allclose(ours, ref, rtol=0, atol=1e-6)


def _peft_no_warning(merge_utils, taus, weights):
    with pytest.warns(UserWarning, match="no pruning"):
        return merge_utils.ties(taus, torch.tensor(weights), 1.0)


def test_equals_peft_task_arithmetic():
    merge_utils = require_reference("peft.utils.merge_utils")
    taus = [randn(30, seed=s) for s in range(3)]
    w = [0.5, -1.0, 2.0]
    assert torch.allclose(task_arithmetic(taus, w), merge_utils.task_arithmetic(taus, torch.tensor(w)), atol=1e-6)


def _mergekit(method, base, taus, weights, densities, **params):
    merge_methods = require_reference("mergekit.merge_methods")
    n = len(taus)
    parameters = {
        "weight": {i + 1: weights[i] for i in range(n)},
        "density": {i + 1: densities[i] for i in range(n)},
        **params,
    }
    return merge_methods.merge_tensors([base] + [base + t for t in taus], method, base_index=0, parameters=parameters)


@pytest.mark.parametrize("normalize", [True, False])
def test_equals_mergekit_ties_positive_weights(normalize):
    base = randn(64, 48, seed=9)
    taus = [randn(64, 48, seed=s) * 0.1 for s in range(3)]
    w, d = [0.7, 1.3, 0.4], [0.3, 0.5, 0.2]
    ref = _mergekit("ties", base, taus, w, d, normalize=normalize, **{"lambda": 0.8})
    for ours_normalize in ["weights", "signed_weights"] if normalize else ["none"]:
        ours = base + ties(taus, w, d, lambda_=0.8, sign_vote="weighted", normalize=ours_normalize)
        assert torch.allclose(ours, ref, rtol=0, atol=1e-6)


def test_equals_mergekit_ties_with_negative_weights_signed_divisor():
    base = randn(64, 48, seed=9)
    taus = [randn(64, 48, seed=s) * 0.1 for s in range(3)]
    w, d = [0.7, -1.3, 0.4], [0.3, 0.5, 0.2]
    ref = _mergekit("ties", base, taus, w, d, normalize=True)
    ours = base + ties(taus, w, d, sign_vote="weighted", normalize="signed_weights")
    assert torch.allclose(ours, ref, rtol=1e-6, atol=1e-5)  # Σw can nearly cancel: amplified rounding
    # …and mergekit flips a lone negative vector: delta = +τ.
    lone = _mergekit("ties", base, taus[:1], [-1.0], [1.0], normalize=True)
    assert torch.allclose(lone - base, taus[0], atol=1e-6)


@pytest.mark.parametrize("normalize", [True, False])
def test_equals_mergekit_task_arithmetic(normalize):
    base = randn(20, 30, seed=4)
    taus = [randn(20, 30, seed=s) * 0.1 for s in range(3)]
    w = [0.7, -0.2, 0.4]
    ref = _mergekit("task_arithmetic", base, taus, w, [1.0] * 3, normalize=normalize, **{"lambda": 1.2})
    ours = base + task_arithmetic(taus, w, lambda_=1.2, normalize="signed_weights" if normalize else "none")
    assert torch.allclose(ours, ref, rtol=0, atol=1e-6)
