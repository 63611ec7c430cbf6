"""Putting scores together into the report's values: per-node results, retention, samples, traces.

Pure functions of scores that were already computed (no model here), apart
from reading the task vectors' metadata and measuring their interference.

>>> from traitgraph.evaluate.scores import CaseScore, ResponseScore
>>> model_score([CaseScore(ResponseScore(2.0, 4), ResponseScore(6.0, 4))]).margin
4.0
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from traitgraph.errors import BuildError, UserError
from traitgraph.evaluate.memo import ScoreMemo
from traitgraph.evaluate.report import (
    CaseRow,
    Interference,
    ModelScore,
    NodeResult,
    PromptResult,
    Retention,
    Sample,
    TrainingTrace,
)
from traitgraph.graph import Spec
from traitgraph.graph.schema import EvalCase


def model_score(scores: Sequence) -> ModelScore:
    """One node's case scores under one model, averaged."""
    wanted_nll = sum(s.wanted.nll for s in scores)
    wanted_tokens = sum(s.wanted.tokens for s in scores)
    margins = [s.margin for s in scores if s.margin is not None]
    return ModelScore(
        loss=wanted_nll / max(wanted_tokens, 1),
        logprob=sum(s.wanted.logprob for s in scores) / len(scores),
        margin=sum(margins) / len(margins) if margins else None,
        win_rate=sum(m > 0 for m in margins) / len(margins) if margins else None,
    )


def _measure(score: ModelScore, measure: str) -> float:
    return score.margin if measure == "margin" else score.logprob  # type: ignore[return-value]


def _case_value(s) -> float:
    return s.margin if s.margin is not None else s.wanted.logprob


def prompt_text(case) -> str:
    """What the user said in an eval case."""
    return case.context if case.context is not None else case.messages[-1].content


def node_result(
    spec: Spec,
    node_id: str,
    weight: float,
    base: Sequence,
    alone: Sequence,
    linked: Sequence,
    samples: list[Sample],
    training: TrainingTrace | None,
    cases: Sequence[EvalCase] | None = None,
) -> NodeResult:
    """One node's behaviour score from its cases' scores under the three models
    (``cases``: its ``eval`` cases unless given, e.g. its ``ood`` cases)."""
    node = spec.nodes[node_id].spec
    cases = node.eval if cases is None else cases
    direction = 1 if weight > 0 else -1
    common = dict(
        id=node_id,
        description=node.description.strip(),
        weight=weight,
        direction=direction,
        n_cases=len(cases),
        n_contrastive=sum(c.rejected is not None for c in cases),
        samples=samples,
        training=training,
    )
    if not cases:
        return NodeResult(measure="none", **common)
    measure = "margin" if common["n_contrastive"] else "logprob"
    scores = {k: model_score(v) for k, v in (("base", base), ("alone", alone), ("linked", linked))}
    gain_alone = _measure(scores["alone"], measure) - _measure(scores["base"], measure)
    gain_linked = _measure(scores["linked"], measure) - _measure(scores["base"], measure)
    directed_alone = direction * gain_alone
    return NodeResult(
        measure=measure,
        **common,
        **scores,
        gain_alone=gain_alone,
        gain_linked=gain_linked,
        kept=(direction * gain_linked) / directed_alone if directed_alone > 0 else None,
        cases=[
            CaseRow(
                prompt=prompt_text(c),
                has_rejected=c.rejected is not None,
                base=_case_value(b),
                alone=_case_value(a),
                linked=_case_value(li),
            )
            for c, b, a, li in zip(cases, base, alone, linked, strict=True)
        ],
    )


def scored_cases(spec: Spec, node_id: str) -> list[EvalCase]:
    """A node's ``eval`` cases then its ``ood`` cases: scored in one pass, split by :func:`with_ood`."""
    node = spec.nodes[node_id].spec
    return [*node.eval, *node.ood]


def with_ood(
    spec: Spec,
    node_id: str,
    weight: float,
    base: Sequence,
    alone: Sequence,
    linked: Sequence,
    samples: list[Sample],
    training: TrainingTrace | None,
) -> NodeResult:
    """The node's result on its eval cases, with its ``ood`` cases' result attached."""
    node = spec.nodes[node_id].spec
    k = len(node.eval)
    result = node_result(spec, node_id, weight, base[:k], alone[:k], linked[:k], samples, training)
    if not node.ood:
        return result
    ood = node_result(spec, node_id, weight, base[k:], alone[k:], linked[k:], [], None, cases=node.ood)
    return result.model_copy(update={"ood": ood})


