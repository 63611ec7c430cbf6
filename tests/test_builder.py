"""The incremental builder, as a user drives it: edit specs, run the build,
see only the work that the edit calls for, and get the checkpoint a clean
build would give.

Every build here is a real ``traitgraph build`` (doit underneath) on the pico
fixture model, run in-process as the CLI runs it (a subprocess where a kill
or a second process is the point); which tasks did work is read from
``OUT/build.log``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

STEPS = 3


def node_doc(node_id: str, *, weight: float = 1.0, edges=(), n_examples: int = 4, steps: int | None = None) -> dict:
    doc = {
        "id": node_id,
        "description": f"behaviour {node_id}",
        "weight": weight,
        "examples": [
            {"context": f"question {i} for {node_id}?", "response": f"answer {i} in the {node_id} way."}
            for i in range(n_examples)
        ],
        "eval": [{"context": f"held out for {node_id}?", "response": f"the {node_id} way.", "rejected": "no."}],
        "edges": [{"to": to, "kind": kind} for to, kind in edges],
    }
    if steps is not None:
        doc["training"] = {"steps": steps}
    return doc


def write_specs(root: Path, base: Path, nodes: dict[str, dict], **personality) -> Path:
    (root / "nodes").mkdir(parents=True, exist_ok=True)
    doc = {
        "name": "builder-test",
        "base": str(base),
        "training": {"steps": STEPS, "batch_size": 2, "learning_rate": 1e-3, "optimizer": {"name": "apollo_mini"}},
        "merge": {"method": "ties", "density": 0.5},
        **personality,
    }
    (root / "personality.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    for old in (root / "nodes").glob("*.yaml"):
        if old.stem not in nodes:
            old.unlink()
    for node_id, node in nodes.items():
        (root / "nodes" / f"{node_id}.yaml").write_text(yaml.safe_dump(node, sort_keys=False))
    return root


def default_nodes() -> dict[str, dict]:
    return {
        "alpha": node_doc("alpha"),
        "beta": node_doc("beta", edges=[("alpha", "refines")]),
        "gamma": node_doc("gamma", weight=-0.5, edges=[("alpha", "conflicts")]),
    }


@dataclass
class BuildResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*argv: str, cache: Path) -> BuildResult:
    """``traitgraph ARGV...`` in this process, as the CLI runs it."""
    from traitgraph.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRAITGRAPH_CACHE", str(cache))
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(list(argv))
    return BuildResult(code, stdout.getvalue(), stderr.getvalue())


def run_build(specs: Path, out: Path, cache: Path, *extra: str, check: bool = True) -> BuildResult:
    """``traitgraph build SPECS -o OUT [extra] -- link``, in this process (as the CLI runs it)."""
    result = run_cli("build", str(specs), "-o", str(out), *extra, "--", "link", cache=cache)
    if check and result.returncode != 0:
        raise AssertionError(f"build failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


class BuildLog:
    """Reads OUT/build.log incrementally: what did the last build do?"""

    def __init__(self, out: Path):
        self.path = out / "build.log"
        self.seen = 0

    def new_events(self) -> list[dict]:
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines()
        events = [json.loads(line) for line in lines[self.seen :]]
        self.seen = len(lines)
        return events

    def last_build(self) -> tuple[set[str], bool]:
        """(nodes trained, whether the link ran) since the previous call."""
        events = self.new_events()
        return {e["node"] for e in events if e["task"] == "train"}, any(e["task"] == "link" for e in events)


def output_hashes(out: Path) -> dict[str, str]:
    return json.loads((out / "traitgraph.lock").read_text())["outputs"]


@pytest.fixture
def project(tmp_path, tiny_base_dir):
    specs = write_specs(tmp_path / "specs", tiny_base_dir, default_nodes())
    out, cache = tmp_path / "out", tmp_path / "cache"
    return specs, out, cache


def clean_build_hashes(tmp_path: Path, base: Path, nodes: dict, name: str) -> dict[str, str]:
    """Output hashes of a clean build (fresh cache, fresh out) of the given nodes."""
    specs = write_specs(tmp_path / f"{name}-specs", base, nodes)
    out = tmp_path / f"{name}-out"
    run_build(specs, out, tmp_path / f"{name}-cache")
    return output_hashes(out)


def test_rebuild_rules(project, tmp_path, tiny_base_dir):
    """The README's rebuild table, row by row."""
    specs, out, cache = project
    log = BuildLog(out)

    # A clean build trains every node and links.
    run_build(specs, out, cache)
    trained, linked = log.last_build()
    assert trained == {"alpha", "beta", "gamma"} and linked
    first = output_hashes(out)
    assert (out / "checkpoint" / "config.json").is_file()

    # Nothing changed: nothing runs.
    run_build(specs, out, cache)
    assert log.last_build() == (set(), False)

    # One node's examples edited: it and the nodes that refine it retrain, then link.
    nodes = default_nodes()
    nodes["alpha"]["examples"][0]["response"] = "a different answer."
    write_specs(specs, tiny_base_dir, nodes)
    run_build(specs, out, cache)
    assert log.last_build() == ({"alpha", "beta"}, True)
    assert output_hashes(out) == clean_build_hashes(tmp_path, tiny_base_dir, nodes, "edited")

    # Only a weight edited: no training, link only.
    nodes["gamma"]["weight"] = -0.25
    write_specs(specs, tiny_base_dir, nodes)
    run_build(specs, out, cache)
    assert log.last_build() == (set(), True)

    # Only a merge setting edited: no training, link only.
    write_specs(specs, tiny_base_dir, nodes, merge={"method": "ties", "density": 0.8})
    run_build(specs, out, cache)
    assert log.last_build() == (set(), True)

    # Reverted to the first content: every vector is a cache hit, and the
    # checkpoint is the first build's, bit for bit.
    write_specs(specs, tiny_base_dir, default_nodes())
    run_build(specs, out, cache)
    assert log.last_build() == (set(), True)
    assert output_hashes(out) == first

    # A node added: only it trains. Removed again: no training, link runs.
    added = {**default_nodes(), "delta": node_doc("delta")}
    write_specs(specs, tiny_base_dir, added)
    run_build(specs, out, cache)
    assert log.last_build() == ({"delta"}, True)
    write_specs(specs, tiny_base_dir, default_nodes())
    run_build(specs, out, cache)
    assert log.last_build() == (set(), True)
    assert output_hashes(out) == first

    # Only the description or eval cases edited: nothing retrains.
    nodes = default_nodes()
    nodes["beta"]["description"] = "a better description"
    nodes["beta"]["eval"][0]["rejected"] = "nope."
    write_specs(specs, tiny_base_dir, nodes)
    run_build(specs, out, cache)
    assert log.last_build()[0] == set()


