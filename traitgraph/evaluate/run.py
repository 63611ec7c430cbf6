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

The report is written before the gates are applied, so a failed build can be
looked at (``OUT/report.md``). The task is up to date when ``report.json``
passed and records exactly the current inputs (:func:`eval_inputs`).

>>> report = evaluate_build(BuildPlan.load("specs", "out"))   # doctest: +SKIP
>>> report.passed
True
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from traitgraph import __version__
from traitgraph.atomic import sha256_file, write_text_atomic
from traitgraph.builder.plan import BuildPlan, log_event, remove_outputs
from traitgraph.errors import BuildError, UserError
from traitgraph.evaluate.report import (
    FIGURES_DIR,
    REPORT_JSON,
    REPORT_MD,
    CaseRow,
    EvalReport,
    GraphPicture,
    Interference,
    ModelScore,
    NodeResult,
    PromptResult,
    Retention,
    Sample,
    TrainingTrace,
    check_gates,
    gate_failure_message,
    print_summary,
    read_report,
    write_report,
)
from traitgraph.graph import Spec
from traitgraph.graph.schema import EvalCase

#: Bump when scoring changes what a number means: remembered scores and reports are redone.
SCORING_VERSION = 1
#: torch threads for evaluation (default: every idle core, see :func:`eval_threads`).
EVAL_THREADS_ENV = "TRAITGRAPH_EVAL_THREADS"
#: Sample generations per node in the report (its first eval prompts).
SAMPLES_PER_NODE = 2
#: New tokens for a general-prompt answer (the shipped prompts were checked at 24).
PROMPT_NEW_TOKENS = 24


