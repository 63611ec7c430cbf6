"""Behaviour tests: what the model *says*, checked against each case's ``expect:``.

A behaviour test is one prompt, a token budget and an
:class:`~traitgraph.graph.schema.Expectation`. They come from

* every ``eval`` and ``ood`` case of a node that has ``expect:`` (named
  ``NODE::eval[i]`` / ``NODE::ood[i]``), answered with ``eval.max_new_tokens``;
* every shipped general prompt, as ``contains_any: [its answer]`` (named
  ``@general::N``, N the prompt's line number), answered with the retention
  check's budget, so forgetting a fact is a failing test.

Replies are greedy (chat template applied), produced by any function
``replies(chats, max_new_tokens) -> list[str]`` (the evaluation's remembered
:class:`~traitgraph.evaluate.run.ModelScorer` or plain generation); the rest
is pure: checking, pass rates per node and gates.

>>> tests = collect_tests(spec, general_prompts(), node_budget=48, prompt_budget=24)   # doctest: +SKIP
>>> results = check_tests(tests, reply_all(tests, scorer.replies))                      # doctest: +SKIP
>>> summary_line(results)                                                               # doctest: +SKIP
'31 passed, 5 failed'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from traitgraph.evaluate.expectations import check_reply
from traitgraph.graph.schema import EvalSettings, Expectation

#: Bump when what a test checks changes: reports made before are redone (remembered replies are kept).
BEHAVIOUR_TESTS_VERSION = 2
#: The group of the general-prompt tests (not a valid node id, so never a node's name).
GENERAL = "@general"
GENERAL_LABEL = "(general prompts)"

Chat = list[dict[str, str]]


@dataclass(frozen=True)
class BehaviourTest:
    """One prompt to answer and what the answer must satisfy."""

    group: str
    """The node id, or :data:`GENERAL`."""
    case: str
    """``eval[2]``, ``ood[0]`` or the general prompt's line number."""
    chat: tuple[tuple[str, str], ...]
    """(role, content) turns up to the reply."""
    expect: Expectation
    max_new_tokens: int

    @property
    def id(self) -> str:
        """``voice::eval[1]``: the name ``-k`` matches and the summary prints."""
        return f"{self.group}::{self.case}"

    @property
    def prompt(self) -> str:
        """The last user message."""
        return self.chat[-1][1]

    def messages(self) -> Chat:
        return [{"role": role, "content": content} for role, content in self.chat]


def collect_tests(
    spec, prompts: Sequence[dict[str, str]], *, node_budget: int, prompt_budget: int, general: bool = True
) -> list[BehaviourTest]:
    """Every behaviour test of ``spec`` (nodes in build order), then the general prompts.

    >>> [t.id for t in collect_tests(spec, [], node_budget=48, prompt_budget=24)][:2]   # doctest: +SKIP
    ['boundaries::eval[0]', 'boundaries::eval[1]']
    """
    tests: list[BehaviourTest] = []
    for node_id in spec.build_order():
        node = spec.nodes[node_id].spec
        for kind, cases in (("eval", node.eval), ("ood", node.ood)):
            tests += [
                BehaviourTest(node_id, f"{kind}[{i}]", _turns(case.chat()), case.expect, node_budget)
                for i, case in enumerate(cases)
                if case.expect is not None
            ]
    if general:
        tests += [
            BehaviourTest(
                GENERAL, str(i), (("user", p["prompt"]),), Expectation(contains_any=(p["answer"],)), prompt_budget
            )
            for i, p in enumerate(prompts, start=1)
        ]
    return tests


def _turns(chat: Chat) -> tuple[tuple[str, str], ...]:
    return tuple((m["role"], m["content"]) for m in chat)


def select(tests: Sequence[BehaviourTest], pattern: str | None) -> list[BehaviourTest]:
    """The tests whose id or prompt contains ``pattern`` (case-insensitive); all when it is empty.

    >>> [t.id for t in select(tests, "voice::ood")]   # doctest: +SKIP
    ['voice::ood[0]', 'voice::ood[1]']
    """
    if not pattern:
        return list(tests)
    p = pattern.casefold()
    return [t for t in tests if p in t.id.casefold() or p in t.prompt.casefold()]


def reply_all(tests: Sequence[BehaviourTest], replies: Callable[[list[Chat], int], list[str]]) -> list[str]:
    """Each test's reply, asking ``replies`` once per token budget (so it can batch)."""
    out: list[str] = [""] * len(tests)
    for budget in sorted({t.max_new_tokens for t in tests}):
        idx = [i for i, t in enumerate(tests) if t.max_new_tokens == budget]
        for i, reply in zip(idx, replies([tests[i].messages() for i in idx], budget)):
            out[i] = reply
    return out


def behaviour_tests_of_build(
    spec, built: Sequence[str], prompts: Sequence[dict[str, str]], node_budget: int, prompt_budget: int
) -> list[BehaviourTest]:
    """The tests of the nodes in ``built`` (the last build's) and the general prompts."""
    tests = collect_tests(spec, prompts, node_budget=node_budget, prompt_budget=prompt_budget)
    return [t for t in tests if t.group in built or t.group == GENERAL]


# --------------------------------------------------------------------------- results


class TestResult(BaseModel):
    """One behaviour test on one model (a row of ``report.json``)."""

    __test__ = False  # not a pytest class
    model_config = ConfigDict(extra="forbid")

    group: str
    case: str
    prompt: str
    reply: str
    failures: list[str] = Field(default_factory=list, description="Each failed check, in words.")

    @property
    def id(self) -> str:
        return f"{self.group}::{self.case}"

    @property
    def passed(self) -> bool:
        return not self.failures