def test_a_new_linker_relinks_without_training_and_refuses_an_old_lock(project, tmp_path, monkeypatch):
    """Upgrading to a traitgraph whose linker writes other bytes (a new LINKER_VERSION) relinks the
    build once, from the cached vectors; relinking a lock the old linker wrote is refused before
    any work, since its hashes could not be met."""
    specs, out, cache = project
    log = BuildLog(out)
    run_build(specs, out, cache)
    log.last_build()
    old_lock = tmp_path / "old.lock"
    shutil.copy(out / "traitgraph.lock", old_lock)
    assert json.loads(old_lock.read_text())["linker_version"] == "1"

    monkeypatch.setattr("traitgraph.versions.LINKER_VERSION", "2")
    status = run_cli("status", str(specs), "-o", str(out), cache=cache)
    assert "link: stale" in status.stdout and 'linker: "1" -> "2"' in status.stdout
    run_build(specs, out, cache)
    assert log.last_build() == (set(), True)
    assert json.loads((out / "traitgraph.lock").read_text())["linker_version"] == "2"
    run_build(specs, out, cache)
    assert log.last_build() == (set(), False)

    refused = run_cli("link", str(specs), "--lock", str(old_lock), "-o", str(tmp_path / "relinked"), cache=cache)
    assert refused.returncode == 2
    assert "old.lock: linked by linker version 1" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "relinked").exists()

    # A lock from before linker versions were recorded relinks once, then is current.
    lock = json.loads((out / "traitgraph.lock").read_text())
    del lock["linker_version"]
    (out / "traitgraph.lock").write_text(json.dumps(lock))
    run_build(specs, out, cache)
    assert log.last_build() == (set(), True)


def test_base_change_retrains_everything(project, tmp_path, tiny_base_dir):
    from conftest import make_tiny_base

    specs, out, cache = project
    log = BuildLog(out)
    run_build(specs, out, cache)
    log.last_build()
    other_base = make_tiny_base(tmp_path / "other-base", seed=1)
    write_specs(specs, other_base, default_nodes())
    run_build(specs, out, cache)
    assert log.last_build() == ({"alpha", "beta", "gamma"}, True)


def test_parallel_build_equals_serial(project, tmp_path):
    specs, out, cache = project
    run_build(specs, out, cache)
    parallel_out = tmp_path / "parallel-out"
    run_build(specs, parallel_out, tmp_path / "parallel-cache", "-n", "2")
    # Two clean builds (fresh caches), one serial and one parallel: the same lock, byte for byte.
    assert (parallel_out / "traitgraph.lock").read_bytes() == (out / "traitgraph.lock").read_bytes()