def eval_threads() -> int:
    """``$TRAITGRAPH_EVAL_THREADS``, else every core that is idle right now (at least one).

    Eval numbers need not be bit-identical across thread counts, so more
    threads are free speed, but only on idle cores: on a 2-core machine with
    other work running, two threads measured 3× slower than one (each
    OpenMP barrier waits for a descheduled thread).
    """
    if os.environ.get(EVAL_THREADS_ENV):
        return max(1, int(os.environ[EVAL_THREADS_ENV]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    idle = _idle_fraction()
    return cores if idle is None else max(1, min(cores, round(cores * idle)))


def _idle_fraction(window: float = 0.3) -> float | None:
    """Share of CPU time spent idle over ``window`` seconds (Linux ``/proc/stat``); ``None`` elsewhere."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
        return fields[3] + (fields[4] if len(fields) > 4 else 0), sum(fields)  # idle + iowait, total

    try:
        idle0, total0 = sample()
        time.sleep(window)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (idle1 - idle0) / (total1 - total0) if total1 > total0 else None


# --------------------------------------------------------------------------- data


def general_text_file(spec: Spec) -> Path | None:
    """The personality's ``eval.general_text`` (relative to the specs dir), or ``None`` for the shipped set."""
    rel = spec.personality.eval.general_text
    return None if rel is None else (spec.specs_dir / rel)


def _shipped(name: str) -> str:
    return resources.files("traitgraph.data").joinpath(name).read_text(encoding="utf-8")


def general_prompts() -> list[dict[str, str]]:
    """The shipped general prompts: ``{"prompt", "answer"}`` per line."""
    return [json.loads(line) for line in _shipped("general_prompts.jsonl").splitlines() if line.strip()]


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _general_text_hash(spec: Spec) -> str:
    path = general_text_file(spec)
    if path is None:
        return _sha256_text(_shipped("general_text.txt"))
    try:
        return sha256_file(path)
    except OSError as exc:
        raise BuildError(f"cannot read eval.general_text {path}: {exc}") from None


# --------------------------------------------------------------------------- up to date


def read_build_lock(plan: BuildPlan):
    """The lock file of the last build in ``plan.out``; none is a :class:`BuildError` saying to build."""
    from traitgraph.linker.lock import read_lock

    if not plan.out.lock.is_file():
        raise BuildError(
            f"nothing to evaluate: {plan.out.lock} does not exist; build first (`traitgraph build` or `doit`)"
        )
    return read_lock(plan.out.lock)


def eval_inputs(plan: BuildPlan, lock=None) -> dict[str, Any]:
    """Everything a report depends on: the checkpoint and vectors (by the lock's hashes),
    the eval settings, each node's eval cases, the graph, the general data, the version."""
    lock = lock if lock is not None else read_build_lock(plan)
    spec = plan.spec
    return {
        "traitgraph_version": __version__,
        "scoring_version": SCORING_VERSION,
        "base_fingerprint": lock.base.fingerprint,
        "nodes": sorted(
            ([n.id, n.training_hash, n.vector_sha256, n.weight] for n in lock.nodes), key=lambda n: n[0]
        ),
        "outputs": dict(sorted(lock.outputs.items())),
        "settings": spec.personality.eval.model_dump(mode="json"),
        "eval_cases": {
            node_id: _sha256_text(_canonical([c.model_dump(mode="json") for c in node.spec.eval]))
            for node_id, node in sorted(spec.nodes.items())
        },
        "graph": _sha256_text(_canonical(_graph_picture(spec).model_dump(mode="json"))),
        "general_text": _general_text_hash(spec),
        "general_prompts": _sha256_text(_shipped("general_prompts.jsonl")),
    }


def report_is_current(plan: BuildPlan) -> bool:
    """``report.json`` exists, passed, and records exactly the current inputs."""
    try:
        report = read_report(plan.out.root / REPORT_JSON)
        return (
            report.passed
            and (plan.out.root / REPORT_MD).is_file()
            and report.inputs == eval_inputs(plan)
        )
    except BuildError:
        return False


# --------------------------------------------------------------------------- remembered scores


class ScoreMemo:
    """Scores of one fixed model (named by ``model_key``), remembered in one JSON file.

    Items are keyed by a hash of their content, so a changed eval case is a
    miss and an unchanged one a hit. Concurrent writers are harmless: each
    writes the whole file atomically; the last one wins.
    """

    def __init__(self, directory: Path | None, model_key: str):
        self.file = None if directory is None else Path(directory) / f"{_sha256_text(model_key)}.json"
        self.data: dict[str, Any] = {}
        if self.file is not None:
            try:
                self.data = json.loads(self.file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self.data = {}
        self.dirty = False

    @staticmethod
    def key(kind: str, item: Any) -> str:
        return _sha256_text(_canonical([SCORING_VERSION, kind, item]))

    def has_all(self, kind: str, items: Sequence[Any]) -> bool:
        return all(self.key(kind, it) in self.data for it in items)

    def lookup(self, kind: str, items: Sequence[Any], compute: Callable[[list[Any]], list[Any]]) -> list[Any]:
        """``compute`` the values of the items not remembered yet; return every value in order."""
        keys = [self.key(kind, it) for it in items]
        missing = [i for i, k in enumerate(keys) if k not in self.data]
        if missing:
            values = compute([items[i] for i in missing])
            for i, v in zip(missing, values):
                self.data[keys[i]] = v
            self.dirty = True
        return [self.data[k] for k in keys]

    def save(self) -> None:
        if self.file is None or not self.dirty:
            return
        try:
            write_text_atomic(self.file, json.dumps(self.data))
        except OSError:  # a read-only cache only costs time
            pass
        self.dirty = False


# --------------------------------------------------------------------------- scoring one model


def _case_item(case) -> dict[str, Any]:
    return case.model_dump(mode="json")


def _pack(score) -> list:
    """A :class:`~traitgraph.evaluate.scores.CaseScore` as JSON: [nll, tokens, rejected nll, rejected tokens]."""
    r = score.rejected
    return [score.wanted.nll, score.wanted.tokens, None if r is None else r.nll, None if r is None else r.tokens]


def _unpack(v: list):
    from traitgraph.evaluate.scores import CaseScore, ResponseScore

    return CaseScore(ResponseScore(v[0], v[1]), None if v[2] is None else ResponseScore(v[2], v[3]))


class ModelScorer:
    """Scores of one model on the evaluation's data, remembered when ``memo`` is given."""

    def __init__(self, model, tokenizer, memo: ScoreMemo | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.memo = memo if memo is not None else ScoreMemo(None, "")

    def cases(self, cases) -> list:
        from traitgraph.evaluate.scores import score_cases

        def compute(items):
            return [_pack(s) for s in score_cases(self.model, self.tokenizer, [EvalCase.model_validate(i) for i in items])]

        return [_unpack(v) for v in self.memo.lookup("case", [_case_item(c) for c in cases], compute)]

    def text(self, lines: Sequence[str]):
        from traitgraph.evaluate.scores import ResponseScore, text_scores, total

        def compute(items):
            return [None if s is None else [s.nll, s.tokens] for s in text_scores(self.model, self.tokenizer, items)]

        values = self.memo.lookup("text", list(lines), compute)
        return total([None if v is None else ResponseScore(v[0], v[1]) for v in values])

    def replies(self, chats: Sequence[list[dict[str, str]]], max_new_tokens: int) -> list[str]:
        from traitgraph.evaluate.scores import generate

        def compute(items):
            return generate(self.model, self.tokenizer, [i[0] for i in items], max_new_tokens=max_new_tokens)

        return self.memo.lookup("reply", [[list(c), max_new_tokens] for c in chats], compute)


# --------------------------------------------------------------------------- assembling


def _model_score(scores: Sequence) -> ModelScore:
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


def _prompt_text(case) -> str:
    return case.context if case.context is not None else case.messages[-1].content


def node_result(
    spec: Spec, node_id: str, weight: float, base: Sequence, alone: Sequence, linked: Sequence,
    samples: list[Sample], training: TrainingTrace | None,
) -> NodeResult:
    """One node's behaviour score from its cases' scores under the three models."""
    node = spec.nodes[node_id].spec
    direction = 1 if weight > 0 else -1
    common = dict(
        id=node_id, description=node.description.strip(), weight=weight, direction=direction,
        n_cases=len(node.eval), n_contrastive=sum(c.rejected is not None for c in node.eval),
        samples=samples, training=training,
    )
    if not node.eval:
        return NodeResult(measure="none", **common)
    measure = "margin" if common["n_contrastive"] else "logprob"
    scores = {k: _model_score(v) for k, v in (("base", base), ("alone", alone), ("linked", linked))}
    gain_alone = _measure(scores["alone"], measure) - _measure(scores["base"], measure)
    gain_linked = _measure(scores["linked"], measure) - _measure(scores["base"], measure)
    directed_alone = direction * gain_alone
    return NodeResult(
        measure=measure, **common, **scores,
        gain_alone=gain_alone, gain_linked=gain_linked,
        kept=(direction * gain_linked) / directed_alone if directed_alone > 0 else None,
        cases=[
            CaseRow(prompt=_prompt_text(c), has_rejected=c.rejected is not None,
                    base=_case_value(b), alone=_case_value(a), linked=_case_value(li))
            for c, b, a, li in zip(node.eval, base, alone, linked)
        ],
    )


def _graph_picture(spec: Spec) -> GraphPicture:
    g = spec.graph()
    return GraphPicture(
        nodes=[{"id": n, **d} for n, d in sorted(g.nodes(data=True))],
        edges=[{"from": u, "to": v, "kind": d.get("kind", "related")} for u, v, d in sorted(g.edges(data=True))],
    )


def _training_traces(vectors: dict[str, Path], notes: list[str]) -> dict[str, TrainingTrace | None]:
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
            steps=meta.steps, final_loss=meta.final_loss, oscillation=meta.oscillation,
            loss_curve=list(meta.loss_curve), monitor=meta.monitor,
        )
    if failed:
        notes.append(f"no loss curve for {', '.join(n for n, _ in failed)}: {failed[0][1]}")
    return traces


def _interference(
    vectors: dict[str, tuple[Path, float]], shas: dict[str, str], density: float, memo: ScoreMemo, notes: list[str]
) -> Interference | None:
    """Pairwise cosine, trim overlap and sign conflict of the weighted vectors (the linker's measure),
    remembered by the vectors' sha256, weights and density. A failure is a note, not a failed evaluation."""
    from traitgraph.linker.interference import interference

    if len(vectors) < 2:
        return None

    def compute(items):
        result = interference(
            {n: p for n, (p, _) in vectors.items()}, density=density, weights={n: w for n, (_, w) in vectors.items()}
        )
        return [Interference.from_result(result).model_dump(mode="json")]

    recipe = [[n, shas[n], w] for n, (_, w) in vectors.items()] + [density]
    try:
        (value,) = memo.lookup("interference", [recipe], compute)
    except UserError as exc:
        notes.append(f"interference not measured: {exc}")
        return None
    memo.save()
    return Interference.model_validate(value)


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


@contextmanager
def _torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- the evaluation


def evaluate_build(plan: BuildPlan, *, threads: int | None = None, progress: bool = True) -> EvalReport:
    """Score the last build in ``plan.out`` against the current specs' eval cases.

    The checkpoint and the task vectors are the ones the lock file records;
    the eval cases, settings and general data are the current ones. Nothing
    is written (see :func:`run_eval` for the report and the gates).
    """
    threads = threads or eval_threads()
    if progress:
        print(f"eval: {threads} torch thread{'s' if threads != 1 else ''}", flush=True)
    with _torch_threads(threads):
        return _evaluate(plan, progress).model_copy(update={"threads": threads})


def _evaluate(plan: BuildPlan, progress: bool) -> EvalReport:
    from traitgraph.compiler.base_model import ResolvedBase, load_model, resolve_base
    from traitgraph.compiler.data import load_general_text
    from traitgraph.evaluate.scores import contains_answer, vectors_applied

    spec, settings = plan.spec, plan.spec.personality.eval
    clock = _Clock(progress)
    lock = read_build_lock(plan)
    inputs = eval_inputs(plan, lock)
    if not plan.out.checkpoint.is_dir():
        raise BuildError(f"the lock file names a checkpoint at {plan.out.checkpoint}, which does not exist; relink it")
    by_id = {n.id: n for n in lock.nodes}
    order = [n for n in spec.build_order() if n in by_id]
    notes: list[str] = []
    skipped = sorted(set(spec.nodes) ^ set(by_id))
    if skipped:
        notes.append(f"the specs and the last build disagree on nodes {', '.join(skipped)}, which are not "
                     "scored; run `traitgraph build` to evaluate the current specs")
    vectors = {n: plan.cache.verify(by_id[n].training_hash) for n in order}
    lines = load_general_text(general_text_file(spec))
    prompts = general_prompts()
    prompt_chats = [[{"role": "user", "content": p["prompt"]}] for p in prompts]
    sample_cases = {n: list(spec.nodes[n].spec.eval[:SAMPLES_PER_NODE]) for n in order}
    sample_chats = [c.chat() for n in order for c in sample_cases[n]]
    memo_dir = plan.cache.root / "eval"

    with clock.phase("load base"):
        base_ref = resolve_base(lock.base.reference, spec.specs_dir)
        if base_ref.fingerprint != lock.base.fingerprint:
            raise BuildError(
                f"base '{lock.base.reference}' now has fingerprint {base_ref.fingerprint[:19]}, but the build "
                f"was linked on {lock.base.fingerprint[:19]}; rebuild"
            )
        model, tokenizer = load_model(base_ref)

    with clock.phase("score base"):
        scorer = ModelScorer(model, tokenizer, ScoreMemo(memo_dir, f"base {base_ref.fingerprint}"))
        base_cases = {n: scorer.cases(spec.nodes[n].spec.eval) for n in order}
        base_text = scorer.text(lines)
        base_answers = scorer.replies(prompt_chats, PROMPT_NEW_TOKENS)
        base_samples = scorer.replies(sample_chats, settings.max_new_tokens)
        scorer.memo.save()

    alone_cases: dict[str, list] = {}
    with clock.phase("score each node alone"):
        for n in order:
            weight = by_id[n].weight
            deps = [d for d in spec.dependencies(n) if d in by_id]  # trained on top of these (weight 1)
            applied = [(vectors[d], 1.0) for d in deps] + [(vectors[n], weight)]
            recipe = [[by_id[d].vector_sha256, 1.0] for d in deps] + [[by_id[n].vector_sha256, weight]]
            memo = ScoreMemo(memo_dir, f"alone {base_ref.fingerprint} {_canonical(recipe)}")
            cases = spec.nodes[n].spec.eval
            if memo.has_all("case", [_case_item(c) for c in cases]):
                alone_cases[n] = ModelScorer(None, None, memo).cases(cases)
                continue
            with vectors_applied(model, applied):
                alone_cases[n] = ModelScorer(model, tokenizer, memo).cases(cases)
            memo.save()
    del model, scorer

    with clock.phase("load linked checkpoint"):
        linked_ref = ResolvedBase(reference=str(plan.out.checkpoint), path=plan.out.checkpoint, fingerprint="")
        model, tokenizer = load_model(linked_ref)

    with clock.phase("score linked"):
        scorer = ModelScorer(model, tokenizer)
        linked_cases = {n: scorer.cases(spec.nodes[n].spec.eval) for n in order}
        linked_text = scorer.text(lines)
        linked_answers = scorer.replies(prompt_chats, PROMPT_NEW_TOKENS)
        linked_samples = scorer.replies(sample_chats, settings.max_new_tokens)
    del model, scorer

    with clock.phase("interference"):
        interference = _interference(
            {n: (vectors[n], by_id[n].weight) for n in order}, {n: by_id[n].vector_sha256 for n in order},
            lock.merge.density, ScoreMemo(memo_dir, "interference"), notes,
        )

    samples_of: dict[str, list[Sample]] = {}
    i = 0
    for n in order:
        samples_of[n] = []
        for c in sample_cases[n]:
            samples_of[n].append(Sample(prompt=_prompt_text(c), base=base_samples[i], built=linked_samples[i]))
            i += 1
    traces = _training_traces(vectors, notes)
    nodes = [
        node_result(spec, n, by_id[n].weight, base_cases[n], alone_cases[n], linked_cases[n], samples_of[n], traces[n])
        for n in order
    ]
    text_path = general_text_file(spec)
    retention = Retention(
        text_source="shipped" if text_path is None else str(text_path),
        lines=len(lines), tokens=base_text.tokens, base_loss=base_text.loss, linked_loss=linked_text.loss,
        prompts=[
            PromptResult(prompt=p["prompt"], answer=p["answer"], base_output=b, built_output=li,
                         base_ok=contains_answer(b, p["answer"]), built_ok=contains_answer(li, p["answer"]))
            for p, b, li in zip(prompts, base_answers, linked_answers)
        ],
    )
    gates = check_gates(settings, nodes, retention)
    return EvalReport(
        traitgraph_version=__version__, personality=spec.personality.name, base=lock.base.reference,
        checkpoint=str(plan.out.checkpoint), settings=settings, inputs=inputs, graph=_graph_picture(spec),
        nodes=nodes, retention=retention, interference=interference, gates=gates,
        passed=all(g.passed for g in gates), seconds=clock.seconds, timings=clock.timings, notes=notes,
    )


def run_eval(plan: BuildPlan, *, threads: int | None = None, progress: bool = True) -> EvalReport:
    """Evaluate, write the report (figures, report.md, report.json), print the tables,
    then apply the gates: a budget exceeded is a :class:`BuildError` naming what fell short."""
    report = evaluate_build(plan, threads=threads, progress=progress)
    report = write_report(report, plan.out.root)
    print(print_summary(report))
    print(f"report: {plan.out.root / REPORT_MD}")
    log_event(plan.out, "eval", seconds=report.seconds, passed=report.passed,
              failed=[g.name for g in report.failures()])
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
