"""Evaluate a build: behaviour per node, retention, merge interference, gates.

The ``eval`` doit task (:func:`eval_task`) runs after ``link``. It scores
three kinds of model, loading the base once:

* the **base**;
* **alone**: the base plus one node's weighted task vector ``w·τ`` (and, for a
  node that ``refines`` others, the parents' vectors it was trained on top
  of), applied in place and restored exactly after the node;
* the **linked** checkpoint ``OUT/checkpoint``, loaded with
  ``AutoModelForCausalLM.from_pretrained``.

Scores of the base and of each "alone" model are a pure function of the
weights and the data, so they are remembered in ``<cache>/eval/`` keyed by
the base fingerprint and the task vectors' sha256: after a one-node change
only that node and the linked checkpoint are scored again.

The pieces live in their own modules: :mod:`~traitgraph.evaluate.threads`
(how many threads), :mod:`~traitgraph.evaluate.inputs` (what a report depends
on), :mod:`~traitgraph.evaluate.memo` and :mod:`~traitgraph.evaluate.scorer`
(remembered scores of one model), :mod:`~traitgraph.evaluate.results`
(scores into report values); this module runs them in order.

The report is written before the gates are applied, so a failed build can be
looked at (``OUT/report.md``). The task is up to date when ``report.json``
passed and records exactly the current inputs (:func:`eval_inputs`).

>>> report = evaluate_build(BuildPlan.load("specs", "out"))   # doctest: +SKIP
>>> report.passed                                               # doctest: +SKIP
True
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traitgraph import __version__
from traitgraph.builder.plan import BuildPlan, log_event, remove_outputs
from traitgraph.errors import BuildError
from traitgraph.evaluate import inputs as _inputs
from traitgraph.evaluate import results as _results
from traitgraph.evaluate import scorer as _scorer
from traitgraph.evaluate import threads as _threads
from traitgraph.evaluate.behaviour_tests import BehaviourTestReport, answer_tests, behaviour_tests_of_build
from traitgraph.evaluate.honest import score_trimmed, with_trimmed
from traitgraph.evaluate.inputs import (  # noqa: F401  (re-exported: importable from here as before)
    SCORING_VERSION,
    canonical,
    eval_inputs,
    general_prompts,
    general_text_file,
    graph_picture,
    read_build_lock,
    report_is_current,
)
from traitgraph.evaluate.joint import joint_reference_cases, with_joint
from traitgraph.evaluate.memo import ScoreMemo
from traitgraph.evaluate.report import (
    FIGURES_DIR,
    REPORT_JSON,
    REPORT_MD,
    EvalReport,
    Gate,
    check_gates,
    gate_failure_message,
    print_summary,
    write_report,
)
from traitgraph.evaluate.results import (  # noqa: F401  (node_result re-exported)
    measure_interference,
    node_result,
    retention,
    samples_by_node,
    scored_cases,
    training_traces,
    with_ood,
)
from traitgraph.evaluate.scorer import ModelScorer, case_item, reply_item
from traitgraph.evaluate.threads import EVAL_THREADS_ENV, eval_threads, torch_threads  # noqa: F401
from traitgraph.faults import fault_point

# The private helpers this module held before it was split, under their old names, so that code
# written against the old run.py keeps working; new code imports them from their modules.
_idle_fraction, _torch_threads = _threads.idle_fraction, _threads.torch_threads
_shipped, _sha256_text, _canonical = _inputs.shipped, _inputs.sha256_text, _inputs.canonical
_general_text_hash, _graph_picture = _inputs.general_text_hash, _inputs.graph_picture
_case_item, _pack, _unpack = _scorer.case_item, _scorer._pack, _scorer._unpack
_model_score, _measure, _case_value = _results.model_score, _results._measure, _results._case_value
_prompt_text, _training_traces = _results.prompt_text, _results.training_traces
_interference = _results.measure_interference

#: Sample generations per node in the report (its first eval prompts).
SAMPLES_PER_NODE = 2
#: New tokens for a general-prompt answer (the shipped prompts were checked at 24).
PROMPT_NEW_TOKENS = 24


class _Clock:
    def __init__(self, progress: bool):
        self.progress = progress
        self.start = time.perf_counter()
        self.timings: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        t0 = time.perf_counter()
        if self.progress:
            print(f"eval: {name} ...", flush=True)
        yield
        self.timings[name] = round(time.perf_counter() - t0, 2)

    @property
    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 2)


@dataclass
class _Work:
    """What every phase of one evaluation reads: the build as locked, and the data to score on."""

    plan: BuildPlan
    lock: Any
    inputs: dict[str, Any]
    order: list[str]
    vectors: dict[str, Path]
    lines: list[str]
    prompts: list[dict[str, str]]
    sample_cases: dict[str, list]
    tests: Any = None
    notes: list[str] = field(default_factory=list)

    @property
    def by_id(self) -> dict[str, Any]:
        return {n.id: n for n in self.lock.nodes}

    @property
    def memo_dir(self) -> Path:
        return self.plan.cache.root / "eval"

    def cases(self, node_id: str) -> list:
        """The node's eval cases, then its ood cases (:func:`~traitgraph.evaluate.results.with_ood` splits them)."""
        return scored_cases(self.plan.spec, node_id)

    def prompt_chats(self) -> list[list[dict[str, str]]]:
        return [[{"role": "user", "content": p["prompt"]}] for p in self.prompts]

    def sample_chats(self) -> list[list[dict[str, str]]]:
        return [c.chat() for n in self.order for c in self.sample_cases[n]]


