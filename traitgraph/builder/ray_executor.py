"""Train nodes as Ray tasks while doit stays the scheduler.

``traitgraph build --ray [ADDRESS]`` (or a ``ray:`` section in
``personality.yaml``) hands every ``train:<node>`` that has work to do to a
Ray task with the configured resources (``num_cpus``, ``num_gpus``,
``memory``). doit still decides what is out of date and in which order: its
task action submits the Ray task and waits on the future, so ``-n N`` bounds
how many are in flight (doit runs its actions in threads for a Ray build).

How a vector reaches the cache (``ray.transfer``):

``object_store`` (default)
    The worker trains into a private temp directory and returns the file's
    bytes through Ray's object store; the driver writes them into its cache.
    Workers need the base model (same path, or the embedded package
    installed), nothing else.
``shared_cache``
    The worker writes the vector into the cache directory itself, which every
    node mounts at the driver's path; only its sha256 comes back.

Either way the *driver* commits the cache record, and only after checking the
vector's sha256 against the worker's and its header's training hash against
the key: a worker killed mid-write leaves at most a temp file, never a
trusted entry. A task whose worker process dies is retried by Ray
(``max_retries``); a user error on the worker (a bad device, a diverged node)
comes back as that error, not retried.

Ray is imported, and the cluster contacted (``ray.init``), only when the
first node actually needs training: an up-to-date build never touches it.

>>> executor = RayExecutor(RaySettings(), address="auto")     # doctest: +SKIP
>>> executor.train(plan, "listening", parents)                # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from traitgraph.errors import BuildError, UserError
from traitgraph.graph.schema import RaySettings

#: ``--ray`` given without an address: use the personality's address, else start a local Ray.
FROM_SETTINGS = "settings"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- worker side


@dataclass(frozen=True)
class TrainJob:
    """Everything a worker needs to train one node (pickled into the Ray task)."""

    spec: Any  # traitgraph.graph.Spec: where the worker finds the base
    target: Any  # traitgraph.graph.target.TrainingTarget: what it trains
    node_id: str
    training_hash: str
    base_fingerprint: str
    threads: int
    parents: list[bytes] = field(default_factory=list)  # object_store: the parents' vector bytes
    parent_paths: list[str] = field(default_factory=list)  # shared_cache: their cache paths
    out_path: str | None = None  # shared_cache: where to write the vector


def run_job(job: TrainJob) -> dict[str, Any]:
    """Train ``job`` here (on a Ray worker); a user error comes back as a value, not a retry.

    Returns ``{"sha256", "bytes" (object_store only), "steps", "final_loss"}`` or ``{"error", "kind"}``.
    """
    import torch

    from traitgraph.compiler.base_model import resolve_base
    from traitgraph.compiler.train import train_node

    torch.set_num_threads(job.threads)
    try:
        base = resolve_base(job.spec.personality.base, job.spec.specs_dir)
        if base.fingerprint != job.base_fingerprint:
            raise BuildError(
                f"node '{job.node_id}': the Ray worker sees base '{base.reference}' at {base.path} with "
                f"fingerprint {base.fingerprint[:19]}, not the driver's {job.base_fingerprint[:19]}; "
                "give every node the same base files"
            )
        with tempfile.TemporaryDirectory(prefix="traitgraph-ray-") as tmp:
            parents = [Path(p) for p in job.parent_paths]
            for i, data in enumerate(job.parents):
                parents.append(Path(tmp) / f"parent-{i}.safetensors")
                parents[-1].write_bytes(data)
            out = Path(job.out_path) if job.out_path else Path(tmp) / "vector.safetensors"
            meta = train_node(job.target, base, out, parent_vectors=parents, progress=False)
            data = out.read_bytes()
    except UserError as exc:
        return {"error": str(exc), "kind": type(exc).__name__}
    result = {"sha256": _sha256(data), "steps": meta.steps, "final_loss": meta.final_loss}
    if job.out_path is None:
        result["bytes"] = data
    return result


# --------------------------------------------------------------------------- driver side


def check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """A ``HOST:PORT`` address must accept a connection (``ray.init`` would retry for minutes).

    ``None``, ``auto`` and ``ray://`` addresses are left to Ray.
    """
    import socket

    if not address or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"ray: address {address!r} is not HOST:PORT, `auto` or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UserError(
            f"ray: nothing answers at {address} ({exc.strerror or exc}); start the cluster's head there "
            "(`ray start --head --port PORT`) or give its address to --ray / `ray.address`"
        ) from None


class RayExecutor:
    """Submits training jobs to Ray; connects on first use, thread-safe (doit's threads share it)."""

    def __init__(self, settings: RaySettings, address: str | None = FROM_SETTINGS):
        self.settings = settings
        self.address = settings.address if address == FROM_SETTINGS else address
        self._lock = threading.Lock()
        self._remote = None
        self._started_ray = False

    def _connect(self):
        with self._lock:
            if self._remote is None:
                try:
                    import ray
                except ImportError:
                    raise UserError(
                        "the build asks for Ray (`--ray` or `ray:` in personality.yaml), which is not installed; "
                        "install it with:  pip install 'traitgraph[ray]'"
                    ) from None
                if not ray.is_initialized():
                    check_reachable(self.address)
                    try:
                        local = {"include_dashboard": False} if self.address is None else {}
                        ray.init(address=self.address, log_to_driver=False, **local)
                    except (ConnectionError, RuntimeError, ValueError) as exc:
                        raise UserError(f"ray: cannot connect to the cluster at {self.address!r}: {exc}") from None
                    self._started_ray = True
                s = self.settings
                self._remote = ray.remote(run_job).options(
                    num_cpus=s.num_cpus,
                    num_gpus=s.num_gpus,
                    memory=s.memory,
                    max_retries=s.max_retries,
                    retry_exceptions=False,
                    name="traitgraph.train",
                )
            return self._remote

    def close(self) -> None:
        """Disconnect from Ray if this executor connected (nothing happens otherwise)."""
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False
            self._remote = None

    def job(self, plan, node_id: str, parents: list[Path], threads: int) -> TrainJob:
        h = plan.hashes[node_id]
        from traitgraph.graph.target import resolve_target

        target = resolve_target(plan.spec, node_id, plan.fingerprint, plan.hashes)
        job = TrainJob(plan.spec, target, node_id, h, plan.fingerprint, threads)
        if self.settings.transfer == "shared_cache":
            return replace(job, parent_paths=[str(p) for p in parents], out_path=str(plan.cache.vector_path(h)))
        return replace(job, parents=[p.read_bytes() for p in parents])

    def train(self, plan, node_id: str, parents: list[Path], threads: int) -> dict[str, Any]:
        """Train ``node_id`` on the cluster and commit its vector to ``plan.cache``."""
        import ray

        remote = self._connect()
        try:
            result = ray.get(remote.remote(self.job(plan, node_id, parents, threads)))
        except ray.exceptions.RayError as exc:
            raise BuildError(f"node '{node_id}': the Ray task failed: {exc}") from None
        if "error" in result:
            raise (BuildError if result["kind"] != "UserError" else UserError)(result["error"])
        commit_result(plan, node_id, result)
        return result


def commit_result(plan, node_id: str, result: dict[str, Any]) -> None:
    """Put a worker's vector into the cache, trusting nothing it did not prove.

    object_store: the bytes must hash to the worker's sha256; shared_cache: the
    file at the cache path must. The header must name the training hash.
    """
    from traitgraph.atomic import sha256_file, write_bytes_atomic
    from traitgraph.compiler.task_vector import read_task_vector_meta

    h = plan.hashes[node_id]
    path = plan.cache.vector_path(h)
    if "bytes" in result:
        if _sha256(result["bytes"]) != result["sha256"]:
            raise BuildError(f"node '{node_id}': the vector from the Ray worker arrived damaged; retry the build")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, result["bytes"])
    elif not path.is_file() or sha256_file(path) != result["sha256"]:
        raise BuildError(
            f"node '{node_id}': the worker wrote its vector to {path}, but the driver does not see it there "
            "(or sees other bytes); with `transfer: shared_cache` every node must mount the cache at this path"
        )
    if read_task_vector_meta(path).node_hash != h:
        plan.cache.evict(h)
        raise BuildError(f"node '{node_id}': the vector from the Ray worker is for another training hash")
    plan.cache.commit(h, node_id, plan.payload(node_id))
