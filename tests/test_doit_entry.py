"""``doit`` in the repository root, run as a user runs it: the real ``doit``
command line, as a subprocess, on this repository's ``dodo.py``, on the pico
model.

doit prints ``.  TASK`` for a task it executes and ``-- TASK`` for one that is
up to date; these tests read exactly that.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DODO = REPO / "dodo.py"
DOIT = Path(sys.executable).with_name("doit")
TRAITGRAPH = Path(sys.executable).with_name("traitgraph")


def tiny_node(node_id: str, **extra) -> dict:
    return {
        "id": node_id,
        "description": f"Answers in the {node_id} way.",
        "examples": [
            {"context": f"question {i} for {node_id}?", "response": f"answer {i} in the {node_id} way."}
            for i in range(4)
        ],
        "eval": [{"context": f"held out for {node_id}?", "response": f"the {node_id} way.", "rejected": "no."}],
        **extra,
    }


def write_project(specs: Path, base: Path) -> Path:
    (specs / "nodes").mkdir(parents=True, exist_ok=True)
    personality = {
        "name": "doit-test",
        "base": str(base),
        "training": {"steps": 3, "batch_size": 2, "learning_rate": 1e-3},
        "merge": {"method": "ties", "density": 0.5},
        "eval": {"max_new_tokens": 4},
    }
    (specs / "personality.yaml").write_text(yaml.safe_dump(personality, sort_keys=False))
    for node in (tiny_node("alpha"), tiny_node("beta", edges=[{"to": "alpha", "kind": "related"}])):
        (specs / "nodes" / f"{node['id']}.yaml").write_text(yaml.safe_dump(node, sort_keys=False))
    return specs


def doit(*args: str, cwd: Path, cache: Path, check: bool = True) -> subprocess.CompletedProcess:
    """``doit -f REPO/dodo.py ARGS`` in ``cwd``, with its own cache."""
    env = {**os.environ, "TRAITGRAPH_CACHE": str(cache)}
    proc = subprocess.run(
        [str(DOIT), "-f", str(DODO), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"doit {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def executed(stdout: str) -> set[str]:
    """Tasks doit ran (``.  name``)."""
    return set(re.findall(r"^\.  (\S+)", stdout, flags=re.M))


def up_to_date(stdout: str) -> set[str]:
    """Tasks doit skipped as up to date (``-- name``)."""
    return set(re.findall(r"^-- (\S+)", stdout, flags=re.M))


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_base_dir):
    """A project built once with plain ``doit specs=... out=...``."""
    root = tmp_path_factory.mktemp("doit-project")
    specs = write_project(root / "specs", tiny_base_dir)
    cache = root / "cache"
    first = doit(f"specs={specs}", f"out={root / 'out'}", cwd=root, cache=cache)
    return root, specs, cache, first


ALL_TASKS = {"base", "train:alpha", "train:beta", "link", "eval"}


def test_doit_builds_the_personality(built):
    root, _, _, first = built
    assert executed(first.stdout) == ALL_TASKS - {"base"}  # a local base directory needs no preparing
    assert up_to_date(first.stdout) == {"base"}
    out = root / "out"
    assert (out / "checkpoint" / "config.json").is_file()
    assert (out / "traitgraph.lock").is_file()
    assert (out / "report.md").is_file()


def test_second_doit_executes_nothing(built):
    root, specs, cache, _ = built
    again = doit(f"specs={specs}", f"out={root / 'out'}", cwd=root, cache=cache)
    assert executed(again.stdout) == set(), again.stdout
    assert ALL_TASKS <= up_to_date(again.stdout)


def test_one_node_edit_runs_that_node_then_link_and_eval(built, tmp_path):
    root, specs, cache, _ = built
    work = tmp_path / "project"
    shutil.copytree(root / "specs", work / "specs")
    shutil.copytree(root / "out", work / "out")
    node_file = work / "specs" / "nodes" / "beta.yaml"
    node = yaml.safe_load(node_file.read_text())
    node["examples"][0]["response"] = "a different answer in the beta way."
    node_file.write_text(yaml.safe_dump(node, sort_keys=False))
    proc = doit(f"specs={work / 'specs'}", f"out={work / 'out'}", cwd=work, cache=cache)
    assert executed(proc.stdout) == {"train:beta", "link", "eval"}, proc.stdout
    assert {"base", "train:alpha"} <= up_to_date(proc.stdout)


def test_doit_list_names_every_task_with_its_doc(built):
    root, specs, cache, _ = built
    proc = doit("list", "--all", f"specs={specs}", f"out={root / 'out'}", cwd=root, cache=cache)
    rows = dict(re.findall(r"^(\S+)\s+(\S.*)$", proc.stdout, flags=re.M))
    assert set(rows) == {"base", "train", "train:alpha", "train:beta", "link", "eval"}
    assert rows["train:alpha"] == "Answers in the alpha way."
    assert "link the task vectors" in rows["link"]
    assert "score behaviour and retention" in rows["eval"]


def test_doit_info_shows_a_task(built):
    root, specs, cache, _ = built
    proc = doit("info", "link", f"specs={specs}", f"out={root / 'out'}", cwd=root, cache=cache)
    assert "link" in proc.stdout and "task_dep" in proc.stdout


def test_doit_in_parallel_writes_the_lock_traitgraph_build_writes(built, tmp_path):
    root, specs, cache, _ = built
    env = {**os.environ, "TRAITGRAPH_CACHE": str(tmp_path / "fresh-cache")}
    doit("-n", "2", f"specs={specs}", f"out={tmp_path / 'doit-out'}", cwd=tmp_path, cache=tmp_path / "fresh-cache")
    subprocess.run(
        [str(TRAITGRAPH), "build", str(specs), "-o", str(tmp_path / "tg-out")],
        env=env, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    doit_lock = (tmp_path / "doit-out" / "traitgraph.lock").read_bytes()
    assert doit_lock == (tmp_path / "tg-out" / "traitgraph.lock").read_bytes()
    assert doit_lock == (root / "out" / "traitgraph.lock").read_bytes()  # and the serial build's


def test_doit_forget_then_doit_reruns_the_task_as_a_cache_hit(built, tmp_path):
    root, specs, cache, _ = built
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    doit("forget", "train:alpha", f"specs={specs}", f"out={out}", cwd=tmp_path, cache=cache)
    proc = doit(f"specs={specs}", f"out={out}", cwd=tmp_path, cache=cache)
    assert "train:alpha: cache hit" in proc.stdout and "(verified)" in proc.stdout
    assert executed(proc.stdout) <= {"train:alpha"}


def test_doit_clean_removes_what_the_build_wrote_and_nothing_else(built, tmp_path):
    root, specs, cache, _ = built
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    (out / "notes.txt").write_text("mine")
    doit("clean", "link", "eval", f"specs={specs}", f"out={out}", cwd=tmp_path, cache=cache)
    for gone in ("checkpoint", "traitgraph.lock", "report.md", "report.json", "figures"):
        assert not (out / gone).exists(), gone
    assert (out / "notes.txt").read_text() == "mine"
    rebuilt = doit(f"specs={specs}", f"out={out}", cwd=tmp_path, cache=cache)
    assert {"link", "eval"} <= executed(rebuilt.stdout)
    assert not {"train:alpha", "train:beta"} & executed(rebuilt.stdout) - {"train:alpha", "train:beta"}
    assert (out / "traitgraph.lock").read_bytes() == (root / "out" / "traitgraph.lock").read_bytes()


def test_a_bad_spec_under_doit_exits_2_naming_the_field(tmp_path, tiny_base_dir):
    specs = write_project(tmp_path / "specs", tiny_base_dir)
    node_file = specs / "nodes" / "alpha.yaml"
    node_file.write_text(node_file.read_text() + "wieght: 2\n")
    proc = doit(f"specs={specs}", f"out={tmp_path / 'out'}", cwd=tmp_path, cache=tmp_path / "cache", check=False)
    assert proc.returncode == 2
    assert "alpha.yaml" in proc.stderr and "wieght" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "checkpoint").exists()


def test_dodo_defines_no_task_prefixed_name_that_is_not_a_task_creator():
    """doit calls every global named ``task_*`` as a task creator: an imported
    helper with that prefix crashed ``doit`` once. Only top-level ``def task_*``
    with no parameters may carry the prefix."""
    tree = ast.parse(DODO.read_text())
    offenders = []
    for stmt in tree.body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            names = [alias.asname or alias.name.split(".")[0] for alias in stmt.names]
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
        elif isinstance(stmt, ast.FunctionDef):
            names = [] if stmt.name.startswith("task_") and not stmt.args.args else [stmt.name]
        else:
            names = [n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]
        offenders += [n for n in names if n.startswith("task_") or n == "*"]
    assert offenders == []
    assert "globals()" not in DODO.read_text()  # names injected at run time escape this check


def test_dodo_fits_on_one_screen():
    assert len(DODO.read_text().splitlines()) <= 50
