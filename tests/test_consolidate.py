"""Consolidation: a few distillation steps bring the linked model closer to each node
alone on its contexts while the base stays the teacher on general text."""

from __future__ import annotations

import contextlib
import io

import pytest

from traitgraph.compiler.base_model import load_model, resolve_base
from traitgraph.compiler.consolidate import (
    ConsolidateSettings,
    Source,
    Teacher,
    consolidate,
    mean_kl,
)
from traitgraph.compiler.data import encode_examples, encode_text, pad_id
from traitgraph.compiler.train import train_node
from traitgraph.compiler.weights import apply_task_vectors
from traitgraph.graph import load_specs
from traitgraph.graph.replay import shipped_text
from traitgraph.graph.target import resolve_target

from conftest import pirate_node


@pytest.fixture(scope="module")
def two_nodes(tiny_base_dir, tmp_path_factory):
    """Two trained pico nodes: their targets, τ files and the base."""
    from conftest import write_tiny_specs

    root = tmp_path_factory.mktemp("consolidate")
    counting = pirate_node(
        examples=[
            {"context": f"count the {w}", "response": f"there are {i} {w}"}
            for i, w in enumerate(["ships", "days", "friends", "birds"])
        ],
        eval=[{"context": "count the sea", "response": "one sea"}],
    )
    training = {"learning_rate": 3e-3, "steps": 16, "batch_size": 4, "seed": 0, "optimizer": {"name": "adamw"}}
    spec = load_specs(write_tiny_specs(root, tiny_base_dir, {"pirate": pirate_node(), "counting": counting}, training))
    base = resolve_base(spec.personality.base, spec.specs_dir)
    out = {}
    for node in ("pirate", "counting"):
        target = resolve_target(spec, node, base.fingerprint)
        train_node(target, base, root / f"{node}.safetensors", progress=False)
        out[node] = (target, root / f"{node}.safetensors")
    return out, base


def test_consolidation_moves_the_linked_model_toward_each_node_alone(two_nodes):
    nodes, base = two_nodes
    student, tok = load_model(base)
    for _, tau in nodes.values():  # a plain linear merge at half weight: each behaviour partly lost
        apply_task_vectors(student, [tau], alpha=0.5)
    teacher = Teacher(load_model(base)[0])
    pad = pad_id(tok)
    sources = [Source(n, tau, encode_examples(tok, t.examples, max_length=256)) for n, (t, tau) in nodes.items()]
    general = [e for e in (encode_text(tok, line, max_length=64) for line in shipped_text("replay_text.txt")[:32]) if e]

    def kls():
        per_node = {s.node_id: mean_kl(student, teacher, s, s.examples, pad) for s in sources}
        return per_node, mean_kl(student, teacher, None, general, pad)

    before, before_general = kls()
    curve = consolidate(
        student, teacher, sources, general, pad, ConsolidateSettings(steps=12, learning_rate=1e-3, batch_size=4)
    )
    after, after_general = kls()
    assert len(curve) == 12
    assert all(after[n] < before[n] for n in before), (before, after)  # every node closer to itself alone
    assert sum(after.values()) < 0.85 * sum(before.values()), (before, after)
    assert after_general < max(2 * before_general, 0.05), (before_general, after_general)