@dataclass
class _ModelScores:
    """One model's scores: each node's cases, general text, general answers and sample replies."""

    cases: dict[str, list]
    text: Any
    answers: list[str]
    samples: list[str]
    tests: Any = None


def _gather(plan: BuildPlan) -> _Work:
    from traitgraph.compiler.data import load_general_text

    spec = plan.spec
    lock = read_build_lock(plan)
    inputs = eval_inputs(plan, lock)
    if not plan.out.checkpoint.is_dir():
        raise BuildError(f"the lock file names a checkpoint at {plan.out.checkpoint}, which does not exist; relink it")
    locked = {n.id: n for n in lock.nodes}
    order = [n for n in spec.build_order() if n in locked]
    work = _Work(
        plan=plan,
        lock=lock,
        inputs=inputs,
        order=order,
        vectors={n: plan.cache.verify(locked[n].training_hash) for n in order},
        lines=load_general_text(general_text_file(spec)),
        prompts=general_prompts(),
        sample_cases={n: list(spec.nodes[n].spec.eval[:SAMPLES_PER_NODE]) for n in order},
    )
    work.tests = behaviour_tests_of_build(
        spec, order, work.prompts, spec.personality.eval.max_new_tokens, PROMPT_NEW_TOKENS
    )
    skipped = sorted(set(spec.nodes) ^ set(locked))
    if skipped:
        work.notes.append(
            f"the specs and the last build disagree on nodes {', '.join(skipped)}, which are not "
            "scored; run `traitgraph build` to evaluate the current specs"
        )
    return work


def _score_model(scorer: ModelScorer, work: _Work) -> _ModelScores:
    max_new_tokens = work.plan.spec.personality.eval.max_new_tokens
    return _ModelScores(
        cases={n: scorer.cases(work.cases(n)) for n in work.order},
        text=scorer.text(work.lines),
        answers=scorer.replies(work.prompt_chats(), PROMPT_NEW_TOKENS),
        samples=scorer.replies(work.sample_chats(), max_new_tokens),
        tests=answer_tests(work.tests, scorer.replies),
    )


class _BaseOnDemand:
    """The base model, loaded the first time a score is not remembered (a relinked build whose
    base and node scores are all in the memo never loads it)."""

    def __init__(self, reference):
        self.reference = reference
        self._pair = None

    def get(self):
        """``(model, tokenizer)``."""
        if self._pair is None:
            from traitgraph.compiler.base_model import load_model

            self._pair = load_model(self.reference)
        return self._pair


def _load_base(work: _Work) -> tuple[_BaseOnDemand, str]:
    from traitgraph.compiler.base_model import resolve_base

    base_ref = resolve_base(work.lock.base.reference, work.plan.spec.specs_dir)
    if base_ref.fingerprint != work.lock.base.fingerprint:
        raise BuildError(
            f"base '{work.lock.base.reference}' now has fingerprint {base_ref.fingerprint[:19]}, but the build "
            f"was linked on {work.lock.base.fingerprint[:19]}; rebuild"
        )
    return _BaseOnDemand(base_ref), base_ref.fingerprint


