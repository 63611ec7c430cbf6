"""traitgraph dream: contexts from the graph walk, replies from the base as a few-shot
teacher, a reviewable examples file with the generator settings in its header."""

from __future__ import annotations

import json

import pytest
import yaml

from traitgraph.cli import main
from traitgraph.graph import load_specs
from traitgraph.graph.schema import Example

from conftest import pirate_node


def _nodes() -> dict[str, dict]:
    counting = pirate_node(
        description="Counts things.",
        examples=[
            {"context": f"count the {w}", "response": f"there are {i} {w}"}
            for i, w in enumerate(["ships", "days", "friends"])
        ],
        eval=[{"context": "count the sea", "response": "one sea"}],
        edges=[{"to": "pirate", "kind": "related"}],
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


def test_dream_writes_a_reviewable_examples_file(tiny_specs, teacher_dir, capsys):
    specs = tiny_specs(nodes=_nodes())
    args = [
        "dream",
        str(specs),
        "pirate",
        "-n",
        "3",
        "--candidates",
        "6",
        "--max-new-tokens",
        "8",
        "--generator",
        str(teacher_dir),
    ]
    assert main(args) == 0
    out = specs / "data" / "pirate.dream.jsonl"
    header, examples = _read(out)
    assert header["node"] == "pirate" and header["neighbours"] == ["counting"]
    assert header["generator"] == str(teacher_dir) and header["generator_fingerprint"].startswith("sha256:")
    assert header["settings"] == {"n": 3, "shots": 4, "max_new_tokens": 8, "candidates": 6, "seed": 0}
    assert len(examples) == 3 and header["scores"] == sorted(header["scores"], reverse=True)
    counting = [f"count the {w}" for w in ["ships", "days", "friends"]]
    for ex in examples:
        Example.model_validate(ex)
        assert any(c in ex["context"] for c in counting) and "count the sea" not in ex["context"]
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
    specs = tiny_specs()
    assert main(["dream", str(specs), "pirate"]) == 2
    err = capsys.readouterr().err
    assert "pirate.yaml" in err and "node 'pirate'" in err and "related" in err and "Traceback" not in err
    assert not (specs / "data").exists()