def test_consolidation_changes_only_what_the_vectors_wrote(two_nodes, tmp_path):
    """A tensor no node's τ changes (here: everything but the MLPs) keeps its value bit for bit."""
    import torch
    from safetensors.torch import load_file, save_file

    nodes, base = two_nodes
    (target, tau) = nodes["pirate"]
    mlp_only = tmp_path / "pirate-mlp.safetensors"
    save_file({n: t for n, t in load_file(str(tau)).items() if ".mlp." in n}, str(mlp_only))
    student, tok = load_model(base)
    apply_task_vectors(student, [mlp_only], alpha=0.5)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    source = Source("pirate", mlp_only, encode_examples(tok, target.examples, max_length=256))
    general = [e for e in (encode_text(tok, line, max_length=64) for line in shipped_text("replay_text.txt")[:8]) if e]
    consolidate(
        student,
        Teacher(load_model(base)[0]),
        [source],
        general,
        pad_id(tok),
        ConsolidateSettings(steps=4, learning_rate=1e-3, batch_size=4),
    )
    after = dict(student.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert moved and all(".mlp." in n for n in moved), sorted(moved)


def test_teacher_switches_exactly(two_nodes):
    nodes, base = two_nodes
    model = load_model(base)[0]
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    teacher = Teacher(model)
    teacher.use(nodes["pirate"][1])
    changed = any(not torch_equal(p, original[n]) for n, p in model.named_parameters())
    teacher.use(nodes["counting"][1], -0.5)
    teacher.use(None)
    assert changed
    assert all(torch_equal(p, original[n]) for n, p in model.named_parameters())


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_consolidate_command_writes_a_loadable_checkpoint(tiny_specs, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from traitgraph.cli import main

    counting = pirate_node(
        examples=[
            {"context": f"count the {w}", "response": f"there are {i} {w}"}
            for i, w in enumerate(["ships", "days", "friends"])
        ],
        eval=[{"context": "count the sea", "response": "one sea"}],
    )
    specs = tiny_specs(nodes={"pirate": pirate_node(), "counting": counting}, training={"steps": 4})
    out = tmp_path / "out"
    assert main(["consolidate", str(specs), "-o", str(out)]) == 2  # nothing built yet
    assert "traitgraph build" in capsys.readouterr().err
    # Build with doit's output in a StringIO that outlives the test: doit keeps the stream it first
    # wrote to, and capsys closes its own when the test ends (later builds in this process would fail).
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["build", str(specs), "-o", str(out), "--", "link"]) == 0
    assert (
        main(
            [
                "consolidate",
                str(specs),
                "-o",
                str(out),
                "--steps",
                "2",
                "--batch-size",
                "2",
                "--general-lines",
                "8",
                "--lr",
                "1e-3",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "KL to pirate" in printed and "KL to counting" in printed and "KL to (base, general text)" in printed
    model = AutoModelForCausalLM.from_pretrained(out / "consolidated")
    linked = AutoModelForCausalLM.from_pretrained(out / "checkpoint")
    assert any(not torch_equal(a, b) for a, b in zip(model.parameters(), linked.parameters()))


def _set_merge(specs, merge: dict) -> None:
    import yaml

    path = specs / "personality.yaml"
    personality = yaml.safe_load(path.read_text())
    personality["merge"] = merge
    path.write_text(yaml.safe_dump(personality))


def test_merge_consolidate_distils_inside_the_link_and_the_report_shows_it(tiny_specs, tmp_path, capsys):
    import json
    import subprocess
    import sys

    from safetensors.torch import load_file

    from traitgraph.cli import main

    counting = pirate_node(
        examples=[
            {"context": f"count the {w}", "response": f"there are {i} {w}"} for i, w in enumerate(["ships", "days"])
        ],
        eval=[{"context": "count the sea", "response": "one sea", "rejected": "no idea"}],
    )
    specs = tiny_specs(nodes={"pirate": pirate_node(), "counting": counting}, training={"steps": 4})
    plain, distilled, again = tmp_path / "plain", tmp_path / "distilled", tmp_path / "again"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["build", str(specs), "-o", str(plain), "--", "link"]) == 0
    _set_merge(specs, {"consolidate": {"steps": 2, "learning_rate": 1e-3, "batch_size": 2, "general_lines": 8}})
    cmd = [sys.executable, "-m", "traitgraph", "build", str(specs), "-o"]
    done = subprocess.run([*cmd, str(distilled)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "consolidate: step 2/2" in done.stdout  # progress
    assert done.stdout.count("cache hit") == 2  # the vectors came from the cache

    record = json.loads((distilled / "checkpoint" / "consolidation.json").read_text())
    assert set(record["kl_before"]) == {"pirate", "counting", "(base, general text)"} == set(record["kl_after"])
    assert all(v >= 0 for v in [*record["kl_before"].values(), *record["kl_after"].values()])
    assert record["kl_after"] != record["kl_before"] and len(record["loss"]) == 2
    before, after = (
        load_file(plain / "checkpoint" / "model.safetensors"),
        load_file(distilled / "checkpoint" / "model.safetensors"),
    )
    assert before.keys() == after.keys() and any(not before[k].equal(after[k]) for k in before)
    assert all(before[k].dtype == after[k].dtype for k in before)
    lock = json.loads((distilled / "traitgraph.lock").read_text())
    assert "consolidation.json" in lock["outputs"] and lock["merge"]["consolidate"]["steps"] == 2
    report = (distilled / "report.md").read_text()
    assert "## Consolidation" in report and (distilled / "figures" / "consolidation.png").is_file()

    # the same specs give the same bytes; a lock alone cannot redo the distillation, and says so
    assert subprocess.run([*cmd, str(again), "--", "link"], capture_output=True, check=False).returncode == 0
    assert json.loads((again / "traitgraph.lock").read_text())["outputs"] == lock["outputs"]
    capsys.readouterr()
    assert main(["link", str(specs), "--lock", str(distilled / "traitgraph.lock"), "-o", str(tmp_path / "r")]) == 2
    assert "consolidated after linking" in capsys.readouterr().err


def test_a_bad_consolidate_field_is_named(tiny_specs, capsys):
    from traitgraph.cli import main

    specs = tiny_specs()
    _set_merge(specs, {"consolidate": {"steps": -1}})
    assert main(["check", str(specs)]) == 2
    err = capsys.readouterr().err
    assert "personality.yaml" in err and "merge.consolidate.steps" in err
