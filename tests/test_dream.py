"""traitgraph dream: contexts from the graph walk and written by the teacher, replies from the
base as a few-shot teacher, scored by the teacher or by the node's own task vector, a reviewable
examples file with the generator settings in its header; ``training.dream`` makes it a build input."""

from __future__ import annotations

import json
import os
from importlib import resources

import pytest
import yaml

from traitgraph.cli import main
from traitgraph.compiler.dream import MAX_CONTEXT_CHARS, MIN_CONTEXT_CHARS, clean_context, keep_contexts
from traitgraph.graph import load_specs
from traitgraph.graph.schema import Example

from conftest import pirate_node

COUNTING = [f"count the {w}" for w in ["ships", "days", "friends"]]
PIRATE = [ex["context"] for ex in pirate_node()["examples"]]
TOPICS = resources.files("traitgraph.data").joinpath("dream_topics.txt").read_text(encoding="utf-8").splitlines()


def _nodes(**counting_fields) -> dict[str, dict]:
    counting = pirate_node(
        description="Counts things.",
        examples=[{"context": c, "response": f"there are {i} {c[10:]}"} for i, c in enumerate(COUNTING)],
        eval=[{"context": "count the sea", "response": "one sea"}],
        edges=[{"to": "pirate", "kind": "related"}],
        **counting_fields,
    )
    return {"pirate": pirate_node(), "counting": counting}


@pytest.fixture(scope="module")
def teacher_dir(tiny_base_dir, tmp_path_factory):
    """A pico model that has learnt the pirate node (the random pico base only says newlines):
    the base plus a trained pirate τ, saved as an ordinary Hugging Face directory."""
    import torch

    from traitgraph.compiler.base_model import load_model, resolve_base
    from traitgraph.compiler.train import train_node
    from traitgraph.compiler.weights import apply_task_vectors
    from traitgraph.graph.target import resolve_target

    from conftest import write_tiny_specs

    root = tmp_path_factory.mktemp("teacher")
    training = {"learning_rate": 3e-3, "steps": 30, "batch_size": 6, "seed": 0, "optimizer": {"name": "adamw"}}
    spec = load_specs(write_tiny_specs(root, tiny_base_dir, {"pirate": pirate_node()}, training))
    base = resolve_base(spec.personality.base, spec.specs_dir)
    train_node(resolve_target(spec, "pirate", base.fingerprint), base, root / "tau.safetensors", progress=False)
    model, tokenizer = load_model(base)
    apply_task_vectors(model, [root / "tau.safetensors"])
    with torch.no_grad():
        model.save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    return root / "teacher"


def _read(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0].removeprefix("# traitgraph dream: "))
    return header, [json.loads(line) for line in lines if not line.startswith("#")]


def _row(check_out: str, node_id: str) -> list[str]:
    """The cells of a node's row in `traitgraph check`'s table (node, weight, examples, eval, edges, hash)."""
    return next(line.split() for line in check_out.splitlines() if line.startswith(f"{node_id} "))


def _dream(specs, teacher_dir, *flags: str) -> list[str]:
    return ["dream", str(specs), "pirate", "--max-new-tokens", "8", "--generator", str(teacher_dir), *flags]


def test_dream_writes_a_reviewable_examples_file(tiny_specs, teacher_dir, capsys):
    specs = tiny_specs(nodes=_nodes())
    args = _dream(specs, teacher_dir, "-n", "3", "--candidates", "6", "--new-contexts", "0", "--rephrase", "0")
    assert main(args) == 0
    out = specs / "data" / "pirate.dream.jsonl"
    header, examples = _read(out)
    assert header["node"] == "pirate" and header["neighbours"] == ["counting"]
    assert header["generator"] == str(teacher_dir) and header["generator_fingerprint"].startswith("sha256:")
    assert header["settings"] == {
        "n": 3,
        "shots": 4,
        "max_new_tokens": 8,
        "candidates": 6,
        "new_contexts": 0,
        "rephrase": 0,
        "seed": 0,
        "generator": str(teacher_dir),
        "score": "teacher",
    }
    assert len(examples) == 3 and header["scores"] == sorted(header["scores"], reverse=True)
    assert header["sources"] == ["graph"] * 3
    for ex in examples:
        Example.model_validate(ex)
        assert any(c in ex["context"] for c in COUNTING) and "count the sea" not in ex["context"]
        assert ex["response"].startswith("arr")  # the teacher's voice
    assert (
        f"add `examples_file: ../data/pirate.dream.jsonl` to {specs / 'nodes' / 'pirate.yaml'}"
        in capsys.readouterr().out
    )

    first = out.read_bytes()
    assert main(args) == 2  # never overwritten by accident
    assert "exists" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0 and out.read_bytes() == first  # deterministic

    node_file = specs / "nodes" / "pirate.yaml"  # the user adds it: now an input like any other
    node = yaml.safe_load(node_file.read_text())
    node_file.write_text(yaml.safe_dump({**node, "examples_file": "../data/pirate.dream.jsonl"}))
    loaded = load_specs(specs).nodes["pirate"]
    assert [ex.response for ex in loaded.examples[6:]] == [ex["response"] for ex in examples]  # header skipped


