"""The driver's side of the Ray executor without a cluster: what a worker sends back
is committed to the cache only when it proves itself, and a bad address fails fast."""

from __future__ import annotations

import contextlib
import io
import socket

import pytest

from traitgraph.builder.plan import BuildPlan
from traitgraph.builder.ray_executor import RayExecutor, check_reachable, commit_result
from traitgraph.errors import BuildError, UserError
from traitgraph.graph.schema import RaySettings


@pytest.fixture
def trained(tiny_specs, tmp_path, monkeypatch):
    """A plan whose `pirate` vector was built locally, then taken out of the cache: (plan, vector bytes)."""
    from traitgraph.cli import main

    monkeypatch.setenv("TRAITGRAPH_CACHE", str(tmp_path / "cache"))
    specs = tiny_specs(training={"steps": 2})
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["build", str(specs), "-o", str(tmp_path / "out"), "--", "train"]) == 0
    plan = BuildPlan.load(specs, tmp_path / "out")
    h = plan.hashes["pirate"]
    data = plan.cache.vector_path(h).read_bytes()
    plan.cache.evict(h)
    return plan, data


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_object_store_result_is_committed(trained):
    plan, data = trained
    commit_result(plan, "pirate", {"bytes": data, "sha256": _sha(data)})
    assert plan.cache.verify(plan.hashes["pirate"]).read_bytes() == data


def test_damaged_bytes_are_refused(trained):
    plan, data = trained
    damaged = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(BuildError, match="arrived damaged"):
        commit_result(plan, "pirate", {"bytes": damaged, "sha256": _sha(data)})
    assert not plan.node_is_built("pirate") and plan.cache.record(plan.hashes["pirate"]) is None


def test_a_vector_for_another_hash_is_refused_and_removed(trained, tiny_specs, tmp_path):
    plan, data = trained
    other = BuildPlan.load(tiny_specs(training={"steps": 3}, root=tmp_path / "other"), tmp_path / "out2")
    assert other.hashes["pirate"] != plan.hashes["pirate"]
    with pytest.raises(BuildError, match="another training hash"):
        commit_result(other, "pirate", {"bytes": data, "sha256": _sha(data)})
    assert not other.cache.vector_path(other.hashes["pirate"]).exists()
    assert other.cache.record(other.hashes["pirate"]) is None


def test_shared_cache_the_driver_cannot_see_is_refused(trained):
    plan, data = trained
    with pytest.raises(BuildError, match="does not see it there"):
        commit_result(plan, "pirate", {"sha256": _sha(data)})  # the worker "wrote" elsewhere
    assert plan.cache.record(plan.hashes["pirate"]) is None


def test_shared_cache_file_is_verified_then_committed(trained):
    plan, data = trained
    path = plan.cache.vector_path(plan.hashes["pirate"])
    path.write_bytes(data)  # as a worker on a shared mount would
    commit_result(plan, "pirate", {"sha256": _sha(data)})
    assert plan.node_is_built("pirate")


def test_check_reachable():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_reachable(f"127.0.0.1:{server.getsockname()[1]}")  # something answers: fine
    with pytest.raises(UserError, match="nothing answers"):
        check_reachable("127.0.0.1:1", timeout=2)
    with pytest.raises(UserError, match="not HOST:PORT"):
        check_reachable("no-port-here")
    check_reachable(None), check_reachable("auto"), check_reachable("ray://somewhere:10001")  # left to Ray


def test_executor_address_from_flag_or_settings():
    settings = RaySettings(address="10.0.0.5:6379")
    assert RayExecutor(settings).address == "10.0.0.5:6379"
    assert RayExecutor(settings, "auto").address == "auto"
    assert RayExecutor(RaySettings()).address is None  # a local Ray
