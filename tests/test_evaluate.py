"""Evaluation: behaviour scores, directions, gates, the report and the commands.

The maths is tested on hand-made cases (a τ trained here to make one reply
likelier; scores put together by hand); the flow is tested on one real build
of the pico fixture model (train, link, eval through doit), shared by the
module.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from traitgraph.builder.plan import BuildPlan
from traitgraph.cli import main
from traitgraph.compiler.base_model import ResolvedBase, load_model
from traitgraph.compiler.data import collate, encode_example, pad_id
from traitgraph.compiler.losses import response_loss
from traitgraph.compiler.task_vector import TaskVectorMeta, save_task_vector
from traitgraph.evaluate.report import (
    REPORT_JSON,
    REPORT_MD,
    EvalReport,
    ModelScore,
    Retention,
    check_gates,
    read_report,
)
from traitgraph.evaluate.run import ScoreMemo, eval_inputs, node_result, report_is_current
from traitgraph.evaluate.scores import CaseScore, ResponseScore, generate, score_cases, vectors_applied
from traitgraph.graph import load_specs
from traitgraph.graph.schema import EvalCase, EvalSettings

from conftest import pirate_node, write_tiny_specs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CASE = EvalCase(context="good day to you", response="arr matey good day", rejected="Hello there friend.")


@pytest.fixture(scope="module")
def tiny(tiny_base_dir):
    return load_model(ResolvedBase(reference="pico", path=tiny_base_dir, fingerprint="sha256:pico"))


def _meta(node_id: str) -> TaskVectorMeta:
    return TaskVectorMeta(
        node_id=node_id,
        node_hash="h",
        base_fingerprint="sha256:pico",
        optimizer={},
        training={},
        steps=5,
        tokens=0,
        final_loss=0.0,
        loss_curve=[1.0, 0.5],
        oscillation=1.0,
        dtype="float32",
        traitgraph_version="test",
    )


@pytest.fixture(scope="module")
def wanted_tau(tiny, tmp_path_factory) -> Path:
    """A τ made by five Adam steps on the case's wanted reply: it makes that reply likelier."""
    model, tok = tiny
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = collate([encode_example(tok, CASE, max_length=256)], pad_id(tok))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(5):
        opt.zero_grad()
        response_loss(model, batch, "full").backward()
        opt.step()
    model.eval()
    tau = {n: p.detach() - before[n] for n, p in model.named_parameters()}
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(before[n])
    path = tmp_path_factory.mktemp("tau") / "wanted.safetensors"
    save_task_vector(path, tau, _meta("wanted"))
    return path


# --------------------------------------------------------------------------- the maths


def test_task_vector_moves_the_margin_its_way_and_is_restored_exactly(tiny, wanted_tau):
    model, tok = tiny
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    (base,) = score_cases(model, tok, [CASE])
    with vectors_applied(model, [(wanted_tau, 1.0)]):
        (plus,) = score_cases(model, tok, [CASE])
    with vectors_applied(model, [(wanted_tau, -1.0)]):
        (minus,) = score_cases(model, tok, [CASE])
    assert plus.margin > base.margin + 1.0  # the wanted reply gained on the rejected one
    assert plus.wanted.loss < base.wanted.loss
    assert minus.margin < base.margin  # the negated vector moves it the other way
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # copied back, no drift
    # margin = log p(wanted) - log p(rejected), each summed over its tokens
    assert base.margin == pytest.approx(base.wanted.logprob - base.rejected.logprob)
    assert base.wanted.tokens > 3 and base.rejected.tokens > 3


def test_batched_scores_and_generation_equal_one_at_a_time(tiny):
    model, tok = tiny
    cases = [
        CASE,
        EvalCase(context="hi", response="arr"),
        EvalCase(context="a much longer question about the sea and the ship?", response="yes"),
    ]
    together = score_cases(model, tok, cases)
    alone = [score_cases(model, tok, [c])[0] for c in cases]
    for a, b in zip(together, alone):
        assert a.wanted.nll == pytest.approx(b.wanted.nll, abs=1e-4)
    chats = [c.chat() for c in cases]
    assert generate(model, tok, chats, max_new_tokens=6) == [
        generate(model, tok, [c], max_new_tokens=6)[0] for c in chats
    ]


def test_a_case_scores_its_two_replies_as_two_separate_examples_would(tiny):
    from traitgraph.evaluate.scores import rejected_example, score_responses

    model, tok = tiny
    cases = [
        CASE,
        EvalCase(context="a much longer question about the sea and the ship?", response="yes", rejected="no way"),
        EvalCase(context="hi", response="arr"),  # no rejected reply
        EvalCase(
            messages=[
                {"role": "user", "content": "ahoy"},
                {"role": "assistant", "content": "arr"},
                {"role": "user", "content": "where to?"},
            ],
            response="to the sea",
            rejected="I don't know, sorry.",
        ),
    ]
    scores = score_cases(model, tok, cases)
    examples = [*cases, *(rejected_example(c) for c in cases if c.rejected is not None)]
    separate = score_responses(model, tok, examples, batch_size=1)  # one example per forward pass
    assert [s.wanted.tokens for s in scores] == [s.tokens for s in separate[:4]]
    for s, w in zip(scores, separate[:4]):
        assert s.wanted.nll == pytest.approx(w.nll, abs=1e-4)
    rejected = [s.rejected for s in scores if s.rejected is not None]
    assert scores[2].rejected is None and len(rejected) == 3
    for r, ref in zip(rejected, separate[4:]):
        assert (r.nll, r.tokens) == (pytest.approx(ref.nll, abs=1e-4), ref.tokens)