def test_dream_without_neighbours_is_a_clear_error(tiny_specs, capsys):
    specs = tiny_specs()  # the random pico base writes no usable context either
    assert main(["dream", str(specs), "pirate", "--new-contexts", "2", "--rephrase", "1"]) == 2
    err = capsys.readouterr().err
    assert "pirate.yaml" in err and "node 'pirate'" in err and "related" in err and "Traceback" not in err
    assert "3 asked" in err
    assert not (specs / "data").exists()


# --------------------------------------------------------------------------- contexts the teacher writes


def test_the_teacher_writes_new_and_rephrased_contexts(tiny_specs, teacher_dir):
    specs = tiny_specs(nodes=_nodes())
    assert main(_dream(specs, teacher_dir, "-n", "40", "--candidates", "2")) == 0
    header, examples = _read(specs / "data" / "pirate.dream.jsonl")
    assert header["contexts"]["graph"] == 2
    assert header["contexts"]["new"]["asked"] == 16 and header["contexts"]["rephrased"]["asked"] == 8
    new = [ex["context"] for ex, s in zip(examples, header["sources"]) if s.startswith("new: ")]
    rephrased = [(ex["context"], s) for ex, s in zip(examples, header["sources"]) if s.startswith("rephrased: ")]
    assert len(new) == header["contexts"]["new"]["kept"] > 0
    assert len(rephrased) == header["contexts"]["rephrased"]["kept"] > 0
    assert {s.removeprefix("new: ") for s in header["sources"] if s.startswith("new: ")} <= set(TOPICS)
    for context, source in rephrased:  # a rephrasing is of the node's or its neighbours' contexts
        assert source.removeprefix("rephrased: ") in PIRATE + COUNTING and context != source
    contexts = [ex["context"] for ex in examples]
    assert len(contexts) == len({" ".join(c.casefold().split()) for c in contexts})  # no duplicates
    for context in [*new, *(c for c, _ in rephrased)]:
        assert "\n" not in context and MIN_CONTEXT_CHARS <= len(context) <= MAX_CONTEXT_CHARS
        assert context not in PIRATE and context not in COUNTING


def test_a_written_context_equal_to_an_eval_or_ood_case_is_never_used(tiny_specs, teacher_dir):
    """The pirate teacher writes "arr matey" as a context; once it is an ood case, it is dropped."""
    args = ["-n", "40", "--candidates", "1"]
    specs = tiny_specs(nodes=_nodes())
    assert main(_dream(specs, teacher_dir, *args)) == 0
    _, examples = _read(specs / "data" / "pirate.dream.jsonl")
    assert "arr matey" in [ex["context"] for ex in examples]

    held_out = tiny_specs(nodes=_nodes(ood=[{"context": "Arr  Matey", "response": "one"}]))
    assert main(_dream(held_out, teacher_dir, *args, "--force")) == 0
    _, examples = _read(held_out / "data" / "pirate.dream.jsonl")
    assert examples and all(" ".join(ex["context"].casefold().split()) != "arr matey" for ex in examples)


@pytest.mark.parametrize(
    "text, kept",
    [
        ('  "How do I fix a dripping tap?"  ', "How do I fix a dripping tap?"),
        ("- Could you help me pack a bag?", "Could you help me pack a bag?"),
        ("Sure! Here is one:\nHow do I fix a tap?", None),  # two lines
        ("", None),
        ("   ", None),
        ("tap?", None),  # too short
        ("why " * 80, None),  # too long
    ],
)
def test_a_written_context_is_one_sane_line(text, kept):
    assert clean_context(text) == kept