@dataclass
class _AloneScores:
    """Each node under base + w·τ alone: its cases' scores and its own behaviour tests."""

    cases: dict[str, list]
    tests: list


def _score_alone(base: _BaseOnDemand, fingerprint: str, work: _Work) -> _AloneScores:
    """Each node's cases and own tests under base + w·τ (on top of the parents it refines),
    remembered by the recipe: the base is loaded only for a node whose scores are not."""
    from traitgraph.evaluate.scores import vectors_applied

    by_id, out = work.by_id, _AloneScores(cases={}, tests=[])
    for n in work.order:
        weight = by_id[n].weight
        deps = [d for d in work.plan.spec.dependencies(n) if d in by_id]  # trained on top of these (weight 1)
        applied = [(work.vectors[d], 1.0) for d in deps] + [(work.vectors[n], weight)]
        recipe = [[by_id[d].vector_sha256, 1.0] for d in deps] + [[by_id[n].vector_sha256, weight]]
        memo = ScoreMemo(work.memo_dir, f"alone {fingerprint} {canonical(recipe)}")
        cases, tests = work.cases(n), [t for t in work.tests if t.group == n]
        remembered = memo.has_all("case", [case_item(c) for c in cases]) and memo.has_all(
            "reply", [reply_item(t.messages(), t.max_new_tokens) for t in tests]
        )
        if remembered:
            scores, results = _scores_and_tests(ModelScorer(None, None, memo), cases, tests)
        else:
            model, tokenizer = base.get()
            with vectors_applied(model, applied):
                scores, results = _scores_and_tests(ModelScorer(model, tokenizer, memo), cases, tests)
            memo.save()
        out.cases[n] = scores
        out.tests += results
    return out


def _scores_and_tests(scorer: ModelScorer, cases: list, tests: list) -> tuple[list, list]:
    """One model's scores on a node's cases and its results on the node's behaviour tests."""
    return scorer.cases(cases), answer_tests(tests, scorer.replies)


def _score_references(
    base: _BaseOnDemand, fingerprint: str, work: _Work, clock: _Clock, alone: dict[str, list]
) -> dict[str, dict]:
    """Each node under its own merge trim alone, and (``eval.joint_reference``) under the joint model."""
    from traitgraph.compiler.base_model import resolve_base

    with clock.phase("score each node trimmed"):  # the merge's own trim of each node, alone
        trimmed = score_trimmed(
            base.get, work.plan.spec, work.order, work.vectors, work.lock, work.memo_dir, fingerprint, alone
        )
    joint: dict[str, list] = {}
    if work.plan.spec.personality.eval.joint_reference:
        with clock.phase("joint reference"):
            base_ref = resolve_base(work.lock.base.reference, work.plan.spec.specs_dir)
            model, tokenizer = base.get()
            joint = joint_reference_cases(work.plan, model, tokenizer, work.order, work.memo_dir, base_ref, work.notes)
    return {"trimmed": trimmed, "joint": joint}


def _load_linked(plan: BuildPlan):
    from traitgraph.compiler.base_model import ResolvedBase, load_model

    return load_model(ResolvedBase(reference=str(plan.out.checkpoint), path=plan.out.checkpoint, fingerprint=""))


def _assemble(
    work: _Work,
    base: _ModelScores,
    alone: _AloneScores,
    linked: _ModelScores,
    interference,
    clock: _Clock,
    extra: dict[str, dict[str, list]],
) -> EvalReport:
    """The report from every model's scores (``extra``: trimmed and joint-reference case scores)."""
    spec, settings, by_id = work.plan.spec, work.plan.spec.personality.eval, work.by_id
    samples = samples_by_node(work.sample_cases, base.samples, linked.samples)
    traces = training_traces(work.vectors, work.notes)
    nodes = [
        with_ood(spec, n, by_id[n].weight, base.cases[n], alone.cases[n], linked.cases[n], samples[n], traces[n])
        for n in work.order
    ]
    nodes = [with_joint(with_trimmed(n, extra["trimmed"].get(n.id)), extra["joint"].get(n.id)) for n in nodes]
    kept = retention(
        general_text_file(spec), work.lines, base.text, linked.text, work.prompts, base.answers, linked.answers
    )
    tests = BehaviourTestReport(base=base.tests, alone=alone.tests, built=linked.tests)
    gates = check_gates(settings, nodes, kept) + [
        Gate(name=g.name, passed=g.passed, message=g.message) for g in tests.gates(settings)
    ]
    return EvalReport(
        traitgraph_version=__version__,
        personality=spec.personality.name,
        base=work.lock.base.reference,
        checkpoint=str(work.plan.out.checkpoint),
        settings=settings,
        inputs=work.inputs,
        graph=graph_picture(spec),
        nodes=nodes,
        retention=kept,
        interference=interference,
        consolidation=consolidation_record(work.plan.out.checkpoint),
        tests=tests,
        gates=gates,
        passed=all(g.passed for g in gates),
        seconds=clock.seconds,
        timings=clock.timings,
        notes=work.notes,
    )


