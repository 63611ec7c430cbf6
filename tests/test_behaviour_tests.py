"""Behaviour tests end to end on the pico model: greedy generation, `traitgraph test`, the build's gate.

One real build (train, link, eval through doit) of a pico personality whose
node has one expectation any reply meets and one no reply of the pico model
can meet, shared by the module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from traitgraph.cli import main
from traitgraph.compiler.base_model import ResolvedBase, load_model
from traitgraph.evaluate import behaviour_report
from traitgraph.evaluate.behaviour_tests import GENERAL, BehaviourTestReport, TestResult, collect_tests, select
from traitgraph.evaluate.report import REPORT_JSON, REPORT_MD, read_report
from traitgraph.evaluate.scores import generate, prompt_ids, stop_ids
from traitgraph.graph import load_specs

from conftest import pirate_node, write_tiny_specs

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: Met by any reply the pico model gives in 8 tokens.
EASY = {"max_words": 400}
#: Met by no reply of the pico model (its tokenizer has never seen the word).
IMPOSSIBLE = {"contains_all": ["xylophone"]}


def greedy_one_at_a_time(model, tokenizer, chat, max_new_tokens: int) -> str:
    """An independent greedy decoder: one prompt, full forward each step, argmax, stop at end of turn."""
    ids = list(prompt_ids(tokenizer, chat))
    stops = set(stop_ids(tokenizer))
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(input_ids=torch.tensor([ids + new])).logits[0, -1]
            token = int(torch.argmax(logits))
            if token in stops:
                break
            new.append(token)
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def test_batched_left_padded_generation_equals_an_independent_greedy_loop(tiny_base_dir):
    model, tok = load_model(ResolvedBase(reference="pico", path=tiny_base_dir, fingerprint=""))
    torch.manual_seed(1)
    with torch.no_grad():  # sharper random weights: the untrained pico model ends its turn at once
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    chats = [
        [{"role": "user", "content": "hello"}],
        [{"role": "user", "content": "what is the sea and where is the ship of the captain today?"}],
        [
            {"role": "user", "content": "help me"},
            {"role": "assistant", "content": "yes"},
            {"role": "user", "content": "say a word"},
        ],
    ]
    batched = generate(model, tok, chats, max_new_tokens=12, batch_size=3)
    assert batched == [greedy_one_at_a_time(model, tok, c, 12) for c in chats]
    assert all(batched) and len(set(batched)) == 3  # a real, different reply each


def _result(case: str, passed: bool, group: str = "voice") -> TestResult:
    return TestResult(group=group, case=case, prompt="p", reply="r", failures=[] if passed else ["does not say x"])


def test_the_report_names_the_tests_linking_lost_and_won():
    tests = BehaviourTestReport(
        base=[_result("eval[0]", False), _result("eval[1]", False), _result("1", True, GENERAL)],
        alone=[_result("eval[0]", True), _result("eval[1]", False)],
        built=[_result("eval[0]", False), _result("eval[1]", True), _result("1", True, GENERAL)],
    )
    assert tests.lost_by_merge() == ["voice::eval[0]"] and tests.won_by_merge() == ["voice::eval[1]"]
    report = SimpleNamespace(tests=tests)
    assert behaviour_report.merge_lines(report)[0] == (
        "**Kept in words:** the nodes pass 1/2 of their own tests alone and 1/2 linked; "
        "linking lost 1 (voice::eval[0]) and won 1 (voice::eval[1])."
    )
    table = behaviour_report.tests_table(report).splitlines()
    assert table[2] == "| voice | 2 | 0/2 (0%) | 1/2 (50%) | **1/2 (50%)** | eval[0] |"
    assert table[3] == "| (general prompts) | 1 | 1/1 (100%) | – | **1/1 (100%)** | – |"  # no "alone" for them
    # A report written before the node-alone tests were recorded: no line, and "–" in the column.
    old = SimpleNamespace(tests=tests.model_copy(update={"alone": []}))
    assert (
        behaviour_report.merge_lines(old) == []
        and behaviour_report.tests_table(old).splitlines()[2].split(" | ")[3] == "–"
    )


def _project(root: Path, base: Path, **eval_settings) -> Path:
    node = pirate_node()
    node["eval"][0]["expect"] = EASY
    node["eval"][1]["expect"] = IMPOSSIBLE
    node["ood"] = [
        {
            "messages": [
                {"role": "user", "content": "look at the water"},
                {"role": "assistant", "content": "arr"},
                {"role": "user", "content": "and now the sky"},
            ],
            "response": "arr the sky matey",
            "rejected": "It is blue.",
            "expect": EASY,
        }
    ]
    specs = write_tiny_specs(
        root, base, {"pirate": node}, {"learning_rate": 1e-3, "steps": 8, "batch_size": 4, "seed": 0}
    )
    doc = yaml.safe_load((specs / "personality.yaml").read_text())
    doc["eval"] = {
        "max_new_tokens": 8,
        "max_retention_loss_pct": 1000.0,
        "min_behaviour_gain": -1000.0,
        **eval_settings,
    }
    (specs / "personality.yaml").write_text(yaml.safe_dump(doc))
    return specs


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_base_dir):
    mp = pytest.MonkeyPatch()
    mp.setenv("TRAITGRAPH_EVAL_THREADS", "1")
    root = tmp_path_factory.mktemp("tests-build")
    specs = _project(root, tiny_base_dir)
    out = root / "out"
    assert main(["build", str(specs), "-o", str(out)]) == 0
    yield specs, out
    mp.undo()


def _replies_of_base_plus_vector(specs: Path, node_id: str, chats) -> list[str]:
    """Greedy replies of the base with ``node_id``'s cached τ added by hand (W += w·τ, read with
    safetensors), decoded one prompt at a time: independent of the evaluation's own code."""
    from safetensors.torch import load_file

    from traitgraph.builder.cache import VectorCache
    from traitgraph.compiler.base_model import resolve_base
    from traitgraph.graph.hashing import node_hashes

    spec = load_specs(specs)
    base = resolve_base(spec.personality.base, spec.specs_dir)
    tau = load_file(str(VectorCache().verify(node_hashes(spec, base.fingerprint)[node_id])))
    model, tok = load_model(base)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, delta in tau.items():
            params[name] += spec.nodes[node_id].spec.weight * delta.to(params[name].dtype)
    return [greedy_one_at_a_time(model, tok, [{"role": r, "content": c} for r, c in chat], 8) for chat in chats]


