"""TSV-M, Iso-C, Iso-CTS, DELLA and Model Breadcrumbs against their authors' code.

Each ``ref_*`` below is a line-by-line transcription into numpy (float64) of
the published reference implementation, never a call into traitgraph:

* TSV-M: ``compute_and_sum_svd_mem_reduction`` in AntoAndGar/task_singular_vectors,
  src/utils/TSVM_utils.py (the method the paper calls TSV-M).
* Iso-C, Iso-CTS: ``iso_c`` and ``iso_cts`` in danielm1405/iso-merging, src/utils/iso.py.
* Breadcrumbs, DELLA: mergekit's ``magnitude_outliers`` and ``della_magprune``
  (mergekit/sparsify.py) and the ``merge_group`` of its generalized task arithmetic.

The references take the weighted task vectors w_i τ_i (the papers have no
node weights; ours multiply τ_i before merging) and the merged vector is
scaled by λ, as the papers' α. Agreement is to 1e-5 on random tensors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from traitgraph.errors import UserError
from traitgraph.graph.schema import MergeSettings
from traitgraph.linker.merging import (
    MergeOptions,
    TensorMerge,
    breadcrumbs,
    breadcrumbs_ties,
    della,
    iso_c,
    iso_cts,
    merge_whole,
    tsv_m,
)
from traitgraph.linker.merging.dare import uniform_draws
from traitgraph.linker.merging.della import keep_probabilities

ATOL = 1e-5


def randn(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def weighted_np(taus, weights):
    return [t.double().numpy() * w for t, w in zip(taus, weights)]


# --------------------------------------------------------------------------- references (transcriptions)


def ref_tsv_m(vectors, alpha=1.0):
    """compute_and_sum_svd_mem_reduction, one key."""
    sv_reduction = 1 / len(vectors)
    if vectors[0].ndim != 2:
        new = vectors[0].copy()
        for i, vec in enumerate(vectors[1:], start=1):
            new += (vec - new) / (i + 1)
        return alpha * new
    for i, vec in enumerate(vectors):
        u, s, v = np.linalg.svd(vec, full_matrices=False)
        if i == 0:
            sum_u, sum_s, sum_v = np.zeros_like(u), np.zeros_like(s), np.zeros_like(v)
        r = int(s.shape[0] * sv_reduction)
        sum_u[:, i * r : (i + 1) * r] = u[:, :r]
        sum_s[i * r : (i + 1) * r] = s[:r]
        sum_v[i * r : (i + 1) * r, :] = v[:r, :]
    u_u, _, v_u = np.linalg.svd(sum_u, full_matrices=False)
    u_v, _, v_v = np.linalg.svd(sum_v, full_matrices=False)
    return alpha * np.linalg.multi_dot((u_u, v_u, np.diag(sum_s), u_v, v_v))


def ref_iso_c(vectors, alpha=1.0):
    """iso_c, one key."""
    new = sum(vectors) / len(vectors)
    if vectors[0].ndim == 2:
        new = new * len(vectors)
        u, s, v = np.linalg.svd(new, full_matrices=False)
        new = np.linalg.multi_dot((u, np.diag(np.ones_like(s) * s.mean()), v))
    return alpha * new


def ref_iso_cts(vectors, common_space_fraction=0.8, alpha=1.0):
    """iso_cts, one key."""
    shape_ = vectors[0].shape
    if len(shape_) != 2:
        new = vectors[0].copy()
        for i, vec in enumerate(vectors[1:], start=1):
            new += (vec - new) / (i + 1)
        return alpha * new
    n = len(vectors)
    combined_w = sum(vectors)
    common = int(min(shape_) * common_space_fraction)
    task_total = round((min(shape_) - common) / n) * n
    common = min(shape_) - task_total
    u, s, v = np.linalg.svd(combined_w, full_matrices=False)
    cu, cs, cv = u[:, :common], s[:common], v[:common, :]
    per_task = int((min(shape_) - common) / n)
    for i, w in enumerate(vectors):
        w_ts = w - cu @ cu.T @ w
        u_ts, s_ts, v_ts = np.linalg.svd(w_ts, full_matrices=False)
        if i == 0:
            su, ss, sv = np.zeros_like(u_ts), np.zeros_like(s_ts), np.zeros_like(v_ts)
        su[:, i * per_task : (i + 1) * per_task] = u_ts[:, :per_task]
        ss[i * per_task : (i + 1) * per_task] = s_ts[:per_task]
        sv[i * per_task : (i + 1) * per_task, :] = v_ts[:per_task, :]
    su[:, n * per_task : n * per_task + common] = cu
    ss[n * per_task : n * per_task + common] = cs
    sv[n * per_task : n * per_task + common, :] = cv
    a, _, b = np.linalg.svd(su, full_matrices=False)
    su = a @ b
    a, _, b = np.linalg.svd(sv, full_matrices=False)
    sv = a @ b
    ss = np.ones_like(ss) * ss.mean()
    return alpha * np.linalg.multi_dot((su, np.diag(ss), sv))


def ref_magnitude_outliers(tensor, density, gamma):
    """mergekit sparsify.magnitude_outliers (no rescale); a stable sort, as ours."""
    if density >= 1:
        return tensor
    num = tensor.size
    target_n = int(density * num)
    n_top = int(gamma * num)
    n_bot = max(0, num - target_n - n_top)
    indices = np.argsort(np.abs(tensor).reshape(-1), kind="stable")
    mask = np.zeros(num)
    mask[indices[n_bot : n_bot + target_n]] = 1
    return tensor * mask.reshape(tensor.shape)


def ref_della_magprune(tensor, density, epsilon, draws):
    """mergekit sparsify.della_magprune with rescale l1; ``torch.bernoulli(probs)`` is ``draws < probs``."""
    if density >= 1:
        return tensor
    orig_shape = tensor.shape
    t = tensor.reshape(1, -1) if tensor.ndim < 2 else tensor
    ranks = np.argsort(np.argsort(np.abs(t), axis=1, kind="stable"), axis=1, kind="stable") + 1.0
    mn, mx = ranks.min(axis=1, keepdims=True), ranks.max(axis=1, keepdims=True)
    rank_norm = np.clip((ranks - mn) / (mx - mn), 0, 1)
    probs = (density - epsilon) + rank_norm * 2 * epsilon
    mask = (draws.reshape(t.shape) < probs).astype(np.float64)
    masked = t * mask
    before, after = np.abs(t).sum(), np.abs(masked).sum()
    if not (before < 1e-7 or after < 1e-7):
        masked = masked * (before / after)
    return masked.reshape(orig_shape)


def ref_generalized(deltas, weights, consensus, normalize, lam):
    """mergekit GeneralizedTaskArithmeticMerge.merge_group after sparsification."""
    deltas = np.stack(deltas)
    w = np.array(weights, dtype=np.float64).reshape((-1,) + (1,) * (deltas.ndim - 1))
    deltas = deltas * w
    if consensus:
        sign = np.sign(deltas)
        majority = (deltas.sum(axis=0) >= 0) * 2.0 - 1
        mask = sign == majority
        mixed = (deltas * mask).sum(axis=0)
        divisor = (w * mask).sum(axis=0)
        divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(axis=0)
        divisor = w.sum(axis=0)
        divisor[np.abs(divisor) < 1e-8] = 1
    if normalize:
        mixed = mixed / divisor
    return mixed * lam


def close(ours: torch.Tensor, ref: np.ndarray) -> bool:
    return ours.dtype == torch.float32 and np.allclose(ours.double().numpy(), ref, rtol=0, atol=ATOL)


# --------------------------------------------------------------------------- the SVD methods

SHAPES = [(48, 30), (30, 48), (36,)]  # tall, wide, and a 1-D tensor (the mean)
WEIGHTS = [[1.0, 0.6, 1.4], [0.8, -0.5, 1.2]]  # a negative weight must still subtract


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weights", WEIGHTS)
def test_tsv_m_equals_the_authors_code(shape, weights):
    taus = [randn(*shape, seed=s, scale=0.1) for s in range(3)]
    assert close(tsv_m(taus, weights, lambda_=0.7), ref_tsv_m(weighted_np(taus, weights), alpha=0.7))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weights", WEIGHTS)
def test_iso_c_equals_the_authors_code(shape, weights):
    taus = [randn(*shape, seed=s, scale=0.1) for s in range(3)]
    assert close(iso_c(taus, weights, lambda_=1.3), ref_iso_c(weighted_np(taus, weights), alpha=1.3))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("fraction", [0.8, 0.5])
def test_iso_cts_equals_the_authors_code(shape, weights, fraction):
    taus = [randn(*shape, seed=s, scale=0.1) for s in range(3)]
    ours = iso_cts(taus, weights, lambda_=1.1, common_space_fraction=fraction)
    assert close(ours, ref_iso_cts(weighted_np(taus, weights), fraction, alpha=1.1))


def test_tsv_m_of_one_vector_is_that_vector_and_a_negative_weight_subtracts():
    tau = randn(20, 12, seed=3)
    assert torch.allclose(tsv_m([tau], [1.0]), tau, atol=1e-5)
    assert torch.allclose(tsv_m([tau], [-0.5]), -0.5 * tau, atol=1e-5)
    # orthogonal tasks (disjoint rows and columns) are added unchanged
    a, b = torch.zeros(20, 12), torch.zeros(20, 12)
    a[:10, :6], b[10:, 6:] = randn(10, 6, seed=1), randn(10, 6, seed=2)
    assert torch.allclose(tsv_m([a, b], [1.0, 1.0]), a + b, atol=1e-5)


def test_tsv_m_of_low_rank_tasks_is_well_defined():
    """Tasks of rank 2 < r: their near-null singular directions carry no weight and must not
    rotate the others (the reference's output moves by ~1e-4 under a 1e-12 perturbation here)."""
    g = torch.Generator().manual_seed(0)
    taus = [
        torch.randn(40, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 30, generator=g, dtype=torch.float64)
        for _ in range(3)
    ]
    nudged = [t + 1e-12 * torch.randn(t.shape, generator=g, dtype=torch.float64) for t in taus]
    assert torch.allclose(tsv_m(taus, [1.0, 0.6, 1.4]), tsv_m(nudged, [1.0, 0.6, 1.4]), rtol=0, atol=1e-6)
    a, b = torch.zeros(20, 12), torch.zeros(20, 12)  # orthogonal low-rank tasks add unchanged
    a[:10, :6] = randn(10, 2, seed=1) @ randn(2, 6, seed=2)
    b[10:, 6:] = randn(10, 1, seed=3) @ randn(1, 6, seed=4)
    assert torch.allclose(tsv_m([a, b], [1.0, 1.0]), a + b, atol=1e-5)


def test_iso_c_flattens_the_spectrum_and_keeps_the_subspace():
    taus = [randn(24, 16, seed=s) for s in range(2)]
    total = taus[0] * 0.7 - taus[1] * 0.3
    merged = iso_c(taus, [0.7, -0.3])
    s = torch.linalg.svdvals(merged)
    assert torch.allclose(s, torch.full_like(s, float(torch.linalg.svdvals(total).mean())), atol=1e-5)
    u = torch.linalg.svd(total, full_matrices=False).U
    assert torch.allclose(u @ (u.T @ merged), merged, atol=1e-5)  # the sum's column space


def test_iso_c_with_a_rank_flattens_only_the_top_directions():
    taus = [randn(24, 16, seed=s) for s in range(2)]
    total = taus[0] * 0.7 - taus[1] * 0.3
    merged = iso_c(taus, [0.7, -0.3], rank=5)
    s = torch.linalg.svdvals(merged)
    top = torch.linalg.svdvals(total)[:5]
    assert torch.allclose(s[:5], torch.full((5,), float(top.mean())), atol=1e-4)
    assert float(s[5:].abs().max()) < 1e-4  # rank 5 exactly
    u = torch.linalg.svd(total, full_matrices=False).U[:, :5]
    assert torch.allclose(u @ (u.T @ merged), merged, atol=1e-5)  # the sum's top-5 column space
    assert torch.allclose(iso_c(taus, [0.7, -0.3], rank=16), iso_c(taus, [0.7, -0.3]), atol=1e-5)


# --------------------------------------------------------------------------- sparsifying methods


@pytest.mark.parametrize("shape", [(40, 25), (300,)])
@pytest.mark.parametrize("density, gamma", [(0.3, 0.01), (0.5, 0.1), (0.9, 0.2)])
def test_breadcrumbs_equals_mergekit_formula(shape, density, gamma):
    taus = [randn(*shape, seed=s) for s in range(3)]
    w = [0.7, -0.4, 1.1]
    trimmed = [ref_magnitude_outliers(t.double().numpy(), density, gamma) for t in taus]
    ours = breadcrumbs(taus, w, density, gamma, lambda_=0.9)
    assert close(ours, ref_generalized(trimmed, w, consensus=False, normalize=False, lam=0.9))
    ours = breadcrumbs_ties(taus, w, density, gamma, lambda_=0.9, normalize="none")
    assert close(ours, ref_generalized(trimmed, w, consensus=True, normalize=False, lam=0.9))


def test_breadcrumbs_drops_the_largest_and_the_smallest():
    tau = torch.arange(1.0, 101.0)  # |τ| = 1 … 100
    kept = breadcrumbs([tau], [1.0], density=0.5, gamma=0.1).nonzero().reshape(-1) + 1
    assert kept.tolist() == list(range(41, 91))  # the 10 largest and the 40 smallest are gone


@pytest.mark.parametrize("shape", [(40, 25), (300,)])
@pytest.mark.parametrize("density, epsilon", [(0.3, 0.15), (0.6, 0.3)])
def test_della_equals_mergekit_formula(shape, density, epsilon):
    taus = [randn(*shape, seed=s) for s in range(3)]
    w, seeds = [0.7, -0.4, 1.1], [21, 22, 23]
    draws = [uniform_draws(taus[0].numel(), s).double().numpy() for s in seeds]  # the Bernoulli draws
    pruned = [ref_della_magprune(t.double().numpy(), density, epsilon, d) for t, d in zip(taus, draws)]
    ours = della(taus, w, density, epsilon, lambda_=1.2, normalize="signed_weights", seeds=seeds)
    assert close(ours, ref_generalized(pruned, w, consensus=True, normalize=True, lam=1.2))


def test_della_equals_mergekit_own_function_given_the_same_draws(monkeypatch):
    import mergekit.sparsify as sparsify

    tau = randn(30, 20, seed=5)
    draws = uniform_draws(tau.numel(), 9).reshape(30, 20)
    monkeypatch.setattr(sparsify.torch, "bernoulli", lambda probs: (draws < probs).to(probs.dtype))
    theirs = sparsify.della_magprune(tau, density=0.4, epsilon=0.2, rescale_norm=sparsify.RescaleNorm.l1)
    monkeypatch.undo()
    ours = della([tau], [1.0], 0.4, 0.2, normalize="none", seeds=[9])
    assert torch.allclose(ours, theirs, rtol=0, atol=ATOL)


def test_della_keeps_big_entries_more_often_at_the_mean_density():
    tau = randn(200, 500, seed=4)
    probs = keep_probabilities(tau, 0.3, 0.2)
    assert probs.mean().item() == pytest.approx(0.3, abs=1e-3)
    assert probs.min().item() == pytest.approx(0.1) and probs.max().item() == pytest.approx(0.5)
    kept = della([tau], [1.0], 0.3, 0.2, rescale=False, seeds=[1]) != 0
    big = tau.abs() > tau.abs().median()
    assert kept[big].float().mean() > kept[~big].float().mean() + 0.1
    assert kept.float().mean().item() == pytest.approx(0.3, abs=0.01)


def test_della_epsilon_out_of_range_is_a_spec_error():
    with pytest.raises(ValueError, match="lower epsilon"):
        MergeSettings(method="della", density=0.1, epsilon=0.15)
    with pytest.raises(UserError, match="choose epsilon < 0.1"):
        MergeOptions("della", density=0.1, epsilon=0.15)


def test_a_rank_outside_iso_c_is_a_spec_error():
    with pytest.raises(ValueError, match="rank applies to method iso_c only, not ties"):
        MergeSettings(method="ties", rank=8)
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        MergeSettings(method="iso_c", rank=0)
    assert MergeOptions.from_settings(MergeSettings(method="iso_c", rank=8)).rank == 8


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize("method", ["della", "breadcrumbs", "breadcrumbs_ties"])
def test_a_missing_input_is_a_zero_vector_for_the_sparsifying_methods(method):
    taus = [randn(16, 12, seed=s, scale=0.1) for s in range(3)]
    opts = MergeOptions(method, density=0.4, lambda_=0.8, normalize="count")
    with_zero = merge_whole(opts, [taus[0], None, taus[2]], [1.0, 0.5, -0.7], seeds=[1, 2, 3])
    explicit = merge_whole(opts, [taus[0], torch.zeros(16, 12), taus[2]], [1.0, 0.5, -0.7], seeds=[1, 2, 3])
    assert with_zero.shape == (16, 12) and torch.equal(with_zero, explicit)


@pytest.mark.parametrize("method", ["tsv_m", "iso_c", "iso_cts"])
@pytest.mark.parametrize("shape", [(16, 12), (12,)])
def test_a_missing_input_takes_no_share_in_the_svd_methods(method, shape):
    taus = [randn(*shape, seed=s, scale=0.1) for s in range(3)]
    opts = MergeOptions(method, lambda_=0.8)
    with_none = merge_whole(opts, [taus[0], None, taus[2]], [1.0, 0.5, -0.7])
    assert torch.equal(with_none, merge_whole(opts, [taus[0], taus[2]], [1.0, -0.7]))
    if method == "tsv_m" and len(shape) == 2:  # a zero task would still claim a third of the rank
        zero = merge_whole(opts, [taus[0], torch.zeros(shape), taus[2]], [1.0, 0.5, -0.7])
        assert not torch.allclose(with_none, zero, atol=1e-3)


def test_tensor_merge_refuses_the_whole_tensor_methods():
    with pytest.raises(ValueError, match="needs whole tensors"):
        TensorMerge(MergeOptions("tsv_m"), [1.0], numel=4)


# --------------------------------------------------------------------------- through the linker


@pytest.mark.parametrize("method", ["della", "breadcrumbs_ties", "tsv_m", "iso_cts"])
def test_linked_checkpoint_is_base_plus_the_pure_merge_whatever_the_chunk_size(
    method, tiny_base_dir, tmp_path, monkeypatch
):
    from safetensors.torch import load_file

    import traitgraph.linker.link as link_module
    from traitgraph.linker.link import LinkInput, link_checkpoint
    from traitgraph.linker.merging import derive_seed

    from conftest import save_vector

    base = load_file(tiny_base_dir / "model.safetensors")
    names = ("a", "b")
    taus = {
        n: {k: randn(*v.shape, seed=i, scale=0.01) for k, v in base.items() if "norm" not in k or n == "a"}
        for i, n in enumerate(names)
    }
    inputs = []
    for n, w in zip(names, (0.9, -0.6)):
        save_vector(tmp_path / f"{n}.safetensors", taus[n], n)
        inputs.append(LinkInput(n, tmp_path / f"{n}.safetensors", w))
    settings = MergeSettings(method=method, density=0.4, lambda_=0.8)
    whole = link_checkpoint(tiny_base_dir, inputs, settings, tmp_path / "whole", progress=False)
    monkeypatch.setattr(link_module, "CHUNK_ELEMENTS", 300)  # many chunks per tensor
    assert link_checkpoint(tiny_base_dir, inputs, settings, tmp_path / "chunked", progress=False) == whole
    out = load_file(tmp_path / "whole" / "model.safetensors")
    options = MergeOptions.from_settings(settings)
    for name, w0 in base.items():
        parts = [taus[n].get(name) for n in names]
        seeds = [derive_seed(options.seed, name, n) for n in names]
        expected = w0 + merge_whole(options, parts, [0.9, -0.6], seeds=seeds)
        assert torch.allclose(out[name], expected, rtol=0, atol=1e-6), name
