"""Kill a build at every stage; the next build must repair everything.

``TRAITGRAPH_FAULT=<stage>`` makes the process that reaches that stage kill
itself with SIGKILL (see traitgraph/faults.py), exactly as ``kill -9`` or a
power cut would. One output directory and one cache go through a kill at each
stage in turn (train, cache commit, link, lock, install, eval), each run
picking up what the previous one left; after each kill we check what a user
would see, and at the end that the outputs are byte-identical to a clean
build's, that no temporary file is left in OUT or in the cache, and that no
process of any run is alive. A second test kills ``traitgraph build -n 2``
itself (SIGTERM and SIGKILL) and checks that its workers die with it and the
output is not left locked; a third kills one worker, which must stop the build
with a message instead of leaving it waiting forever.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from traitgraph.cli import main

from conftest import pirate_node, write_tiny_specs

#: stages in the order one build reaches them (install needs a checkpoint to replace: after lock)
STAGES = ["train", "commit", "link", "lock", "install", "eval"]
TRAINING = {"learning_rate": 1e-3, "steps": 4, "batch_size": 2, "seed": 0}


def build(specs: Path, out: Path, cache: Path, *extra: str, fault: str | None = None) -> subprocess.CompletedProcess:
    """``traitgraph build SPECS -o OUT`` in its own session; asserts no process of it outlives it."""
    env = {**os.environ, "TRAITGRAPH_CACHE": str(cache), "TRAITGRAPH_FAULT": fault or ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "traitgraph", "build", str(specs), "-o", str(out), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    stdout, stderr = proc.communicate(timeout=300)
    assert not group_alive(proc.pid), f"processes of the build (fault {fault}) are still alive"
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _proc_stats() -> list[tuple[int, str, int, int]]:
    """(pid, state, ppid, process group) of every process, from /proc."""
    stats = []
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = path.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        stats.append((int(path.parent.name), fields[0], int(fields[1]), int(fields[2])))
    return stats


def group_alive(pgid: int, grace: float = 10.0) -> bool:
    """Whether a process of group ``pgid`` is still running after ``grace`` seconds
    (a zombie waiting to be reaped by init is dead: it runs nothing and holds no file)."""
    deadline = time.time() + grace
    while True:
        running = [pid for pid, state, _, group in _proc_stats() if group == pgid and state != "Z"]
        if not running or time.time() > deadline:
            return bool(running)
        time.sleep(0.1)


def leftovers(out: Path, cache: Path) -> list[str]:
    """Temporary files and directories anywhere in OUT or the cache's vectors."""
    found = [p for p in out.rglob(".*") if "tmp" in p.name or ".old-" in p.name]
    vectors = cache / "vectors"
    found += [
        p for p in vectors.iterdir() if p.name != ".writers.lock" and not p.name.endswith((".safetensors", ".json"))
    ]
    stems = {p.name.split(".")[0] for p in vectors.glob("*.safetensors")}
    found += [p for p in vectors.glob("*.json") if p.stem not in stems]
    found += [p for p in vectors.glob("*.safetensors") if not (vectors / f"{p.name.split('.')[0]}.json").exists()]
    return sorted(str(p) for p in found)


def outputs(out: Path) -> dict[str, bytes]:
    """What a clean build must reproduce byte for byte: the checkpoint and the lock."""
    files = {f"checkpoint/{p.name}": p.read_bytes() for p in sorted((out / "checkpoint").iterdir())}
    files["traitgraph.lock"] = (out / "traitgraph.lock").read_bytes()
    return files


def tiny_project(root: Path, base: Path) -> Path:
    specs = write_tiny_specs(root, base, {"pirate": pirate_node()}, TRAINING)
    doc = yaml.safe_load((specs / "personality.yaml").read_text())
    doc["eval"] = {"max_new_tokens": 4, "general_text": "general.txt"}  # a short eval: this test runs it thrice
    (specs / "personality.yaml").write_text(yaml.safe_dump(doc))
    (specs / "general.txt").write_text("The sea is wide.\nA ship sails on it.\nThe captain reads a map.\n")
    return specs


def after_kill(stage: str, out: Path, cache: Path) -> None:
    """What a kill at ``stage`` leaves, as the user would find it (before the next build repairs it)."""
    vectors = list((cache / "vectors").glob("*.safetensors")) if (cache / "vectors").exists() else []
    records = list((cache / "vectors").glob("*.json")) if (cache / "vectors").exists() else []
    checkpoint, lock = out / "checkpoint", out / "traitgraph.lock"
    if stage == "train":
        assert not vectors and not checkpoint.exists()
    elif stage == "commit":  # the vector is saved, its record is not: the cache does not trust it
        assert len(vectors) == 1 and not records and not checkpoint.exists()
    elif stage == "link":  # a model-sized staging directory, no checkpoint
        assert list(out.glob(".checkpoint.tmp-*")) and not checkpoint.exists()
    elif stage == "lock":
        assert checkpoint.is_dir() and not lock.exists()
    elif stage == "install":  # between the two renames: the old checkpoint moved aside
        assert list(out.glob(".checkpoint.old-*")) and not checkpoint.exists()
    elif stage == "eval":
        assert lock.exists() and not (out / "report.json").exists()