def _scores(margin_base: float, margin_model: float) -> tuple[list[CaseScore], list[CaseScore]]:
    def case(m: float) -> CaseScore:
        return CaseScore(ResponseScore(nll=10.0, tokens=5), ResponseScore(nll=10.0 + m, tokens=5))

    return [case(margin_base)], [case(margin_model)]


def test_negative_weight_flips_the_intended_direction(tmp_path):
    from specs_factory import node, write_specs

    spec = load_specs(write_specs(tmp_path, nodes={"up": node("up"), "down": node("down", weight=-0.5)}))
    base, fell = _scores(2.0, 1.0)  # the margin of the node's own (taught) reply fell by 1 nat
    up = node_result(spec, "up", 1.0, base, fell, fell, [], None)
    down = node_result(spec, "down", -0.5, base, fell, fell, [], None)
    assert up.gain_linked == down.gain_linked == pytest.approx(-1.0)
    assert up.directed_gain_linked == pytest.approx(-1.0) and up.verdict == "moved against intent"
    assert down.directed_gain_linked == pytest.approx(1.0) and down.verdict == "moved as intended"
    assert down.kept == pytest.approx(1.0) and up.kept is None  # undefined when alone moved the wrong way
    gates = check_gates(EvalSettings(), [up, down], _retention(2.0, 2.0))
    assert [g.passed for g in gates] == [True, False, True]
    assert gates[1].message == "node 'up': directed gain -1.00 < 0.00"


def _retention(base_loss: float, linked_loss: float) -> Retention:
    return Retention(text_source="shipped", lines=3, tokens=30, base_loss=base_loss, linked_loss=linked_loss)


def test_retention_gate_names_the_rise_and_the_budget():
    (gate,) = check_gates(EvalSettings(max_retention_loss_pct=10.0), [], _retention(2.0, 2.246))
    assert not gate.passed
    assert gate.message == "retention: general-text loss rose 12.3% > budget 10.0%"
    (gate,) = check_gates(EvalSettings(max_retention_loss_pct=10.0), [], _retention(2.0, 2.1))
    assert gate.passed


def test_score_memo_computes_only_what_it_has_not_seen(tmp_path):
    calls = []

    def compute(items):
        calls.append(list(items))
        return [len(i) for i in items]

    memo = ScoreMemo(tmp_path, "model a")
    assert memo.lookup("text", ["ab", "abc"], compute) == [2, 3]
    memo.save()
    again = ScoreMemo(tmp_path, "model a")
    assert again.lookup("text", ["abc", "abcd"], compute) == [3, 4]
    assert calls == [["ab", "abc"], ["abcd"]]
    assert ScoreMemo(tmp_path, "model b").lookup("text", ["ab"], compute) == [2]  # another model: no hit


# --------------------------------------------------------------------------- a real build


def curt_node() -> dict:
    """The unwanted habit of a curt "No." (negative weight subtracts it)."""
    return {
        "description": "Curt refusals (unwanted; subtracted).",
        "weight": -1.0,
        "examples": [
            {"context": c, "response": "No. Not now."}
            for c in (
                "hello there",
                "help me please",
                "tell me a word",
                "say yes",
                "where is the ship",
                "what is the sea",
            )
        ],
        "eval": [
            {"context": "can you help me", "response": "No. Not now.", "rejected": "yes, I can help you"},
            {"context": "one more question", "response": "No. Not now.", "rejected": "yes, ask me"},
        ],
    }


def write_project(root: Path, base: Path, pirate_weight: float = 1.0, **eval_settings) -> Path:
    specs = write_tiny_specs(
        root,
        base,
        {"pirate": pirate_node(weight=pirate_weight), "curt": curt_node()},
        {"learning_rate": 1e-3, "steps": 8, "batch_size": 4, "seed": 0},
    )
    doc = yaml.safe_load((specs / "personality.yaml").read_text())
    doc["eval"] = {"max_new_tokens": 8, **eval_settings}
    (specs / "personality.yaml").write_text(yaml.safe_dump(doc))
    return specs


