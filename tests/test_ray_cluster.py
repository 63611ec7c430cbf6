"""Ray builds on a real three-node Ray cluster on this machine (a head with no CPUs
and two one-CPU workers, every address on loopback), compared byte for byte with a
local ``traitgraph build -n 2``.

Covered as a user sees it: the lock and checkpoint are identical; a no-op build never
contacts the cluster (it is pointed at an address where nothing listens, and passes);
a one-node edit retrains that node only; both ways of bringing a vector home
(object store, shared cache) give the same bytes; and a worker process killed in the
middle of training is retried by Ray, the build passes with the same bytes and the
cache holds nothing corrupt.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

# Ray reads this when it is imported: keep every address of the test cluster on loopback
# (by default Ray advertises the machine's network interface).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
import ray  # noqa: E402  (an optional extra of the package, but the test setup installs it: fail, never skip)

from conftest import pirate_node, write_tiny_specs  # noqa: E402

TRAINING = {"learning_rate": 1e-3, "steps": 3, "batch_size": 4, "seed": 0}
#: Where nothing listens: a build that tried to reach Ray here would fail.
NO_CLUSTER = "127.0.0.1:1"


def _stale_cluster_file() -> Path:
    return Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"


@pytest.fixture(scope="module")
def ray_cluster():
    """A head (0 CPUs) and two worker nodes (1 CPU each), all on 127.0.0.1."""
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    assert not ray_constants.ENABLE_RAY_CLUSTER, "ray was imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"
    _stale_cluster_file().unlink(missing_ok=True)  # a killed run's file would make ray.init find a dead cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        _stale_cluster_file().unlink(missing_ok=True)


def _nodes(steps: int = 3) -> dict[str, dict]:
    """Two independent nodes and one that refines the first (its parent vector travels)."""
    examples = pirate_node()["examples"]
    return {
        "pirate": pirate_node(),
        "sailor": pirate_node(description="Talks like a sailor.", examples=examples[:4]),
        "captain": pirate_node(
            description="Talks like the captain.",
            examples=examples[2:],
            edges=[{"to": "pirate", "kind": "refines"}],
        ),
    }


def _build(specs: Path, out: Path, cache: Path, monkeypatch, *args: str) -> tuple[int, str]:
    """``traitgraph build SPECS -o OUT ARGS`` as a user runs it: a fresh process. (In this
    process, ``-n 2`` would fork a pytest that has run torch on several threads, and a
    forked child that starts OpenMP threads again can hang.)"""
    env = {**os.environ, "TRAITGRAPH_CACHE": str(cache), "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-m", "traitgraph", "build", str(specs), "-o", str(out), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def _outputs(out: Path) -> dict[str, bytes]:
    """The lock file and every checkpoint file the lock records, by relative path (the model
    card, ``README.md``, is written from the specs and the report: not a lock output)."""
    files = {"traitgraph.lock": (out / "traitgraph.lock").read_bytes()}
    for p in sorted((out / "checkpoint").rglob("*")):
        if p.is_file() and p.name != "README.md":
            files[str(p.relative_to(out))] = p.read_bytes()
    return files


def _trained(out: Path) -> list[str]:
    lines = (out / "build.log").read_text().splitlines() if (out / "build.log").is_file() else []
    return sorted(json.loads(x)["node"] for x in lines if json.loads(x)["task"] == "train")


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory, tiny_base_dir):
    """``traitgraph build -n 2`` of the three-node specs, done once: (specs dir, out dir)."""
    root = tmp_path_factory.mktemp("local")
    specs = write_tiny_specs(root, tiny_base_dir, _nodes(), TRAINING)
    with pytest.MonkeyPatch.context() as mp:
        rc, log = _build(specs, root / "out", root / "cache", mp, "-n", "2")
    assert rc == 0, log[-3000:]
    return specs, root / "out"


def test_cluster_is_on_loopback(ray_cluster):
    assert ray_cluster.address.startswith("127.0.0.1:")
    ray.init(address=ray_cluster.address, log_to_driver=False)
    try:
        alive = [n for n in ray.nodes() if n["Alive"]]
        assert len(alive) == 3
        assert {n["NodeManagerAddress"] for n in alive} == {"127.0.0.1"}
    finally:
        ray.shutdown()


def test_ray_build_equals_local_then_noop_and_one_edit(ray_cluster, local_reference, tmp_path, monkeypatch):
    specs, local_out = local_reference
    out, cache = tmp_path / "out", tmp_path / "cache"
    rc, log = _build(specs, out, cache, monkeypatch, "-n", "2", "--ray", ray_cluster.address)
    assert rc == 0, log[-3000:]
    assert "on ray" in log and _trained(out) == ["captain", "pirate", "sailor"]
    assert _outputs(out) == _outputs(local_out)

    # Nothing changed: nothing runs, and the cluster is never contacted.
    rc, log = _build(specs, out, cache, monkeypatch, "-n", "2", "--ray", NO_CLUSTER)
    assert rc == 0, log[-3000:]
    assert _trained(out) == ["captain", "pirate", "sailor"]  # no new train events

    # One node edited: that node alone retrains, on the cluster; same bytes as a local build of the edit.
    edited = yaml.safe_load((specs / "nodes" / "sailor.yaml").read_text())
    edited["examples"] = edited["examples"][:3]
    edit_specs = tmp_path / "edit"
    import shutil

    shutil.copytree(specs, edit_specs)
    (edit_specs / "nodes" / "sailor.yaml").write_text(yaml.safe_dump(edited))
    rc, log = _build(edit_specs, out, cache, monkeypatch, "-n", "2", "--ray", ray_cluster.address)
    assert rc == 0, log[-3000:]
    assert _trained(out) == ["captain", "pirate", "sailor", "sailor"]
    rc, log = _build(edit_specs, tmp_path / "local-edit", tmp_path / "local-cache", monkeypatch, "-n", "2")
    assert rc == 0, log[-3000:]
    assert _outputs(out) == _outputs(tmp_path / "local-edit")


def test_shared_cache_transfer_from_the_personality(ray_cluster, local_reference, tmp_path, monkeypatch):
    """`ray:` in personality.yaml, no flag: workers write the shared cache, the driver verifies and commits."""
    specs, local_out = local_reference
    personality = yaml.safe_load((specs / "personality.yaml").read_text())
    personality["ray"] = {"address": ray_cluster.address, "transfer": "shared_cache", "num_cpus": 1}
    mine = tmp_path / "specs"
    import shutil

    shutil.copytree(specs, mine)
    (mine / "personality.yaml").write_text(yaml.safe_dump(personality))
    rc, log = _build(mine, tmp_path / "out", tmp_path / "cache", monkeypatch, "-n", "2")
    assert rc == 0, log[-3000:]
    assert "on ray" in log
    assert _outputs(tmp_path / "out") == _outputs(local_out)


def _train_task_pids() -> list[int]:
    """Ray worker processes running a traitgraph training task (Ray titles them ``ray::<task name>``)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if b"ray::traitgraph.train" in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
    return pids