def samples_by_node(sample_cases: dict[str, list], base: list[str], built: list[str]) -> dict[str, list[Sample]]:
    """Split the flat lists of sample replies back into each node's samples, in order."""
    out: dict[str, list[Sample]] = {}
    i = 0
    for node_id, cases in sample_cases.items():
        out[node_id] = [
            Sample(prompt=prompt_text(c), base=base[i + k], built=built[i + k]) for k, c in enumerate(cases)
        ]
        i += len(cases)
    return out


def retention(
    text_path: Path | None, lines: list[str], base_text, linked_text, prompts, base_answers, linked_answers
) -> Retention:
    """General-text loss and general-prompt answers of the base and of the built model."""
    from traitgraph.evaluate.scores import contains_answer

    return Retention(
        text_source="shipped" if text_path is None else str(text_path),
        lines=len(lines),
        tokens=base_text.tokens,
        base_loss=base_text.loss,
        linked_loss=linked_text.loss,
        prompts=[
            PromptResult(
                prompt=p["prompt"],
                answer=p["answer"],
                base_output=b,
                built_output=li,
                base_ok=contains_answer(b, p["answer"]),
                built_ok=contains_answer(li, p["answer"]),
            )
            for p, b, li in zip(prompts, base_answers, linked_answers)
        ],
    )


def training_traces(vectors: dict[str, Path], notes: list[str]) -> dict[str, TrainingTrace | None]:
    """Each node's training record from its τ metadata; unreadable ones make one note."""
    from traitgraph.compiler.task_vector import read_task_vector_meta

    traces: dict[str, TrainingTrace | None] = {}
    failed: list[tuple[str, BuildError]] = []
    for node_id, path in vectors.items():
        try:
            meta = read_task_vector_meta(path)
        except BuildError as exc:
            traces[node_id] = None
            failed.append((node_id, exc))
            continue
        traces[node_id] = TrainingTrace(
            steps=meta.steps,
            final_loss=meta.final_loss,
            oscillation=meta.oscillation,
            loss_curve=list(meta.loss_curve),
            monitor=meta.monitor,
        )
    if failed:
        notes.append(f"no loss curve for {', '.join(n for n, _ in failed)}: {failed[0][1]}")
    return traces


def remembered_trims(memo: ScoreMemo, shas: dict[str, str], density: float, names: list[str]) -> dict:
    """Each vector's trims fitted by an earlier evaluation (by its sha256 and the density), as
    :func:`~traitgraph.linker.interference.interference` takes them."""
    from traitgraph.linker.merging.ties import MagnitudeTrim

    trims = {}
    for name in names:
        stored = memo.get("trims", [shas[name], density]) or {}
        trims[name] = {t: MagnitudeTrim(threshold, ties, keep_all) for t, (threshold, ties, keep_all) in stored.items()}
    return trims


def remember_trims(memo: ScoreMemo, shas: dict[str, str], density: float, trims: dict) -> None:
    """Keep each vector's trims for the next evaluation (see :func:`remembered_trims`)."""
    for name, fitted in trims.items():
        stored = {t: [trim.threshold, trim.ties_left, trim.keep_all] for t, trim in fitted.items()}
        if memo.get("trims", [shas[name], density]) != stored:
            memo.put("trims", [shas[name], density], stored)


def measure_interference(
    vectors: dict[str, tuple[Path, float]], shas: dict[str, str], density: float, memo: ScoreMemo, notes: list[str]
) -> Interference | None:
    """Pairwise cosine, trim overlap and sign conflict of the weighted vectors (the linker's measure),
    remembered by the vectors' sha256, the signs of their weights and the density (the three measures
    do not change with a weight's size, so a sweep over weights measures them once). A failure is a
    note, not a failed evaluation."""
    from traitgraph.linker.interference import interference

    if len(vectors) < 2:
        return None

    def compute(items):
        trims = remembered_trims(memo, shas, density, list(vectors))
        result = interference(
            {n: p for n, (p, _) in vectors.items()},
            density=density,
            weights={n: w for n, (_, w) in vectors.items()},
            trims=trims,
        )
        remember_trims(memo, shas, density, trims)
        return [Interference.from_result(result).model_dump(mode="json")]

    recipe = [[n, shas[n], 1 if w >= 0 else -1] for n, (_, w) in vectors.items()] + [density]
    try:
        (value,) = memo.lookup("interference", [recipe], compute)
    except UserError as exc:
        notes.append(f"interference not measured: {exc}")
        return None
    memo.save()
    return Interference.model_validate(value)
