"""Honest measures of a merge: trim loss apart from conflict loss, and a headline in words.

Each node is scored under four models: the base, base + w·τ (**alone**),
base + w·own_trim(τ) (**trimmed**: the same sparsification the merge applies
to this node, :func:`traitgraph.linker.merging.own_trim.own_trim`), and the
**linked** checkpoint. With directed gains g (sign(w) × gain over the base)::

    kept          = g_linked / g_alone      what the whole merge kept of the node
    kept_by_trim  = g_trimmed / g_alone     what its own trim kept (trim loss = 1 − this)
    kept_by_merge = g_linked / g_trimmed    what combining with the others kept (conflict loss)

A ratio is undefined (``None``) when its denominator is not positive.
:mod:`traitgraph.evaluate.kept_words` turns a report into the first lines of
``report.md``: the mean kept, and what was lost, in words.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and the linker load only when scoring (up-to-date checks stay fast)
    import torch

    from traitgraph.linker.merging import MergeOptions


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when the denominator is not positive (nothing to keep).

    >>> ratio(1.0, 4.0), ratio(1.0, 0.0), ratio(None, 2.0)
    (0.25, None, None)
    """
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def trimmed_vector(path: Path, options: MergeOptions, node_id: str, n_nodes: int) -> dict[str, torch.Tensor]:
    """Every tensor of the τ file at ``path`` after the merge's own sparsification for ``node_id``."""
    from traitgraph.compiler.task_vector import open_task_vector
    from traitgraph.linker.merging.own_trim import own_trim

    with open_task_vector(path) as tv:
        return {name: own_trim(options, tv.get_tensor(name), name, node_id, n_nodes) for name in tv.keys()}  # noqa: SIM118 (a safetensors handle)


@contextlib.contextmanager
def tensors_applied(model, layers: Sequence[tuple[dict[str, torch.Tensor], float]]) -> Iterator[None]:
    """``W += α·τ`` for each ``(tensors, α)`` inside the block; the weights are copied back after."""
    import torch

    params = dict(model.named_parameters())
    touched = {name for tensors, _ in layers for name in tensors}
    unknown = sorted(touched - set(params))
    if unknown:
        from traitgraph.errors import BuildError

        raise BuildError(f"task vector tensor '{unknown[0]}' is not a parameter of the model being evaluated")
    saved = {name: params[name].detach().clone() for name in touched}
    try:
        with torch.no_grad():
            for tensors, alpha in layers:
                for name, tau in tensors.items():
                    params[name].add_(tau.to(params[name].dtype), alpha=alpha)
        yield
    finally:
        with torch.no_grad():
            for name, tensor in saved.items():
                params[name].copy_(tensor)


def score_trimmed(
    load_base,
    spec,
    order: list[str],
    vectors: dict[str, Path],
    lock,
    memo_dir: Path,
    fingerprint: str,
    alone: dict[str, list] | None = None,
) -> dict[str, list]:
    """Each node's eval-case scores under base + (its dependencies, untrimmed) + w·own_trim(τ);
    ``load_base()`` gives the base ``(model, tokenizer)``, asked for only when a score is not remembered.

    For a method whose own trim is τ itself (task arithmetic, Iso-C, Iso-CTS) that model is the
    node alone, so ``alone`` (each node's eval cases first, as the alone scores are) is reused.
    Otherwise remembered (like the *alone* scores) under the vector's hash, its weight and the
    settings the trim reads (not λ: a sweep over λ scores each trim once).
    """
    from traitgraph.evaluate.inputs import canonical as _canonical
    from traitgraph.evaluate.memo import ScoreMemo
    from traitgraph.evaluate.scorer import ModelScorer
    from traitgraph.evaluate.scorer import case_item as _case_item
    from traitgraph.linker.merging import MergeOptions
    from traitgraph.linker.merging.own_trim import KEEPS_EVERY_ENTRY, TRIM_SETTINGS

    by_id = {n.id: n for n in lock.nodes}
    if alone is not None and lock.merge.method in KEEPS_EVERY_ENTRY:
        return {n: alone[n][: len(spec.nodes[n].spec.eval)] for n in order}
    options = MergeOptions.from_settings(lock.merge)
    dumped = lock.merge.model_dump(mode="json", by_alias=True)
    settings = {k: dumped[k] for k in TRIM_SETTINGS}
    out: dict[str, list] = {}
    for n in order:
        deps = [d for d in spec.dependencies(n) if d in by_id]
        recipe = [[by_id[d].vector_sha256 for d in deps], by_id[n].vector_sha256, by_id[n].weight, settings, len(order)]
        memo = ScoreMemo(memo_dir, f"trimmed {fingerprint} {_canonical(recipe)}")
        cases = spec.nodes[n].spec.eval
        if memo.has_all("case", [_case_item(c) for c in cases]):
            out[n] = ModelScorer(None, None, memo).cases(cases)
            continue
        model, tokenizer = load_base()
        layers = [(_all_tensors(vectors[d]), 1.0) for d in deps]
        layers.append((trimmed_vector(vectors[n], options, n, len(order)), by_id[n].weight))
        with tensors_applied(model, layers):
            out[n] = ModelScorer(model, tokenizer, memo).cases(cases)
        memo.save()
    return out


def _all_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def with_trimmed(node, trimmed_cases: Sequence | None):
    """``node`` (a NodeResult) with its trimmed score, gain and the two kept ratios filled in."""
    from traitgraph.evaluate.results import _measure
    from traitgraph.evaluate.results import model_score as _model_score

    if trimmed_cases is None or node.measure == "none" or node.base is None:
        return node
    trimmed = _model_score(trimmed_cases)
    gain = _measure(trimmed, node.measure) - _measure(node.base, node.measure)
    directed = {
        k: None if g is None else node.direction * g
        for k, g in (("alone", node.gain_alone), ("trimmed", gain), ("linked", node.gain_linked))
    }
    return node.model_copy(
        update={
            "trimmed": trimmed,
            "gain_trimmed": gain,
            "kept_by_trim": ratio(directed["trimmed"], directed["alone"]),
            "kept_by_merge": ratio(directed["linked"], directed["trimmed"]),
        }
    )