def test_worker_killed_mid_training_is_retried(ray_cluster, tiny_base_dir, tmp_path, monkeypatch):
    long = {**TRAINING, "steps": 60}  # seconds of training: time to kill it half-way
    specs = write_tiny_specs(tmp_path, tiny_base_dir, {"pirate": pirate_node()}, long)
    cache = tmp_path / "cache"
    env = {**os.environ, "TRAITGRAPH_CACHE": str(cache), "PYTHONPATH": os.pathsep.join(sys.path)}
    build = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "traitgraph",
            "build",
            str(specs),
            "-o",
            str(tmp_path / "out"),
            "--ray",
            ray_cluster.address,
            "--",
            "link",
        ],  # training and the cache are the point here
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and build.poll() is None and time.monotonic() < deadline:
        pids = _train_task_pids()
        if pids:
            time.sleep(1.5)  # into the training steps
            os.kill(pids[0], signal.SIGKILL)
            killed = pids[0]
        time.sleep(0.2)
    log = build.communicate(timeout=300)[0].decode()
    assert killed is not None, "the training task was never seen running:\n" + log[-3000:]
    assert build.returncode == 0, log[-3000:]

    rc, ref_log = _build(specs, tmp_path / "local", tmp_path / "local-cache", monkeypatch, "--", "link")
    assert rc == 0, ref_log[-3000:]
    assert _outputs(tmp_path / "out") == _outputs(tmp_path / "local")

    from traitgraph.builder.cache import VectorCache

    vectors = VectorCache(cache)
    entries = vectors.entries()
    assert [e.node_id for e in entries] == ["pirate"]
    for e in entries:
        vectors.verify(e.training_hash)  # raises on a corrupt entry
    assert sorted(p.name for p in vectors.vectors.iterdir()) == sorted(  # no partial file left behind
        [f"{entries[0].training_hash}.safetensors", f"{entries[0].training_hash}.json", ".writers.lock"]
    )


def test_unreachable_cluster_is_a_clear_error(tiny_specs, tmp_path, monkeypatch):
    """Work to do and no cluster at the address: exit 2 within seconds, nothing in the cache."""
    specs = tiny_specs()
    t0 = time.monotonic()
    rc, log = _build(specs, tmp_path / "out", tmp_path / "cache", monkeypatch, "--ray", NO_CLUSTER, "--", "train")
    assert rc == 2, log[-3000:]
    assert f"nothing answers at {NO_CLUSTER}" in log and "Traceback" not in log
    assert time.monotonic() - t0 < 60
    assert not list((tmp_path / "cache").glob("vectors/*.json"))


def test_doit_with_ray_in_the_personality(ray_cluster, local_reference, tmp_path):
    """Plain ``doit -n 2`` on the repository's dodo.py: the `ray:` section sends training to the cluster."""
    import shutil

    specs, local_out = local_reference
    mine = tmp_path / "specs"
    shutil.copytree(specs, mine)
    personality = yaml.safe_load((mine / "personality.yaml").read_text())
    personality["ray"] = {"address": ray_cluster.address}
    (mine / "personality.yaml").write_text(yaml.safe_dump(personality))
    env = {**os.environ, "TRAITGRAPH_CACHE": str(tmp_path / "cache"), "PYTHONPATH": os.pathsep.join(sys.path)}
    doit = Path(sys.executable).with_name("doit")
    dodo = Path(__file__).resolve().parents[1] / "dodo.py"
    done = subprocess.run(
        [str(doit), "-f", str(dodo), "-n", "2", f"specs={mine}", f"out={tmp_path / 'out'}", "link"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("on ray") == 3
    assert _outputs(tmp_path / "out") == _outputs(local_out)
