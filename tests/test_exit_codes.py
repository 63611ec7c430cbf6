"""One table of exit codes for every command, checked as a user meets it (subprocesses, pico model).

    0  success
    1  internal error (a bug: its traceback is printed)
    2  user error or failed gate (``error: ...``, no traceback)

``traitgraph build``, ``eval``, ``link``, ``check`` and plain ``doit`` on the
repository's ``dodo.py`` each get a user error, a failed gate (where the
command evaluates) and a success.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import pirate_node, write_tiny_specs

REPO = Path(__file__).resolve().parents[1]
TRAITGRAPH = Path(sys.executable).with_name("traitgraph")
DOIT = Path(sys.executable).with_name("doit")

#: a bug planted in a child process (the only way to meet one on purpose): scoring raises
PLANTED_BUG = """
import sys
import traitgraph.evaluate.run as run
def planted_bug(*args, **kwargs):
    raise RuntimeError("planted bug")
run.evaluate_build = planted_bug
from traitgraph.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "TRAITGRAPH_EVAL_THREADS": "1", "TRAITGRAPH_TRAIN_THREADS": "1"}


def traitgraph(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(TRAITGRAPH), *map(str, args)], env=_env(), capture_output=True, text=True, timeout=600)


def doit(specs: Path, out: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(DOIT), "-f", str(REPO / "dodo.py"), *args, f"specs={specs}", f"out={out}"],
        cwd=out.parent,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def user_facing(proc: subprocess.CompletedProcess) -> bool:
    """The error was said in words, without a traceback."""
    return "error:" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout


def _with_eval(specs: Path, **gates) -> Path:
    doc = yaml.safe_load((specs / "personality.yaml").read_text())
    doc["eval"] = {"max_new_tokens": 4, **gates}
    (specs / "personality.yaml").write_text(yaml.safe_dump(doc))
    return specs


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_base_dir):
    """Specs that pass their gates, built once with ``traitgraph build``; strict and broken twins."""
    root = tmp_path_factory.mktemp("exit-codes")
    training = {"learning_rate": 1e-3, "steps": 4, "batch_size": 4, "seed": 0}
    specs = _with_eval(
        write_tiny_specs(root / "ok", tiny_base_dir, {"pirate": pirate_node()}, training),
        max_retention_loss_pct=1000.0,
        min_behaviour_gain=-1000.0,
    )
    # The same node and training (so the same cached vector), with a gate no node can pass.
    strict = _with_eval(
        write_tiny_specs(root / "strict", tiny_base_dir, {"pirate": pirate_node()}, training),
        max_retention_loss_pct=1000.0,
        min_behaviour_gain=1000.0,
    )
    broken = write_tiny_specs(root / "broken", tiny_base_dir, {"pirate": pirate_node(wieght=2.0)}, training)
    out = root / "out"
    proc = traitgraph("build", specs, "-o", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"root": root, "specs": specs, "strict": strict, "broken": broken, "out": out}


def fresh_copy(project, name: str) -> Path:
    """A copy of the passing build's output, to run a failing command on."""
    copy = project["root"] / name
    shutil.copytree(project["out"], copy)
    return copy


def test_build(project):
    assert traitgraph("build", project["specs"], "-o", project["out"]).returncode == 0  # up to date
    broken = traitgraph("build", project["broken"], "-o", project["root"] / "out-broken")
    assert broken.returncode == 2 and user_facing(broken) and "wieght" in broken.stderr
    gate = traitgraph("build", project["strict"], "-o", fresh_copy(project, "out-build-gate"))
    assert gate.returncode == 2 and "evaluation failed" in gate.stderr and "< 1000.00" in gate.stderr
    unknown_task = traitgraph("build", project["specs"], "-o", project["out"], "--", "no-such-task")
    assert unknown_task.returncode == 2, unknown_task.stdout + unknown_task.stderr


def test_eval(project):
    assert traitgraph("eval", project["specs"], "-o", project["out"]).returncode == 0
    nothing_built = traitgraph("eval", project["specs"], "-o", project["root"] / "never-built")
    assert nothing_built.returncode == 2 and user_facing(nothing_built) and "build first" in nothing_built.stderr
    gate = traitgraph("eval", project["strict"], "-o", fresh_copy(project, "out-eval-gate"))
    assert gate.returncode == 2 and user_facing(gate) and "evaluation failed" in gate.stderr
    # A node too weak for its floor: the hint says how to strengthen it, not how to weaken the merge.
    assert "raise the node's weight" in gate.stderr and "lower a node's weight" not in gate.stderr