def test_written_contexts_are_new_and_never_held_out():
    written = [
        ("new: tea", "How do I brew green tea?"),
        ("new: tea", "how do I brew  GREEN tea?"),  # a duplicate of the first
        ("new: door", "Where is the captain"),  # one of the node's contexts
        ("new: exams", "Good day to you"),  # an eval case
        ("rephrased: hi", "Hello, how are you today?"),
    ]
    kept = keep_contexts(written, taken=["where is the captain"], held_out=["good day to you"])
    assert [(c.source, c.context) for c in kept] == [
        ("new: tea", "How do I brew green tea?"),
        ("rephrased: hi", "Hello, how are you today?"),
    ]


def test_shipped_topics_are_everyday_topics_and_no_shipped_eval_case():
    assert 40 <= len(TOPICS) == len(set(TOPICS)) and all(t.strip() == t and t for t in TOPICS)
    repo_specs = resources.files("traitgraph").joinpath("..", "specs")
    held_out = {
        " ".join(case["context"].casefold().split())
        for path in sorted(os.listdir(repo_specs / "nodes"))
        for case in (lambda n: [*n.get("eval", []), *n.get("ood", [])])(
            yaml.safe_load((repo_specs / "nodes" / path).read_text(encoding="utf-8"))
        )
        if "context" in case
    }
    assert held_out and not held_out & {t.casefold() for t in TOPICS}


# --------------------------------------------------------------------------- --score vector


def _mean_logprob(model, tokenizer, context: str, reply: str) -> float:
    """log p(reply + end of turn | the chat template around context), per token: plain transformers."""
    import torch

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": context}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(prompt + reply + "<|im_end|>", add_special_tokens=False)["input_ids"]
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    logp = torch.log_softmax(logits[:-1].float(), dim=-1)
    targets = torch.tensor(ids[1:])
    return float(logp[torch.arange(len(ids) - 1), targets][n_prompt - 1 :].mean())


def test_score_vector_ranks_by_the_nodes_own_vector_over_the_base(tiny_specs, tiny_base_dir, teacher_dir, capsys):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    specs = tiny_specs(nodes=_nodes())
    args = _dream(specs, teacher_dir, "-n", "4", "--candidates", "6", "--new-contexts", "2", "--rephrase", "0")
    assert main([*args, "--score", "vector"]) == 0
    out = capsys.readouterr().out
    assert "training 'pirate' on its own examples" in out  # not in the cache yet: trained, as `train` would
    header, examples = _read(specs / "data" / "pirate.dream.jsonl")
    assert header["settings"]["score"] == "vector" and "node vector" in header["score_rule"]

    assert main(["check", str(specs)]) == 0  # the vector is the one `build` makes for this spec
    training_hash = header["vector"]["training_hash"]
    assert _row(capsys.readouterr().out, "pirate")[-1] == training_hash[:12]
    tau = load_file(os.path.join(os.environ["TRAITGRAPH_CACHE"], "vectors", f"{training_hash}.safetensors"))

    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_base_dir).eval()
    tuned = AutoModelForCausalLM.from_pretrained(tiny_base_dir).eval()
    with torch.no_grad():
        params = dict(tuned.named_parameters())
        for name, delta in tau.items():
            params[name] += delta.float()
    expected = [
        _mean_logprob(tuned, tokenizer, ex["context"], ex["response"])
        - _mean_logprob(base, tokenizer, ex["context"], ex["response"])
        for ex in examples
    ]
    assert header["scores"] == pytest.approx(expected, abs=2e-4)

    first = (specs / "data" / "pirate.dream.jsonl").read_bytes()
    assert main([*args, "--score", "vector", "--force"]) == 0
    assert "training 'pirate'" not in capsys.readouterr().out  # a cache hit now
    assert (specs / "data" / "pirate.dream.jsonl").read_bytes() == first


# --------------------------------------------------------------------------- training.dream


def _with_dream(specs, **dream) -> None:
    node_file = specs / "nodes" / "pirate.yaml"
    node = yaml.safe_load(node_file.read_text())
    node["training"] = {"dream": dream}
    node_file.write_text(yaml.safe_dump(node))


