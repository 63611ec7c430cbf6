"""Honest measures of a merge: trim loss apart from conflict loss, and a headline in words.

Each node is scored under four models: the base, base + w·τ (**alone**),
base + w·own_trim(τ) (**trimmed**: the same sparsification the merge applies
to this node, :func:`traitgraph.linker.merging.own_trim.own_trim`), and the
**linked** checkpoint. With directed gains g (sign(w) × gain over the base)::

    kept          = g_linked / g_alone      what the whole merge kept of the node
    kept_by_trim  = g_trimmed / g_alone     what its own trim kept (trim loss = 1 − this)
    kept_by_merge = g_linked / g_trimmed    what combining with the others kept (conflict loss)

A ratio is undefined (``None``) when its denominator is not positive.
:func:`headline` turns a report into the first lines of ``report.md``: the
mean kept, and what was lost, in words.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


def score_trimmed(model, tokenizer, spec, order: list[str], vectors: dict[str, Path], lock, memo_dir: Path,
                  fingerprint: str) -> dict[str, list]:
    """Each node's eval-case scores under base + (its dependencies, untrimmed) + w·own_trim(τ).

    Remembered (like the *alone* scores) under the vector's hash, its weight and the merge settings.
    """
    from traitgraph.evaluate.run import ModelScorer, ScoreMemo, _canonical, _case_item
    from traitgraph.linker.merging import MergeOptions

    by_id = {n.id: n for n in lock.nodes}
    options = MergeOptions.from_settings(lock.merge)
    settings = lock.merge.model_dump(mode="json", by_alias=True)
    out: dict[str, list] = {}
    for n in order:
        deps = [d for d in spec.dependencies(n) if d in by_id]
        recipe = [[by_id[d].vector_sha256 for d in deps], by_id[n].vector_sha256, by_id[n].weight, settings, len(order)]
        memo = ScoreMemo(memo_dir, f"trimmed {fingerprint} {_canonical(recipe)}")
        cases = spec.nodes[n].spec.eval
        if memo.has_all("case", [_case_item(c) for c in cases]):
            out[n] = ModelScorer(None, None, memo).cases(cases)
            continue
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
    from traitgraph.evaluate.run import _measure, _model_score

    if trimmed_cases is None or node.measure == "none" or node.base is None:
        return node
    trimmed = _model_score(trimmed_cases)
    gain = _measure(trimmed, node.measure) - _measure(node.base, node.measure)
    directed = {k: None if g is None else node.direction * g
                for k, g in (("alone", node.gain_alone), ("trimmed", gain), ("linked", node.gain_linked))}
    return node.model_copy(update={
        "trimmed": trimmed, "gain_trimmed": gain,
        "kept_by_trim": ratio(directed["trimmed"], directed["alone"]),
        "kept_by_merge": ratio(directed["linked"], directed["trimmed"]),
    })


def mean_kept(nodes: Sequence) -> float | None:
    """The mean of the nodes' ``kept`` (over those where it is defined)."""
    values = [n.kept for n in nodes if n.kept is not None]
    return sum(values) / len(values) if values else None


def headline(report) -> list[str]:
    """The first lines of report.md: mean kept, the trim and merge shares, and what was lost, in words."""
    lines = []
    kept = mean_kept(report.nodes)
    if kept is None:
        lines.append("**Kept**: not measured (no node moved as intended on its own).")
    else:
        per_node = ", ".join(f"{n.id} {n.kept:.2f}" for n in report.nodes if n.kept is not None)
        lines.append(f"**Mean kept: {kept:.2f}** of each node's own effect survives the merge ({per_node}).")
    trims = [n.kept_by_trim for n in report.nodes if getattr(n, "kept_by_trim", None) is not None]
    merges = [n.kept_by_merge for n in report.nodes if getattr(n, "kept_by_merge", None) is not None]
    if trims and merges:
        lines.append(f"Its own trim keeps {sum(trims) / len(trims):.2f} of a node's effect on average; combining "
                     f"with the other nodes keeps {sum(merges) / len(merges):.2f} of what the trim left.")
    joint = [n.kept_of_joint for n in report.nodes if getattr(n, "kept_of_joint", None) is not None]
    if joint:
        lines.append(f"Against the joint reference (one model trained on every positive node's examples), the build "
                     f"keeps {sum(joint) / len(joint):.2f} of its gain on average.")
    lines.append(lost_in_words(report.retention))
    return lines


def kept_table(report) -> list[str]:
    """Per node: directed gains alone, trimmed and linked, and the three kept ratios (markdown)."""
    rows = [n for n in report.nodes if n.measure != "none"]
    if not rows:
        return []
    lines = ["| node | gain alone | gain trimmed | gain linked | kept by trim | kept by merge | kept |",
             "|---|---|---|---|---|---|---|"]

    def cell(v, fmt):
        return "–" if v is None else format(v, fmt)

    for n in rows:
        directed = [None if g is None else n.direction * g for g in (n.gain_alone, n.gain_trimmed, n.gain_linked)]
        lines.append(f"| {n.id} | " + " | ".join(cell(g, "+.2f") for g in directed) + " | "
                     + " | ".join(cell(k, ".2f") for k in (n.kept_by_trim, n.kept_by_merge, n.kept)) + " |")
    return lines


def prompts_gate_message(retention, allowed: int) -> str:
    """The general-prompts gate's message, naming the first prompts lost.

    >>> from types import SimpleNamespace as R
    >>> prompts_gate_message(R(lost=[R(prompt="Capital of France?", answer="Paris")]), 0)
    'retention: lost 1 general prompt(s) the base answers > budget 0 (Capital of France? -> Paris)'
    """
    lost = retention.lost
    named = ", ".join(f"{p.prompt} -> {p.answer}" for p in lost[:3]) + (", ..." if len(lost) > 3 else "")
    verdict = "<=" if len(lost) <= allowed else ">"
    return f"retention: lost {len(lost)} general prompt(s) the base answers {verdict} budget {allowed}" + (
        f" ({named})" if lost else "")


def lost_in_words(retention) -> str:
    """What the build forgot, as a sentence."""
    answered = sum(p.base_ok for p in retention.prompts)
    lost = retention.lost
    change = retention.change_pct
    text = f"General-text loss {'rose' if change >= 0 else 'fell'} {abs(change):.2f}%"
    if not lost:
        return f"**Lost: nothing.** The build still answers all {answered} general prompts the base answers; {text[0].lower() + text[1:]}."
    items = "; ".join(f"\"{p.prompt}\" (expected {p.answer})" for p in lost[:5]) + ("; ..." if len(lost) > 5 else "")
    return f"**Lost: {len(lost)} of {answered} general prompts** the base answers: {items}. {text}."


__all__: list[Any] = [
    "headline",
    "kept_table",
    "lost_in_words",
    "mean_kept",
    "prompts_gate_message",
    "ratio",
    "score_trimmed",
    "tensors_applied",
    "trimmed_vector",
    "with_trimmed",
]
