"""How much work the incremental builder saves, measured side by side in one run.

    python bench/bench_builder.py                 # 100 generated nodes on the pico model
    python bench/bench_builder.py --nodes 20
    python bench/bench_builder.py --example       # the shipped specs/ on SmolLM2, evaluation included (~20 min)
    python bench/bench_builder.py --example --edit-node voice

For one personality it times, in this order, each as a fresh `traitgraph build`
process (what a user runs): a full build (empty cache), a no-op rebuild, a
rebuild after editing one node's examples, and a relink after editing one
weight; the no-op's own up-to-date check is also timed in-process. It prints
each as a ratio to the full build and checks the targets:

* one-node rebuild ≤ 1.2 × (full / N + link), both less the process start (interpreter, torch and transformers imports)
* no-op check under 1 s (beyond interpreter start) for 100 nodes

With ``--example`` every step is the README's main command (`traitgraph build -n 2`:
train, link and evaluate), the edited node is the first (boundaries;
``--edit-node`` picks another), and the example's own targets are checked
instead of the one-node share above (which leaves the evaluation out): a full
build from an empty cache within 15 minutes, a one-node edit within 4.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def generated_specs(root: Path, base: Path, n: int) -> Path:
    specs = root / "specs"
    (specs / "nodes").mkdir(parents=True)
    personality = {
        "name": f"generated-{n}",
        "base": str(base),
        "training": {"steps": 4, "batch_size": 4, "learning_rate": 1e-3},
        "merge": {"method": "ties", "density": 0.2},
    }
    (specs / "personality.yaml").write_text(yaml.safe_dump(personality))
    for i in range(n):
        node = {
            "id": f"node-{i:03d}",
            "description": f"generated behaviour {i}",
            "weight": -0.5 if i % 10 == 9 else 1.0,
            "examples": [{"context": f"question {j} of node {i}", "response": f"answer {j} for {i}"} for j in range(6)],
            "eval": [{"context": f"held out {i}", "response": f"answer for {i}", "rejected": "no"}],
            "edges": [{"to": f"node-{i - 1:03d}", "kind": "related"}] if i else [],
        }
        (specs / "nodes" / f"node-{i:03d}.yaml").write_text(yaml.safe_dump(node))
    return specs


def build(specs: Path, out: Path, env: dict, jobs: int, task: str | None) -> float:
    """Seconds of one ``traitgraph build`` process (up to ``task``; None: the whole build). A build
    whose evaluation fails a gate (exit 2) still did all its work, so it counts, with a note."""
    cmd = [sys.executable, "-m", "traitgraph", "build", str(specs), "-o", str(out), "-n", str(jobs)]
    cmd += ["--", task] if task else []
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    lines = done.stderr.splitlines()
    failed = [i for i, line in enumerate(lines) if "evaluation failed" in line]
    if done.returncode == 2 and failed:
        print(f"(a gate failed after {seconds:.0f} s: {' '.join(lines[failed[0] : failed[0] + 2])})")
    elif done.returncode != 0:
        raise SystemExit(f"build failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def process_start(env: dict) -> float:
    """What every training command pays before any work: the interpreter and the
    torch/transformers imports (the trainer's own import line)."""
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import traitgraph.compiler.train, transformers.models.llama"], env=env, check=True
    )
    return time.perf_counter() - t0


def uptodate_check_seconds(specs: Path, out: Path, env: dict) -> float:
    """The no-op decision itself: load specs, hash, check cache and lock (in a fresh process)."""
    code = (
        "import time, sys; t0 = time.perf_counter();"
        "from traitgraph.builder.plan import BuildPlan;"
        f"p = BuildPlan.load({str(specs)!r}, {str(out)!r});"
        "ok = all(p.node_is_built(n) for n in p.spec.nodes) and p.link_is_current();"
        "print(ok, time.perf_counter() - t0)"
    )
    res = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    ok, seconds = res.stdout.split()
    assert ok == "True", "the no-op check found work to do"
    return float(seconds)


def last_link_seconds(out: Path) -> float:
    events = [json.loads(line) for line in (out / "build.log").read_text().splitlines()]
    return [e for e in events if e["task"] == "link"][-1]["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--example", action="store_true", help="the shipped specs/ on the real base instead")
    ap.add_argument("--edit-node", help="id of the node whose first example is edited (default: the first file's)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-builder-"))
    env = {**os.environ, "TRAITGRAPH_CACHE": str(work / "cache"), "TOKENIZERS_PARALLELISM": "false"}
    if args.example:
        specs = work / "specs"
        shutil.copytree(REPO / "specs", specs)
        task = None  # the README's main command: train, link and evaluate
    else:
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import make_tiny_base

        base = make_tiny_base(work / "base")
        specs = generated_specs(work, base, args.nodes)
        task = "link"
    out = work / "out"
    n = len(list((specs / "nodes").glob("*.yaml")))
    print(f"{specs} ({n} nodes), {args.jobs} jobs, work dir {work}")

    full = build(specs, out, env, args.jobs, task)
    link = last_link_seconds(out)
    noop = build(specs, out, env, args.jobs, task)
    check = uptodate_check_seconds(specs, out, env)
    start = process_start(env)

    nodes = sorted((specs / "nodes").glob("*.yaml"))
    first = specs / "nodes" / f"{args.edit_node}.yaml" if args.edit_node else nodes[0]
    if not first.is_file():
        raise SystemExit(f"--edit-node {args.edit_node}: no {first.name} in {specs / 'nodes'}")
    doc = yaml.safe_load(first.read_text())
    doc["examples"][0]["response"] += " (edited)"
    first.write_text(yaml.safe_dump(doc))
    one_node = build(specs, out, env, args.jobs, task)

    doc["weight"] = doc["weight"] * 0.5
    first.write_text(yaml.safe_dump(doc))
    weight_only = build(specs, out, env, args.jobs, task)

    # Targets compare the work, not the start-up every training command pays.
    work_full, work_one = full - start, one_node - start
    target = 1.2 * (work_full / n + link)
    rows = [
        ("full build", full),
        ("no-op rebuild (whole command)", noop),
        ("no-op up-to-date check", check),
        (f"one node edited ({first.stem})", one_node),
        ("one weight edited (relink)", weight_only),
    ]
    print(f"\n{'what':<32} {'seconds':>9} {'÷ full':>8}")
    for name, seconds in rows:
        print(f"{name:<32} {seconds:>9.2f} {seconds / full:>8.3f}")
    print(f"\nprocess start (interpreter, torch and transformers imports): {start:.2f} s; link alone: {link:.2f} s")
    if not args.example:  # the example's builds evaluate too, which this share does not count
        print(
            f"one-node rebuild {work_one:.2f} s of work vs target 1.2 × (full/N + link) = {target:.2f} s"
            f" (both less process start): {'met' if work_one <= target else 'MISSED'}"
        )
    print(f"no-op check {check:.3f} s vs target < 1 s: {'met' if check < 1.0 else 'MISSED'}")
    if args.example:
        for name, seconds, limit in (("full build", full, 15 * 60), ("one-node edit", one_node, 4 * 60)):
            verdict = "met" if seconds <= limit else f"MISSED by {seconds - limit:.0f} s"
            print(f"{name} {seconds / 60:.1f} min vs target {limit // 60} min: {verdict}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