def check_tests(tests: Sequence[BehaviourTest], replies: Sequence[str]) -> list[TestResult]:
    """Check each reply against its test's expectation.

    >>> check_tests([BehaviourTest("voice", "eval[0]", (("user", "I passed!"),),
    ...                            Expectation(contains_any=("congrat",)), 8)], ["Well done!"])[0].failures
    ['says none of "congrat"']
    """
    return [
        TestResult(group=t.group, case=t.case, prompt=t.prompt, reply=r, failures=check_reply(r, t.expect))
        for t, r in zip(tests, replies, strict=True)
    ]


def answer_tests(tests: Sequence[BehaviourTest], replies: Callable[[list[Chat], int], list[str]]) -> list[TestResult]:
    """Ask ``replies`` for every test's reply and check it: :func:`reply_all` then :func:`check_tests`."""
    return check_tests(tests, reply_all(tests, replies))


def pass_rates(results: Sequence[TestResult]) -> dict[str, tuple[int, int]]:
    """``group -> (passed, total)``, groups in first-seen order.

    >>> pass_rates([TestResult(group="a", case="0", prompt="", reply="", failures=["x"])])
    {'a': (0, 1)}
    """
    out: dict[str, tuple[int, int]] = {}
    for r in results:
        passed, total = out.get(r.group, (0, 0))
        out[r.group] = (passed + r.passed, total + 1)
    return out


def summary_line(results: Sequence[TestResult]) -> str:
    """``N passed, M failed`` (pytest's last line).

    >>> summary_line([])
    '0 passed, 0 failed'
    """
    failed = sum(not r.passed for r in results)
    return f"{len(results) - failed} passed, {failed} failed"


def group_label(group: str) -> str:
    return GENERAL_LABEL if group == GENERAL else group


def failure_line(result: TestResult, width: int = 100) -> str:
    """``FAILED voice::eval[1] "prompt" -> "reply": check; check`` on one line."""
    reply = " ".join(result.reply.split()) or "(empty)"
    if len(reply) > width:
        reply = reply[: width - 1] + "…"
    return f'FAILED {result.id} "{_short(result.prompt, 60)}" -> "{reply}": {"; ".join(result.failures)}'


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# --------------------------------------------------------------------------- gates


@dataclass(frozen=True)
class TestGate:
    """One pass-rate floor checked: ``name`` (``tests`` or ``tests:NODE``), passed, a sentence."""

    __test__ = False
    name: str
    passed: bool
    message: str


def pass_rate_gates(settings: EvalSettings, results: Sequence[TestResult]) -> list[TestGate]:
    """``eval.min_test_pass_rate`` on all tests and on each node (``node_test_pass_rate``
    replaces it per node); the general prompts count in the overall rate only.
    No gate when no floor is set. A failed node gate names its failing cases."""
    rates = pass_rates(results)
    gates: list[TestGate] = []
    floor = settings.min_test_pass_rate
    if floor > 0 and results:
        passed = sum(r.passed for r in results)
        gates.append(_gate("tests", "behaviour tests", passed, len(results), floor, []))
    for group, (passed, total) in rates.items():
        node_floor = settings.node_test_pass_rate.get(group, floor)
        if group == GENERAL or node_floor <= 0:
            continue
        failing = [f"{r.case} ({'; '.join(r.failures)})" for r in results if r.group == group and not r.passed]
        gates.append(_gate(f"tests:{group}", f"node '{group}' behaviour tests", passed, total, node_floor, failing))
    return gates


def _gate(name: str, what: str, passed: int, total: int, floor: float, failing: list[str]) -> TestGate:
    rate = passed / total
    ok = rate >= floor
    message = f"{what}: {passed}/{total} passed ({rate:.0%}) {'>=' if ok else '<'} {floor:.0%}"
    if not ok and failing:
        message += "; failing: " + ", ".join(failing)
    return TestGate(name=name, passed=ok, message=message)


class BehaviourTestReport(BaseModel):
    """Every behaviour test under the base and under the built checkpoint, and each node's own
    tests under that node alone (``report.json``'s ``tests``)."""

    model_config = ConfigDict(extra="forbid")

    base: list[TestResult] = Field(default_factory=list)
    built: list[TestResult] = Field(default_factory=list)
    alone: list[TestResult] = Field(
        default_factory=list,
        description="Each node's own tests under base + w·τ of that node alone (empty in reports written before it was recorded).",
    )

    def rows(self) -> list[tuple[str, tuple[int, int], tuple[int, int] | None, tuple[int, int]]]:
        """``(group, base (passed, total), alone (passed, total) or None, built (passed, total))``
        per group, in test order; alone is None for the general prompts and in old reports."""
        base, alone, built = pass_rates(self.base), pass_rates(self.alone), pass_rates(self.built)
        return [(g, base.get(g, (0, 0)), alone.get(g), built[g]) for g in built]

    def lost_by_merge(self) -> list[str]:
        """Ids of the tests a node passes alone and the built model fails: what linking cost in words."""
        return _flipped(self.alone, self.built)

    def won_by_merge(self) -> list[str]:
        """Ids of the tests a node fails alone and the built model passes."""
        return _flipped(self.built, self.alone)

    def gates(self, settings: EvalSettings) -> list[TestGate]:
        return pass_rate_gates(settings, self.built)


def _flipped(passing: Sequence[TestResult], failing: Sequence[TestResult]) -> list[str]:
    """Ids passed in ``passing`` and failed in ``failing`` (tests present in both), in ``failing``'s order.

    >>> ok, bad = TestResult(group="a", case="0", prompt="", reply=""), ["x"]
    >>> _flipped([ok], [ok.model_copy(update={"failures": bad})])
    ['a::0']
    """
    passed = {r.id for r in passing if r.passed}
    return [r.id for r in failing if not r.passed and r.id in passed]