def test_collect_names_node_cases_and_general_prompts(built):
    specs, _ = built
    tests = collect_tests(
        load_specs(specs), [{"prompt": "Capital of France?", "answer": "Paris"}], node_budget=8, prompt_budget=24
    )
    assert [t.id for t in tests] == ["pirate::eval[0]", "pirate::eval[1]", "pirate::ood[0]", f"{GENERAL}::1"]
    assert tests[2].prompt == "and now the sky" and len(tests[2].chat) == 3
    assert tests[3].expect.contains_any == ("Paris",) and tests[3].max_new_tokens == 24
    assert [t.id for t in select(tests, "::OOD")] == ["pirate::ood[0]"]
    assert [t.id for t in select(tests, "france")] == [f"{GENERAL}::1"]  # the prompt matches too


def _traitgraph(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRAITGRAPH_EVAL_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "traitgraph", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_traitgraph_test_exit_codes(built, tmp_path):
    specs, out = built
    ok = _traitgraph("test", str(specs), "-o", str(out), "-k", "eval[0]")
    assert ok.returncode == 0, ok.stderr
    assert "note:" not in ok.stdout  # the build is current
    assert ok.stdout.rstrip().splitlines()[-1].startswith("1 passed, 0 failed in ")

    failing = _traitgraph("test", str(specs), "-o", str(out), "--no-general")
    assert failing.returncode == 1, failing.stderr
    lines = failing.stdout.rstrip().splitlines()
    (failed,) = [line for line in lines if line.startswith("FAILED")]
    assert failed.startswith('FAILED pirate::eval[1] "what do you want" -> "')
    assert failed.endswith('": does not say "xylophone"')
    # The build's eval remembered the base's replies: its pass rate is shown beside the build's.
    assert "pass rate per node:  (base -> built)" in lines and "  pirate  2/3 -> 2/3" in lines
    assert lines[-2] == "base: 2 passed, 1 failed" and lines[-1].startswith("2 passed, 1 failed in ")

    nothing = _traitgraph("test", str(specs), "-o", str(tmp_path / "never-built"))
    assert nothing.returncode == 2
    assert "nothing to test" in nothing.stderr and "build first" in nothing.stderr
    assert "Traceback" not in nothing.stderr
    assert not (tmp_path / "never-built").exists()

    no_match = _traitgraph("test", str(specs), "-o", str(out), "-k", "no-such-test")
    assert no_match.returncode == 2 and "no test matches -k 'no-such-test'" in no_match.stderr


def test_traitgraph_test_base_tests_the_base_model(built, capsys):
    specs, _ = built
    # The base is not built: --base needs no build output at all.
    code = main(["test", str(specs), "-o", str(specs.parent / "nowhere"), "--base", "-k", "pirate::"])
    printed = capsys.readouterr().out
    assert code == 1 and "(base)" in printed.splitlines()[0]
    assert printed.rstrip().splitlines()[-1].startswith("2 passed, 1 failed")


def test_traitgraph_test_alone_tests_one_node_vector_on_the_base(built, tmp_path):
    specs, out = built
    alone = _traitgraph("test", str(specs), "-o", str(tmp_path / "nowhere"), "--alone", "pirate", "--no-general")
    assert alone.returncode == 1, alone.stderr  # eval[1] can never pass
    lines = alone.stdout.rstrip().splitlines()
    assert lines[0].endswith("+ pirate alone (weight 1)")
    assert "pass rate per node:  (base -> pirate alone)" in lines and "  pirate  2/3 -> 2/3" in lines
    (failed,) = [line for line in lines if line.startswith("FAILED")]
    impossible = collect_tests(load_specs(specs), [], node_budget=8, prompt_budget=24)[1]
    (wanted,) = _replies_of_base_plus_vector(specs, "pirate", [impossible.chat])
    assert failed.startswith(f'FAILED pirate::eval[1] "what do you want" -> "{wanted}"')  # base + τ's reply

    unknown = _traitgraph("test", str(specs), "--alone", "parrot")
    assert unknown.returncode == 2 and "--alone 'parrot': no such node" in unknown.stderr
    assert "(nodes: pirate)" in unknown.stderr and "Traceback" not in unknown.stderr

    edited = tmp_path / "edited"
    shutil.copytree(specs, edited)
    node_file = edited / "nodes" / "pirate.yaml"
    node = yaml.safe_load(node_file.read_text())
    node["examples"][0]["response"] += " friend"  # another training hash: no vector of it yet
    node_file.write_text(yaml.safe_dump(node))
    untrained = _traitgraph("test", str(edited), "--alone", "pirate")
    assert untrained.returncode == 2 and "no task vector of pirate as the specs now stand" in untrained.stderr
    assert f"`traitgraph train {edited} pirate`" in untrained.stderr

    both = _traitgraph("test", str(specs), "--alone", "pirate", "--base")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_build_report_carries_every_case_base_and_built(built):
    specs, out = built
    report = read_report(out / REPORT_JSON)
    assert report.passed  # no floor set: the tests are reported, not gated
    ids = [f"{r.group}::{r.case}" for r in report.tests.built]
    assert ids[:3] == ["pirate::eval[0]", "pirate::eval[1]", "pirate::ood[0]"]
    assert len(ids) == 3 + 30 and [f"{r.group}::{r.case}" for r in report.tests.base] == ids
    # The node's own tests under the node alone: what linking kept of it in words.
    assert [f"{r.group}::{r.case}" for r in report.tests.alone] == ids[:3]
    assert [r.passed for r in report.tests.alone] == [True, False, True]
    alone = _replies_of_base_plus_vector(
        specs, "pirate", [t.chat for t in collect_tests(load_specs(specs), [], node_budget=8, prompt_budget=24)]
    )
    assert [r.reply for r in report.tests.alone] == alone  # base + τ of pirate, applied by hand
    assert alone != [r.reply for r in report.tests.base[:3]]  # and not the base's replies
    (impossible,) = [r for r in report.tests.built if r.case == "eval[1]"]
    assert impossible.failures == ['does not say "xylophone"'] and impossible.prompt == "what do you want"
    general_built = [r.passed for r in report.tests.built if r.group == GENERAL]
    assert general_built == [p.built_ok for p in report.retention.prompts]  # the same rule as retention
    md = (out / REPORT_MD).read_text()
    assert "## Behaviour tests" in md and "| pirate | 3 | 2/3 (67%) | 2/3 (67%) | **2/3 (67%)** |" in md
    assert "figures/tests.png" in md
    assert "**Kept in words:** the nodes pass 2/3 of their own tests alone and 2/3 linked" in md
    assert "## Out-of-distribution cases" in md
    assert (out / report.figures["tests"]).read_bytes().startswith(PNG_MAGIC)
    ood = report.nodes[0].ood
    assert ood is not None and ood.n_cases == 1 and ood.measure == "margin"
    assert report.nodes[0].n_cases == 2  # eval cases only, ood kept apart


def test_a_failing_expectation_fails_the_gate_naming_node_and_case(built, tmp_path, tiny_base_dir, capsys):
    _, out = built
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    strict = _project(tmp_path, tiny_base_dir, min_test_pass_rate=0.0, node_test_pass_rate={"pirate": 1.0})
    capsys.readouterr()
    assert main(["build", str(strict), "-o", str(copy)]) == 2  # trained and linked already: eval only
    err = capsys.readouterr().err
    assert (
        "node 'pirate' behaviour tests: 2/3 passed (67%) < 100%; failing: eval[1] (does not say \"xylophone\")" in err
    )
    report = read_report(copy / REPORT_JSON)
    assert not report.passed and [g.name for g in report.failures()] == ["tests:pirate"]


def test_editing_expect_or_ood_reruns_eval_only(built, tmp_path):
    from traitgraph.builder.plan import BuildPlan
    from traitgraph.evaluate.run import report_is_current

    specs, out = built
    copy = tmp_path / "specs"
    shutil.copytree(specs, copy)
    assert report_is_current(BuildPlan.load(copy, out))
    node_file = copy / "nodes" / "pirate.yaml"
    for edit in (
        lambda d: d["eval"][0]["expect"].update(max_words=3),
        lambda d: d["ood"][0].update(response="arr the sky is blue"),
    ):
        shutil.copy(specs / "nodes" / "pirate.yaml", node_file)
        doc = yaml.safe_load(node_file.read_text())
        edit(doc)
        node_file.write_text(yaml.safe_dump(doc))
        plan = BuildPlan.load(copy, out)
        assert plan.link_is_current()  # no training, no link
        assert not report_is_current(plan)  # the eval runs again


def test_traitgraph_test_notes_a_build_older_than_the_specs(built, tmp_path, capsys):
    specs, out = built
    copy = tmp_path / "specs"
    shutil.copytree(specs, copy)
    node_file = copy / "nodes" / "pirate.yaml"
    doc = yaml.safe_load(node_file.read_text())
    doc["weight"] = 0.5  # a relink is due
    node_file.write_text(yaml.safe_dump(doc))
    assert main(["test", str(copy), "-o", str(out), "-k", "eval[0]", "--no-general"]) == 0
    assert "note: the specs changed since the last build" in capsys.readouterr().out