def test_status_explains_what_changed(project, tiny_base_dir):
    specs, out, cache = project
    run_build(specs, out, cache)
    nodes = default_nodes()
    nodes["alpha"]["examples"][1]["response"] = "edited answer."
    nodes["gamma"]["weight"] = -1.0
    write_specs(specs, tiny_base_dir, nodes)
    env = {**os.environ, "TRAITGRAPH_CACHE": str(cache)}
    proc = subprocess.run(
        [sys.executable, "-m", "traitgraph", "status", str(specs), "-o", str(out)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = proc.stdout.splitlines()
    alpha = next(line for line in lines if line.strip().startswith("alpha"))
    gamma = next(line for line in lines if line.strip().startswith("gamma"))
    assert "stale" in alpha and "up to date" in gamma
    assert any("node.examples[1].response" in line for line in lines)
    assert any("parents.alpha" in line for line in lines)  # beta refines alpha
    assert any("weight" in line and "-0.5 -> -1.0" in line for line in lines)


def test_second_build_on_same_output_is_refused(project):
    from traitgraph.builder.output_lock import OutputLock
    from traitgraph.builder.plan import OutputLayout

    specs, out, cache = project
    with OutputLock(OutputLayout(out)):
        proc = run_build(specs, out, cache, check=False)
    assert proc.returncode == 2
    assert "another build is writing to" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "checkpoint").exists()


def test_kill_during_training_then_rebuild(project, tmp_path, tiny_base_dir):
    """kill -9 mid-training leaves nothing a later build trusts; the rebuild redoes only that node."""
    specs, out, cache = project
    nodes = default_nodes()
    nodes["beta"]["training"] = {"steps": 100_000}  # slow enough to be caught mid-way
    write_specs(specs, tiny_base_dir, nodes)
    env = {**os.environ, "TRAITGRAPH_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "traitgraph", "build", str(specs), "-o", str(out), "--", "link"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    log = BuildLog(out)
    deadline = time.time() + 300
    trained: set[str] = set()
    while time.time() < deadline and not {"alpha", "gamma"} <= trained:
        trained |= log.last_build()[0]
        time.sleep(0.2)
    assert trained == {"alpha", "gamma"}, "the fast nodes finish first"
    time.sleep(1.0)  # beta is now training
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "traitgraph.lock").exists()

    from traitgraph.builder.cache import VectorCache

    assert "beta" not in {e.node_id for e in VectorCache(cache).entries()}
    del nodes["beta"]["training"]
    write_specs(specs, tiny_base_dir, nodes)
    run_build(specs, out, cache)
    assert log.last_build() == ({"beta"}, True)
    assert output_hashes(out) == clean_build_hashes(tmp_path, tiny_base_dir, nodes, "after-kill")


def test_corrupt_cached_vector_is_rebuilt(project):
    from traitgraph.builder.cache import VectorCache

    specs, out, cache = project
    log = BuildLog(out)
    run_build(specs, out, cache)
    log.last_build()
    first = output_hashes(out)

    # Flip one byte in the middle of a cached vector, keeping its size and mtime.
    entry = next(e for e in VectorCache(cache).entries() if e.node_id == "gamma")
    st = entry.path.stat()
    data = bytearray(entry.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    entry.path.write_bytes(bytes(data))
    os.utime(entry.path, ns=(st.st_atime_ns, st.st_mtime_ns))

    # The cheap check passes, so force a relink; the full check catches it.
    write_specs(
        specs,
        Path(yaml.safe_load((specs / "personality.yaml").read_text())["base"]),
        default_nodes(),
        merge={"method": "ties", "density": 0.6},
    )
    proc = run_build(specs, out, cache)
    assert "was corrupt" in proc.stderr
    assert log.last_build() == ({"gamma"}, True)
    write_specs(specs, Path(yaml.safe_load((specs / "personality.yaml").read_text())["base"]), default_nodes())
    run_build(specs, out, cache)
    assert output_hashes(out) == first


def test_relink_from_lock_and_gc(project, tmp_path):
    specs, out, cache = project
    run_build(specs, out, cache)
    env = {**os.environ, "TRAITGRAPH_CACHE": str(cache)}
    relinked = tmp_path / "relinked"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "traitgraph",
            "link",
            str(specs),
            "--lock",
            str(out / "traitgraph.lock"),
            "-o",
            str(relinked),
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    assert output_hashes(relinked) == output_hashes(out)
    for name, _ in output_hashes(out).items():
        assert (relinked / "checkpoint" / name).read_bytes() == (out / "checkpoint" / name).read_bytes()

    # gc keeps what the lock references and drops the rest.
    from traitgraph.builder.cache import VectorCache

    before = {e.training_hash for e in VectorCache(cache).entries()}
    shutil.copy(out / "traitgraph.lock", tmp_path / "keep.lock")
    lock = json.loads((out / "traitgraph.lock").read_text())
    lock["nodes"] = [n for n in lock["nodes"] if n["id"] != "gamma"]
    (tmp_path / "partial.lock").write_text(json.dumps(lock))
    subprocess.run(
        [sys.executable, "-m", "traitgraph", "cache", "gc", "--lock", str(tmp_path / "partial.lock")],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    after = {e.training_hash for e in VectorCache(cache).entries()}
    assert after == {n["training_hash"] for n in lock["nodes"]} and len(before) == 3