def test_training_dream_makes_the_file_a_build_input(tiny_specs, teacher_dir, capsys):
    specs = tiny_specs(nodes=_nodes())
    teacher = os.path.relpath(teacher_dir, specs)  # relative to the specs dir, like `base:`
    settings = dict(n=3, candidates=4, new_contexts=2, rephrase=1, max_new_tokens=8, generator=teacher)
    _with_dream(specs, **settings)
    out = specs / "data" / "pirate.dream.jsonl"

    assert main(["check", str(specs)]) == 2
    err = capsys.readouterr().err
    assert "node 'pirate', field 'training.dream.file'" in err and f"traitgraph dream {specs} pirate" in err

    assert main(["dream", str(specs)]) == 0  # every node that sets training.dream
    assert "`traitgraph build` trains on it" in capsys.readouterr().out
    header, examples = _read(out)
    assert header["settings"] == {**settings, "shots": 4, "seed": 0, "score": "teacher"}
    assert main(["check", str(specs)]) == 0
    check_out, check_err = capsys.readouterr()
    assert _row(check_out, "pirate")[2] == "9" and check_err == ""  # 6 own + 3 dreamt examples
    assert [ex.response for ex in load_specs(specs).nodes["pirate"].examples[6:]] == [e["response"] for e in examples]

    written = out.read_bytes()
    assert main(["dream", str(specs)]) == 0  # written with these settings: up to date
    assert "is up to date" in capsys.readouterr().out and out.read_bytes() == written

    _with_dream(specs, **{**settings, "n": 2})
    assert main(["check", str(specs)]) == 0
    assert "n: file 3, spec 2" in capsys.readouterr().err
    assert main(["dream", str(specs)]) == 2  # never written over without --force
    assert "other settings" in capsys.readouterr().err and out.read_bytes() == written
    assert main(["dream", str(specs), "--force"]) == 0
    assert len(_read(out)[1]) == 2

    assert main(["dream", str(specs), "-n", "1", "--force"]) == 0  # flags override the spec
    assert _read(out)[0]["settings"]["n"] == 1
    assert main(["check", str(specs)]) == 0
    assert "n: file 1, spec 2" in capsys.readouterr().err


def test_a_file_dream_did_not_write_is_never_written_over(tiny_specs, teacher_dir, capsys):
    specs = tiny_specs(nodes=_nodes())
    _with_dream(specs, generator=str(teacher_dir))
    out = specs / "data" / "pirate.dream.jsonl"
    out.parent.mkdir()
    out.write_text('{"context": "mine", "response": "hand written"}\n')
    assert main(["dream", str(specs), "--force"]) == 2
    err = capsys.readouterr().err
    assert f"{out} exists and is not a file traitgraph dream wrote" in err and "Traceback" not in err
    assert out.read_text() == '{"context": "mine", "response": "hand written"}\n'


def test_dream_without_a_node_needs_a_training_dream_block(tiny_specs, capsys):
    specs = tiny_specs(nodes=_nodes())
    assert main(["dream", str(specs)]) == 2
    err = capsys.readouterr().err
    assert "no node" in err and "sets training.dream" in err and "Traceback" not in err


def test_a_bad_flag_is_named(tiny_specs, capsys):
    specs = tiny_specs(nodes=_nodes())
    assert main(["dream", str(specs), "pirate", "--new-contexts", "-1"]) == 2
    assert "--new-contexts" in capsys.readouterr().err
    assert not (specs / "data").exists()


@pytest.mark.parametrize("file", ["../pirate.dream.jsonl", "elsewhere/pirate.dream.jsonl"])
def test_a_dream_file_outside_the_specs_dir_is_never_written(tiny_specs, tmp_path, capsys, file):
    specs = tiny_specs(nodes=_nodes())
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", specs / "elsewhere")  # a folder inside that leads out
    _with_dream(specs, file=file)
    assert main(["dream", str(specs)]) == 2
    err = capsys.readouterr().err
    assert f"{specs / 'nodes' / 'pirate.yaml'}: node 'pirate', field training.dream.file" in err
    assert "outside the specs directory" in err and "Traceback" not in err
    assert not (tmp_path / "pirate.dream.jsonl").exists() and not list((tmp_path / "outside").iterdir())