def evaluate_build(plan: BuildPlan, *, threads: int | None = None, progress: bool = True) -> EvalReport:
    """Score the last build in ``plan.out`` against the current specs' eval cases.

    The checkpoint and the task vectors are the ones the lock file records;
    the eval cases, settings and general data are the current ones. Nothing
    is written (see :func:`run_eval` for the report and the gates).
    """
    threads = threads or eval_threads()
    if progress:
        print(f"eval: {threads} torch thread{'s' if threads != 1 else ''}", flush=True)
    with torch_threads(threads):
        return _evaluate(plan, progress).model_copy(update={"threads": threads})


def consolidation_record(checkpoint: Path) -> dict[str, Any] | None:
    """The link's ``consolidation.json`` in the checkpoint (a lock output), or None."""
    import json

    from traitgraph.builder.consolidation import CONSOLIDATION_FILE

    path = checkpoint / CONSOLIDATION_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _evaluate(plan: BuildPlan, progress: bool) -> EvalReport:
    clock = _Clock(progress)
    work = _gather(plan)
    base_model, fingerprint = _load_base(work)
    with clock.phase("score base"):
        scorer = ModelScorer(None, None, ScoreMemo(work.memo_dir, f"base {fingerprint}"), loader=base_model.get)
        base = _score_model(scorer, work)
        scorer.memo.save()
    with clock.phase("score each node alone"):
        alone = _score_alone(base_model, fingerprint, work)
    extra = _score_references(base_model, fingerprint, work, clock, alone.cases)
    del base_model, scorer
    with clock.phase("load linked checkpoint"):
        model, tokenizer = _load_linked(plan)
    with clock.phase("score linked"):
        linked = _score_model(ModelScorer(model, tokenizer), work)
    del model
    with clock.phase("interference"):
        by_id = work.by_id
        interference = measure_interference(
            {n: (work.vectors[n], by_id[n].weight) for n in work.order},
            {n: by_id[n].vector_sha256 for n in work.order},
            work.lock.merge.density,
            ScoreMemo(work.memo_dir, "interference"),
            work.notes,
        )
    return _assemble(work, base, alone, linked, interference, clock, extra)


def run_eval(plan: BuildPlan, *, threads: int | None = None, progress: bool = True) -> EvalReport:
    """Evaluate, write the report (figures, report.md, report.json), print the tables,
    then apply the gates: a budget exceeded is a :class:`BuildError` naming what fell short."""
    from traitgraph.linker.model_card import write_model_card

    fault_point("eval")  # linked and locked, no report yet
    report = evaluate_build(plan, threads=threads, progress=progress)
    report = write_report(report, plan.out.root)
    write_model_card(plan.out.root, plan.spec)  # the card shows the new results
    print(print_summary(report))
    print(f"report: {plan.out.root / REPORT_MD}")
    log_event(
        plan.out, "eval", seconds=report.seconds, passed=report.passed, failed=[g.name for g in report.failures()]
    )
    if not report.passed:
        raise BuildError(gate_failure_message(report, plan.out.root))
    return report


def eval_task(plan: BuildPlan) -> dict[str, Any]:
    """The ``eval`` doit task: after ``link``; up to date when the last report passed on the same inputs."""
    from traitgraph.builder.tasks import task_action

    return {
        "basename": "eval",
        "doc": f"score behaviour and retention of {plan.out.checkpoint}, write {plan.out.root / REPORT_MD}, apply the gates",
        "actions": [task_action(run_eval, plan)],
        "task_dep": ["link"],
        "uptodate": [lambda: report_is_current(plan)],
        "clean": [lambda: remove_outputs(*(plan.out.root / name for name in (REPORT_MD, REPORT_JSON, FIGURES_DIR)))],
        "verbosity": 2,
    }
