"""Ray's overhead: the example built on a two-worker local Ray cluster against `traitgraph build -n 2`.

    python bench/bench_ray.py              # the shipped specs/ on the pico model, to `link`
    python bench/bench_ray.py --repeat 2

Each build is a fresh `traitgraph build` process (what a user runs) into a fresh
cache, so every node trains: first `-n 2` locally, then `-n 2 --ray ADDRESS` on
a cluster started beforehand (a head with no CPUs and two one-CPU worker nodes,
on 127.0.0.1; not timed). The first Ray build meets *cold* workers (each imports
torch and transformers for its first task); a second one meets them warm, as on
a long-lived cluster. Both are checked byte-identical to the local build (lock
file and checkpoint). Target: warm Ray within 1.3x of `-n 2`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TARGET = 1.3


def example_on(base: Path, root: Path) -> Path:
    """The shipped specs/ with the base swapped for ``base``."""
    specs = root / "specs"
    shutil.copytree(REPO / "specs", specs)
    personality = yaml.safe_load((specs / "personality.yaml").read_text())
    personality["base"] = str(base)
    (specs / "personality.yaml").write_text(yaml.safe_dump(personality, sort_keys=False))
    return specs


def timed_build(specs: Path, out: Path, cache: Path, *extra: str) -> float:
    env = {**os.environ, "TRAITGRAPH_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "traitgraph", "build", str(specs), "-o", str(out), "-n", "2", *extra, "--", "link"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"build failed ({' '.join(cmd)}):\n{done.stdout.decode()[-3000:]}")
    return seconds


def outputs(out: Path) -> dict[str, bytes]:
    files = {"traitgraph.lock": (out / "traitgraph.lock").read_bytes()}
    files.update(
        {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "checkpoint").rglob("*")) if p.is_file()}
    )
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=1, help="warm Ray builds to time (the best counts)")
    args = ap.parse_args()
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback only; read when ray is imported
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.path.insert(0, str(REPO / "tests"))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    from ray.cluster_utils import Cluster

    from conftest import make_tiny_base

    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        work = Path(tmp)
        specs = example_on(make_tiny_base(work / "base"), work)
        local = timed_build(specs, work / "local", work / "cache-local")
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        try:
            for _ in range(2):
                cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            address = cluster.address
            cold = timed_build(specs, work / "ray-0", work / "cache-ray-0", "--ray", cluster.address)
            warm = min(
                timed_build(specs, work / f"ray-{i}", work / f"cache-ray-{i}", "--ray", cluster.address)
                for i in range(1, args.repeat + 1)
            )
        finally:
            cluster.shutdown()
        identical = all(outputs(work / f"ray-{i}") == outputs(work / "local") for i in range(args.repeat + 1))
    n_nodes = len(list((REPO / "specs" / "nodes").glob("*.yaml")))
    print(f"example ({n_nodes} nodes) on the pico model, to `link`, cluster at {address}")
    print("| build | seconds | x local -n 2 |\n|---|---:|---:|")
    print(f"| traitgraph build -n 2 | {local:.1f} | 1.00 |")
    print(f"| --ray, cold workers | {cold:.1f} | {cold / local:.2f} |")
    print(f"| --ray, warm workers | {warm:.1f} | {warm / local:.2f} |")
    print(f"byte-identical lock and checkpoint: {'yes' if identical else 'NO'}")
    verdict = "met" if warm / local <= TARGET else "missed"
    print(f"target warm <= {TARGET}x local: {verdict}")
    sys.exit(0 if identical else 1)


if __name__ == "__main__":
    main()
