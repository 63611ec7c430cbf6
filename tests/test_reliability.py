"""Nothing lost, nothing poisoned, nothing stuck: issue 10's reproductions, kept fixed.

Each test drives traitgraph as a user does (``traitgraph.cli.main([...])``, a
subprocess where a signal or a second process is the point) on the pico model
and asserts what the user would notice: the exit code, a message naming the
file and field, no traceback, and what is on disk afterwards. The numbers in
the test names are the issue's.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from traitgraph.cli import main

from conftest import pirate_node


def cli(*argv: str) -> tuple[int, str, str]:
    """``traitgraph ARGV`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def tree(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (relative name -> bytes)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def edit_personality(specs: Path, **changes) -> None:
    path = specs / "personality.yaml"
    doc = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        doc.setdefault(key, {}).update(value) if isinstance(value, dict) else doc.__setitem__(key, value)
    path.write_text(yaml.safe_dump(doc))


@pytest.fixture
def merge_models(tiny_base_dir, tmp_path) -> Path:
    """``base`` and a fine-tuned copy ``ft`` of the pico model, for ``traitgraph merge``."""
    shutil.copytree(tiny_base_dir, tmp_path / "base")
    shutil.copytree(tiny_base_dir, tmp_path / "ft")
    tuned = {k: v + 0.01 for k, v in load_file(tiny_base_dir / "model.safetensors").items()}
    save_file(tuned, tmp_path / "ft" / "model.safetensors", metadata={"format": "pt"})
    return tmp_path


def merge_config(where: Path, weight: str = "0.5", lam: str = "1.0", model: str = "ft") -> Path:
    path = where / "merge.yaml"
    path.write_text(
        f"merge_method: task_arithmetic\nbase_model: {where / 'base'}\nmodels:\n  - model: {where / model}\n"
        f"    parameters: {{weight: {weight}}}\nparameters: {{lambda: {lam}}}\n"
    )
    return path


# --------------------------------------------------------------------------- 1. data loss


def test_1_merge_never_replaces_a_directory_it_did_not_write(merge_models):
    project = merge_models / "project"
    (project / "src").mkdir(parents=True)
    (project / "config.json").write_text("{}")
    (project / "notes.txt").write_text("my notes")
    (project / "src" / "main.py").write_text("print('hi')")
    before = tree(project)

    code, _, err = cli("merge", merge_config(merge_models), project, "--no-progress")
    assert code == 2 and "Traceback" not in err
    assert f"{project}" in err and "not written by traitgraph" in err
    assert tree(project) == before
    assert [p.name for p in merge_models.iterdir() if p.name.startswith(".")] == []

    # A directory traitgraph wrote (it carries the marker) is replaced, and only that one.
    out = merge_models / "merged"
    assert cli("merge", merge_config(merge_models), out, "--no-progress")[0] == 0
    assert (out / ".traitgraph-output").is_file()
    first = tree(out)
    assert cli("merge", merge_config(merge_models, weight="0.25"), out, "--no-progress")[0] == 0
    assert tree(out) != first and (out / ".traitgraph-output").is_file()


# --------------------------------------------------------------------------- 2. poisoned checkpoints


@pytest.mark.parametrize(
    "weight, lam, field, words",
    [
        ("0.5", ".nan", "parameters.lambda", "must be a finite number, got nan"),
        ("0.5", "-1e39", "parameters.lambda", "greater than 0"),
        ("1e308", "1.0", "models[0].parameters.weight", "less than or equal to 1000"),
        (".inf", "1.0", "models[0].parameters.weight", "must be a finite number, got inf"),
    ],
)
def test_2_merge_refuses_non_finite_or_huge_settings(merge_models, weight, lam, field, words):
    out = merge_models / "out"
    code, _, err = cli("merge", merge_config(merge_models, weight=weight, lam=lam), out, "--no-progress")
    assert code == 2 and "Traceback" not in err
    assert "merge.yaml" in err and field in err and words in err
    assert not out.exists()


def test_2_a_merge_that_overflows_is_never_installed(merge_models):
    """Bounded settings can still overflow float32 with extreme weights: the finite check catches it."""
    huge = merge_models / "huge"
    shutil.copytree(merge_models / "ft", huge)
    tensors = load_file(huge / "model.safetensors")
    tensors["model.norm.weight"] = torch.full_like(tensors["model.norm.weight"], 3e38)
    save_file(tensors, huge / "model.safetensors", metadata={"format": "pt"})
    out = merge_models / "out"
    assert cli("merge", merge_config(merge_models), out, "--no-progress")[0] == 0
    before = tree(out)

    code, _, err = cli("merge", merge_config(merge_models, weight="900", model="huge"), out, "--no-progress")
    assert code == 2 and "Traceback" not in err
    assert "NaN or infinite" in err and "model.safetensors: model.norm.weight" in err
    assert tree(out) == before  # the old checkpoint is untouched
    assert [p.name for p in merge_models.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    "where, edit, field, words",
    [
        ("node", {"weight": 1e308}, "weight", "between -1000 and 1000"),
        ("node", {"weight": float("nan")}, "weight", "must be a finite number, got nan"),
        ("personality", {"merge": {"lambda": float("inf")}}, "merge.lambda", "must be a finite number, got inf"),
        ("personality", {"training": {"learning_rate": float("nan")}}, "training.learning_rate", "got nan"),
        ("personality", {"training": {"seed": 2**64}}, "training.seed", "less than or equal to 9223372036854775807"),
        ("personality", {"merge": {"seed": -1}}, "merge.seed", "greater than or equal to 0"),
    ],
)
def test_2_and_6_check_names_non_finite_and_out_of_range_values(tiny_specs, where, edit, field, words):
    specs = tiny_specs()
    if where == "node":
        path = specs / "nodes" / "pirate.yaml"
        doc = yaml.safe_load(path.read_text())
        doc.update(edit)
        path.write_text(yaml.safe_dump(doc))
    else:
        path = specs / "personality.yaml"
        edit_personality(specs, **edit)
    code, _, err = cli("check", specs)
    assert code == 2 and "Traceback" not in err
    assert str(path) in err and f"field '{field}'" in err and words in err
    if "got nan" in words:  # a NaN used to be reported as "less than or equal to 1"
        assert "less than or equal" not in err


# --------------------------------------------------------------------------- 4. lock files


@pytest.fixture
def built(tiny_specs, tmp_path):
    """A finished build (train + link) of the one-node pirate specs: (specs, out)."""
    specs = tiny_specs()
    out = tmp_path / "out"
    code, stdout, err = cli("build", specs, "-o", out, "--", "link")
    assert code == 0, err
    return specs, out


@pytest.mark.parametrize("evil", ["/elsewhere/evil", "../../elsewhere/evil"])
def test_4_a_lock_hash_that_is_a_path_is_refused(built, tmp_path, evil):
    specs, out = built
    lock = json.loads((out / "traitgraph.lock").read_text())
    lock["nodes"][0]["training_hash"] = evil
    (tmp_path / "evil.lock").write_text(json.dumps(lock))
    code, _, err = cli("link", specs, "--lock", tmp_path / "evil.lock", "-o", tmp_path / "restored")
    assert code == 2 and "Traceback" not in err
    assert "evil.lock" in err and "nodes[0].training_hash" in err and "sha256 in hex" in err
    assert not (tmp_path / "restored").exists()


def test_8_link_lock_for_another_base_says_so_before_converting(built, tmp_path):
    specs, out = built
    lock = json.loads((out / "traitgraph.lock").read_text())
    lock["base"] = {"reference": "smollm2-135m-instruct", "fingerprint": "sha256:" + "0" * 64}
    (tmp_path / "other.lock").write_text(json.dumps(lock))
    cache = Path(os.environ["TRAITGRAPH_CACHE"])
    converted = set((cache / "bases").glob("*/config.json"))  # the e2e build may have converted it already
    code, _, err = cli("link", specs, "--lock", tmp_path / "other.lock", "-o", tmp_path / "restored")
    assert code == 2 and "fingerprint" in err and "nothing was converted" in err
    assert set((cache / "bases").glob("*/config.json")) == converted  # the embedded GGUF was not converted
    assert not (tmp_path / "restored").exists()


def test_6_deeply_nested_lock_is_a_message(tmp_path):
    (tmp_path / "deep.lock").write_text("[" * 100_000 + "]" * 100_000)
    code, _, err = cli("link", "--lock", tmp_path / "deep.lock", "-o", tmp_path / "o")
    assert code == 2 and "deep.lock" in err and "nested too deeply" in err and "Traceback" not in err


# --------------------------------------------------------------------------- 5. confinement


def _fifo(path: Path) -> None:
    os.mkfifo(path)


@pytest.mark.parametrize(
    "name, make, words",
    [
        ("symlink outside", lambda p, outside: p.symlink_to(outside / "stranger.yaml"), "outside the specs directory"),
        ("/dev/zero", lambda p, outside: p.symlink_to("/dev/zero"), "outside the specs directory"),
        ("fifo", lambda p, outside: _fifo(p), "not a regular file"),
    ],
)
def test_5_node_files_are_confined_to_the_specs_dir(tiny_specs, tmp_path, name, make, words):
    specs = tiny_specs()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "stranger.yaml").write_text(yaml.safe_dump({"id": "stranger", **pirate_node()}))
    make(specs / "nodes" / "stranger.yaml", outside)
    proc = subprocess.run(
        [sys.executable, "-m", "traitgraph", "check", str(specs)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "stranger.yaml" in proc.stderr and words in proc.stderr


def test_5_a_nodes_dir_symlinked_outside_is_refused(tiny_specs, tmp_path):
    specs = tiny_specs()
    shutil.move(specs / "nodes", tmp_path / "nodes-elsewhere")
    (specs / "nodes").symlink_to(tmp_path / "nodes-elsewhere")
    code, _, err = cli("check", specs)
    assert code == 2 and "pirate.yaml" in err and "outside the specs directory" in err


@pytest.mark.parametrize(
    "general_text, words",
    [
        ("/etc/passwd", "outside the specs directory"),
        ("missing.txt", "does not exist"),
    ],
)
def test_5_and_8_general_text_is_confined_and_must_exist(tiny_specs, general_text, words):
    specs = tiny_specs()
    edit_personality(specs, eval={"general_text": general_text})
    code, _, err = cli("check", specs)
    assert code == 2 and "Traceback" not in err
    assert "personality.yaml" in err and "field 'eval.general_text'" in err and words in err


# --------------------------------------------------------------------------- 6. messages, not tracebacks


def test_6_deeply_nested_yaml_and_jsonl_are_messages(tiny_specs):
    specs = tiny_specs()
    (specs / "nodes" / "deep.yaml").write_text("a: " + "[" * 50_000 + "]" * 50_000 + "\n")
    code, _, err = cli("check", specs)
    assert code == 2 and "deep.yaml" in err and "nested too deeply" in err and "Traceback" not in err

    (specs / "nodes" / "deep.yaml").unlink()
    (specs / "nodes" / "more.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n")
    path = specs / "nodes" / "pirate.yaml"
    doc = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**doc, "examples_file": "more.jsonl"}))
    code, _, err = cli("check", specs)
    assert code == 2 and "more.jsonl" in err and "line 1" in err and "nested too deeply" in err


def test_6_deeply_nested_mergekit_yaml_is_a_message(tmp_path):
    (tmp_path / "deep.yaml").write_text("models: " + "[" * 50_000 + "]" * 50_000 + "\n")
    code, _, err = cli("merge", tmp_path / "deep.yaml", tmp_path / "out")
    assert code == 2 and "deep.yaml" in err and "nested too deeply" in err and "Traceback" not in err


def test_6_output_that_is_a_file_or_unwritable_is_a_message(tiny_specs, tmp_path):
    specs = tiny_specs()
    (tmp_path / "a-file").write_text("mine")
    code, _, err = cli("build", specs, "-o", tmp_path / "a-file", "--", "link")
    assert code == 2 and "-o" in err and "a-file" in err and "not a directory" in err
    assert (tmp_path / "a-file").read_text() == "mine"

    # A parent that is a file: the directory cannot be created (a permission-free stand-in for an
    # unwritable directory, which root, who runs CI here, could write anyway).
    code, _, err = cli("build", specs, "-o", tmp_path / "a-file" / "out", "--", "link")
    assert code == 2 and "Traceback" not in err and "cannot create the output directory" in err
    assert (tmp_path / "a-file").read_text() == "mine"


def test_6_a_full_disk_is_a_message_naming_the_file(tmp_path):
    """A write that fails with ENOSPC (/dev/full is a disk that is always full) inside an
    atomic write is reported with the file's name, and leaves no temporary file."""
    from traitgraph.atomic import atomic_path
    from traitgraph.errors import environment_error

    with pytest.raises(OSError) as caught:
        with atomic_path(tmp_path / "report.md"):
            with open("/dev/full", "w") as fh:
                fh.write("x")
    assert str(environment_error(caught.value)) == f"{tmp_path / 'report.md'}: No space left on device"
    assert list(tmp_path.iterdir()) == []
    assert environment_error(ValueError("a bug")) is None


def test_6_train_output_is_checked_before_training(tiny_specs, tmp_path):
    specs = tiny_specs()
    t0 = time.perf_counter()
    code, _, err = cli("train", specs, "pirate", "-o", tmp_path)
    assert code == 2 and "-o" in err and "is a directory" in err and "Traceback" not in err
    assert time.perf_counter() - t0 < 5  # no training happened


def test_6_chat_and_build_refuse_non_positive_counts(tmp_path):
    for argv, arg in [
        (["chat", tmp_path, "--max-new-tokens", "0"], "--max-new-tokens"),
        (["build", tmp_path, "-n", "0"], "-n/--jobs"),
        (["build", tmp_path, "-n", "-3"], "-n/--jobs"),
    ]:
        code, _, err = cli(*argv)
        assert code == 2 and arg in err and "must be 1 or more" in err


def test_6_cache_gc_never_deletes_a_vector_being_saved(built, tmp_path):
    from traitgraph.builder.cache import VectorCache

    specs, out = built
    cache = VectorCache()
    before = {e.training_hash for e in cache.entries()}
    lock = json.loads((out / "traitgraph.lock").read_text())
    lock["nodes"] = []  # a lock that keeps nothing: gc would delete every vector
    (tmp_path / "empty.lock").write_text(json.dumps(lock))
    with cache.writing():  # the lock a training process holds while it trains and saves a vector
        code, _, err = cli("cache", "gc", "--lock", tmp_path / "empty.lock")
    assert code == 2 and "saving task vectors" in err and "Traceback" not in err
    assert {e.training_hash for e in cache.entries()} == before


def test_6_doit_state_deleted_mid_build_is_recreated(tmp_path):
    from doit.dependency import JSONCodec

    from traitgraph.builder.doit_state import RecoveringSqliteDB

    path = tmp_path / "state" / "doit.sqlite"
    path.parent.mkdir()
    db = RecoveringSqliteDB(str(path), JSONCodec())
    db.set("train:pirate", "training_hash", "abc")
    shutil.rmtree(path.parent)  # a user cleans up OUT/.traitgraph while the build runs
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        db.dump()
    assert "recreated" in err.getvalue()
    rows = sqlite3.connect(path).execute("select task_id from doit").fetchall()
    assert rows == [("train:pirate",)]


# --------------------------------------------------------------------------- 7. the base's own directory


def test_7_building_into_the_base_directory_is_refused(tiny_specs, tiny_base_dir):
    specs = tiny_specs()
    before = tree(tiny_base_dir)
    for out in (tiny_base_dir, tiny_base_dir / "out"):
        code, _, err = cli("build", specs, "-o", out, "--", "link")
        assert code == 2 and "base model's directory" in err and "Traceback" not in err
    assert tree(tiny_base_dir) == before


# --------------------------------------------------------------------------- 8. words


def test_8_a_nul_byte_gets_a_line_number(tiny_specs):
    specs = tiny_specs()
    path = specs / "nodes" / "pirate.yaml"
    lines = path.read_text().splitlines()
    lines[2] = lines[2] + "\0"
    path.write_text("\n".join(lines) + "\n")
    code, _, err = cli("check", specs)
    assert code == 2 and "pirate.yaml" in err and "line 3" in err


def test_1_and_8_a_user_error_inside_a_build_exits_2_with_the_message(tiny_specs, tmp_path):
    """The link task finds OUT/checkpoint holding the user's own files: exit 2, the files are kept."""
    specs = tiny_specs()
    out = tmp_path / "out"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "config.json").write_text("{}")
    (out / "checkpoint" / "notes.txt").write_text("mine")
    code, _, err = cli("build", specs, "-o", out, "--", "link")
    assert code == 2 and "Traceback" not in err
    assert f"{out / 'checkpoint'}" in err and "not written by traitgraph" in err
    assert "returned False" not in err and "Python Task failed" not in err
    assert (out / "checkpoint" / "notes.txt").read_text() == "mine"
    assert not (out / "traitgraph.lock").exists()


# --------------------------------------------------------------------------- 9. modes


def test_9_reports_and_locks_follow_the_umask(built, tmp_path):
    from traitgraph.atomic import write_text_atomic

    specs, out = built
    umask = os.umask(0o022)
    os.umask(umask)
    expected = 0o666 & ~umask
    assert stat.S_IMODE((out / "traitgraph.lock").stat().st_mode) == expected
    old = os.umask(0o002)
    try:
        write_text_atomic(tmp_path / "report.md", "# report\n")
        assert stat.S_IMODE((tmp_path / "report.md").stat().st_mode) == 0o664
    finally:
        os.umask(old)


def test_8_a_nan_loss_is_called_nan_in_the_gate():
    from traitgraph.evaluate.report import Retention, check_gates
    from traitgraph.graph.schema import EvalSettings

    retention = Retention(
        text_source="shipped", lines=3, tokens=30, base_loss=2.0, linked_loss=float("nan"), prompts=[]
    )
    (gate,) = check_gates(EvalSettings(), [], retention)
    assert not gate.passed
    assert gate.message == "retention: general-text loss is NaN, not a number (budget 1.0%)"
    assert "nan%" not in gate.message


def test_7_linking_into_the_base_directory_is_refused(built, tiny_base_dir):
    specs, _ = built
    before = tree(tiny_base_dir)
    code, _, err = cli("link", specs, "-o", tiny_base_dir / "linked")
    assert code == 2 and "base model's directory" in err and "Traceback" not in err
    assert tree(tiny_base_dir) == before


def test_7_leftovers_of_dead_installs_are_swept_and_a_moved_aside_checkpoint_restored(merge_models):
    """What kills at three points of an install leave, repaired by the next merge into the same place."""
    from traitgraph.linker.install import MARKER, sweep_leftovers

    out = merge_models / "merged"
    assert cli("merge", merge_config(merge_models), out, "--no-progress")[0] == 0
    good = tree(out)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    ).stdout.strip()
    os.rename(out, merge_models / f".merged.old-{dead}-abc")  # killed between the two renames
    (merge_models / f".merged.tmp-{dead}-def").mkdir()  # killed mid-link
    (merge_models / f".merged.tmp-{dead}-def" / "model.safetensors").write_bytes(b"\0" * 1000)
    half = merge_models / f".merged.old-{dead}-ghi"  # killed while deleting an old checkpoint
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\0" * 10)

    sweep_leftovers(out)
    assert tree(out) == good and (out / MARKER).is_file()
    assert [p.name for p in merge_models.iterdir() if p.name.startswith(".")] == []

    mine = merge_models / f".merged.tmp-{os.getpid()}-live"  # a live process's staging is never touched
    mine.mkdir()
    assert cli("merge", merge_config(merge_models, weight="0.25"), out, "--no-progress")[0] == 0
    assert mine.is_dir()