def test_kill_at_every_stage_then_rebuild_equals_a_clean_build(tmp_path, tiny_base_dir):
    specs = tiny_project(tmp_path / "project", tiny_base_dir)
    out, cache = tmp_path / "out", tmp_path / "cache"
    for stage in STAGES:
        killed = build(specs, out, cache, fault=stage)
        assert killed.returncode == -signal.SIGKILL, f"{stage}: {killed.returncode}\n{killed.stderr}"
        after_kill(stage, out, cache)
    final = build(specs, out, cache)
    assert final.returncode == 0, final.stderr
    assert "Traceback" not in final.stderr

    clean_out, clean_cache = tmp_path / "clean-out", tmp_path / "clean-cache"
    with pytest.MonkeyPatch.context() as mp:  # in this process: torch is imported already
        mp.setenv("TRAITGRAPH_CACHE", str(clean_cache))
        assert main(["build", str(specs), "-o", str(clean_out)]) == 0
    assert outputs(out) == outputs(clean_out)
    assert (
        json.loads((out / "report.json").read_text())["passed"]
        == json.loads((clean_out / "report.json").read_text())["passed"]
    )
    assert leftovers(out, cache) == [] and leftovers(clean_out, clean_cache) == []


def children_of(pid: int) -> set[int]:
    return {child for child, _, ppid, _ in _proc_stats() if ppid == pid}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead but not yet reaped by its (new) parent
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killing_a_parallel_build_kills_its_workers_and_frees_the_output(tmp_path, tiny_base_dir, sig):
    from traitgraph.builder.output_lock import OutputLock
    from traitgraph.builder.plan import OutputLayout

    slow = {**TRAINING, "steps": 100_000}  # trains until killed
    specs = write_tiny_specs(
        tmp_path / "project", tiny_base_dir, {"a": pirate_node(), "b": pirate_node(description="Also a pirate.")}, slow
    )
    out, cache = tmp_path / "out", tmp_path / "cache"
    env = {**os.environ, "TRAITGRAPH_CACHE": str(cache)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "traitgraph", "build", str(specs), "-o", str(out), "-n", "2", "--", "link"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while len(children_of(proc.pid)) < 2 and time.time() < deadline:
            time.sleep(0.2)
        workers = children_of(proc.pid)
        assert len(workers) >= 2, "doit -n 2 started its workers"
        time.sleep(1.0)  # the workers are training
        os.kill(proc.pid, sig)  # the build itself, as a user's kill or Ctrl-\ would
        proc.wait(timeout=30)
        deadline = time.time() + 15
        while any(alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if alive(w)], "workers outlived their build"
        with OutputLock(OutputLayout(out)):  # the next build is not refused
            pass
    finally:
        if group_alive(proc.pid, grace=0):
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_worker_killed_outright_stops_a_parallel_build_instead_of_hanging(tmp_path, tiny_base_dir):
    """The out-of-memory killer's SIGKILL on one worker of ``-n 2``: doit alone would wait forever."""
    nodes = {"a": pirate_node(), "b": pirate_node(description="Also a pirate.")}
    specs = write_tiny_specs(tmp_path / "project", tiny_base_dir, nodes, TRAINING)
    out, cache = tmp_path / "out", tmp_path / "cache"
    killed = build(specs, out, cache, "-n", "2", "--", "link", fault="commit")
    assert killed.returncode == 1
    assert "build worker" in killed.stderr and "killed by SIGKILL" in killed.stderr
    assert "Traceback" not in killed.stderr
    resumed = build(specs, out, cache, "-n", "2", "--", "link")
    assert resumed.returncode == 0, resumed.stderr
    assert leftovers(out, cache) == []


def test_a_stale_lock_whose_owner_is_gone_is_taken_over(tmp_path, capfd):
    """An orphan (of an older traitgraph, say) still holds the lock; the pid the lock names is gone."""
    from traitgraph.builder.output_lock import OutputLock
    from traitgraph.builder.plan import OutputLayout

    out = OutputLayout(tmp_path / "out")
    out.state.mkdir(parents=True)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead_pid = int(gone.stdout)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; fh = open(sys.argv[1], 'a+'); fcntl.flock(fh, fcntl.LOCK_EX);"
            "fh.seek(0); fh.truncate(); fh.write('pid ' + sys.argv[2]); fh.flush(); print('locked', flush=True);"
            "time.sleep(120)",
            str(out.build_lock),
            str(dead_pid),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with OutputLock(out):
            assert out.build_lock.read_text() == f"pid {os.getpid()}"
        assert f"its owner (pid {dead_pid}) is gone" in capfd.readouterr().err
    finally:
        holder.kill()
        holder.wait()