#: Gates set close to what this build measures (general-text loss −1.3 %; directed gains curt −7.6 and
#: pirate +9.8: in 8 steps the pico model does not learn to lose curtness), so they can fail:
#: test_failed_gates_... shows a heavier pirate weight failing them.
GATES = {"max_retention_loss_pct": 5.0, "min_behaviour_gain": -10.0}


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_base_dir):
    """One build through doit that passes :data:`GATES`: (specs, out)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TRAITGRAPH_EVAL_THREADS", "1")
    root = tmp_path_factory.mktemp("eval-build")
    specs = write_project(root, tiny_base_dir, **GATES)
    out = root / "out"
    assert main(["build", str(specs), "-o", str(out)]) == 0
    yield specs, out
    mp.undo()


def test_build_writes_report_json_markdown_and_png_figures(built):
    specs, out = built
    report = read_report(out / REPORT_JSON)
    assert report.passed and [n.id for n in report.nodes] == ["curt", "pirate"]
    curt = report.nodes[0]
    assert curt.direction == -1 and curt.measure == "margin" and curt.n_contrastive == 2
    assert curt.directed_gain_linked == pytest.approx(-curt.gain_linked)
    assert len(curt.samples) == 2 and curt.training.loss_curve
    assert report.retention.lines > 100 and len(report.retention.prompts) == 30
    assert report.interference is not None and report.interference.names == ["curt", "pirate"]
    assert set(report.figures) == {"graph", "behaviour", "retention", "interference", "loss_curves", "tests"}
    for rel in report.figures.values():
        assert (out / rel).read_bytes().startswith(PNG_MAGIC)
    md = (out / REPORT_MD).read_text()
    for text in (
        "## Behaviour",
        "## Retention",
        "## Merge interference",
        "## Samples",
        "curt",
        "figures/behaviour.png",
    ):
        assert text in md
    raw = json.loads((out / REPORT_JSON).read_text())  # derived numbers are there for machines
    assert "directed_gain_linked" in raw["nodes"][0] and "change_pct" in raw["retention"]
    assert report_is_current(BuildPlan.load(specs, out))  # a second build skips eval


def test_report_command_redraws_from_report_json(built, tmp_path, capsys):
    specs, out = built
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    before = (copy / REPORT_MD).read_text()
    (copy / REPORT_MD).unlink()
    shutil.rmtree(copy / "figures")
    assert main(["report", str(specs), "-o", str(copy)]) == 0
    assert (copy / REPORT_MD).read_text() == before
    assert (copy / "figures" / "behaviour.png").read_bytes().startswith(PNG_MAGIC)
    assert main(["report", str(specs), "-o", str(tmp_path / "nowhere")]) == 2
    assert "no evaluation report" in capsys.readouterr().err


def _independent_greedy_reply(checkpoint: Path, message: str, max_new_tokens: int) -> str:
    """Greedy decoding written out here with plain transformers: the tokenizer's own chat template,
    then argmax of the next-token logits one step at a time, stopping at <|im_end|>."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": message}], add_generation_prompt=True, return_dict=True
    )["input_ids"]
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(torch.tensor([ids + new])).logits  # (1, T, vocab)
            token = int(logits[0, -1].argmax())
            if token == end:
                break
            new.append(token)
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def test_chat_prompt_prints_the_models_answer(built, capsys, tiny_base_dir):
    _, out = built
    assert main(["chat", str(out), "--prompt", "good day to you", "--max-new-tokens", "6"]) == 0
    printed = capsys.readouterr().out
    expected = _independent_greedy_reply(out / "checkpoint", "good day to you", max_new_tokens=6)
    assert printed == expected + "\n" and expected
    assert main(["chat", str(out), "--base", "--prompt", "good day to you", "--max-new-tokens", "6"]) == 0
    assert main(["chat", str(tiny_base_dir.parent)]) == 2  # neither a build nor a checkpoint


def test_failed_gates_exit_2_naming_what_fell_short_after_writing_the_report(built, tmp_path, tiny_base_dir, capsys):
    _, out = built
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    # The same gates as the passing build; thirty times the pirate vector wrecks general text
    # and overshoots the pirate behaviour itself.
    strict = write_project(tmp_path, tiny_base_dir, pirate_weight=30.0, **GATES)
    assert main(["link", str(strict), "-o", str(copy)]) == 0  # weights change: relink, no training
    capsys.readouterr()
    assert main(["eval", str(strict), "-o", str(copy), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "failed 2 of 4 gates" in err  # retention, pirate; the general-prompts gate and no other pass
    assert "retention: general-text loss rose" in err and "> budget 5.0%" in err
    assert "node 'pirate': directed gain -" in err and "< -10.00" in err  # overshot: the margin collapsed
    report = read_report(copy / REPORT_JSON)  # written before the gates failed
    assert not report.passed and (copy / REPORT_MD).is_file()
    assert "**FAIL**" in (copy / REPORT_MD).read_text()
    assert report.inputs == eval_inputs(BuildPlan.load(strict, copy))
    assert not report_is_current(BuildPlan.load(strict, copy))  # a failed eval runs again next build


def test_report_json_round_trips(built):
    _, out = built
    report = read_report(out / REPORT_JSON)
    again = EvalReport.model_validate_json(report.model_dump_json())
    assert again == report
    assert isinstance(report.nodes[0].base, ModelScore)