def test_link(project):
    assert traitgraph("link", project["specs"], "-o", project["out"]).returncode == 0
    no_out = traitgraph("link", "--lock", project["out"] / "traitgraph.lock")
    assert no_out.returncode == 2 and user_facing(no_out) and "-o DIR" in no_out.stderr
    broken = traitgraph("link", project["broken"], "-o", project["out"])
    assert broken.returncode == 2 and user_facing(broken)


def test_check(project):
    assert traitgraph("check", project["specs"]).returncode == 0
    broken = traitgraph("check", project["broken"])
    assert broken.returncode == 2 and user_facing(broken) and "wieght" in broken.stderr


def test_doit(project):
    assert doit(project["specs"], project["out"]).returncode == 0
    broken = doit(project["broken"], project["root"] / "out-doit-broken")
    assert broken.returncode == 2 and user_facing(broken)
    gate = doit(project["strict"], fresh_copy(project, "out-doit-gate"))
    assert gate.returncode == 2 and "evaluation failed" in gate.stderr and "Traceback" not in gate.stderr


@pytest.mark.parametrize(
    "variable", ["TRAITGRAPH_TRAIN_THREADS", "TRAITGRAPH_CONSOLIDATE_THREADS", "TRAITGRAPH_EVAL_THREADS"]
)
def test_a_thread_count_that_is_not_a_whole_number_stops_the_build_before_it_writes(project, variable):
    """Even when the step that reads it has nothing to do (every vector cached, no consolidation)."""
    out = project["root"] / f"out-{variable}"

    def run(value: str, *command) -> subprocess.CompletedProcess:
        env = {**_env(), variable: value}
        return subprocess.run(
            [*map(str, command)], cwd=out.parent, env=env, capture_output=True, text=True, timeout=600
        )

    build = run("two", TRAITGRAPH, "build", project["specs"], "-o", out)
    plain_doit = run("two", DOIT, "-f", REPO / "dodo.py", f"specs={project['specs']}", f"out={out}")
    for proc in (build, plain_doit):
        assert proc.returncode == 2 and user_facing(proc), proc.stdout + proc.stderr
        assert (
            f"environment variable {variable}: expected a whole number of threads (1 or more), got 'two'" in proc.stderr
        )
    assert not out.exists()
    if variable == "TRAITGRAPH_TRAIN_THREADS":  # the one `traitgraph train` reads
        train = run("0", TRAITGRAPH, "train", project["specs"], "pirate", "-o", out.parent / "t.safetensors")
        assert train.returncode == 2 and user_facing(train) and "got '0'" in train.stderr
        assert not (out.parent / "t.safetensors").exists()


def test_internal_error_is_1_with_its_traceback(project):
    out = fresh_copy(project, "out-bug")
    (out / "report.json").unlink()  # eval must run again
    for args in (["eval", project["specs"], "-o", out], ["build", project["specs"], "-o", out]):
        proc = subprocess.run(
            [sys.executable, "-c", PLANTED_BUG, *map(str, args)],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 1, (args[0], proc.stdout, proc.stderr)
        assert "Traceback" in proc.stderr and "planted bug" in proc.stderr


def test_link_lock_gives_the_files_the_build_wrote(project, tmp_path):
    """(Here because this module holds a CLI build on the pico model; tests/test_e2e.py does the same on the
    real base.) Both sides are hashed from disk: the original checkpoint, and the one relinked from the lock."""
    from traitgraph.atomic import sha256_file

    def file_hashes(directory: Path) -> dict[str, str]:
        return {
            p.relative_to(directory).as_posix(): sha256_file(p) for p in sorted(directory.rglob("*")) if p.is_file()
        }

    original = file_hashes(project["out"] / "checkpoint")
    assert "model.safetensors" in original
    del original["README.md"]  # the model card: the build writes it from the report, a relink does not
    relinked = tmp_path / "relinked"
    proc = traitgraph("link", project["specs"], "--lock", project["out"] / "traitgraph.lock", "-o", relinked)
    assert proc.returncode == 0, proc.stderr
    assert file_hashes(relinked / "checkpoint") == original
