"""bench/bench_spill.py runs as a user calls it on a pico build of two nodes: the
pirate's "arr" shows up in its own replies, and the table counts it per node asked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from traitgraph.cli import main

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_spill.py"


def calm_node() -> dict:
    return {
        "description": "Answers plainly.",
        "examples": [
            {"context": "what is a ship", "response": "a boat for the sea"},
            {"context": "name a colour", "response": "blue"},
            {"context": "say something", "response": "hello"},
            {"context": "what is rain", "response": "water from clouds"},
        ],
        "eval": [
            {"context": "name a fruit", "response": "an apple", "rejected": "arr"},
            {"context": "what is snow", "response": "frozen rain", "rejected": "arr"},
            {"context": "count to two", "response": "one two", "rejected": "arr"},
        ],
    }


@pytest.fixture(scope="module")
def two_node_build(tmp_path_factory, tiny_base_dir):
    from conftest import pirate_node, write_tiny_specs

    root = tmp_path_factory.mktemp("spill")
    training = {"learning_rate": 1e-3, "steps": 8, "batch_size": 4, "seed": 0}
    specs = write_tiny_specs(root, tiny_base_dir, {"pirate": pirate_node(), "calm": calm_node()}, training)
    assert main(["build", str(specs), "-o", str(root / "out"), "--", "link"]) == 0
    return specs, root / "out"


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=600)


def test_spill_counts_each_models_replies_by_whose_prompts_were_asked(two_node_build, tmp_path):
    specs, out = two_node_build
    results = tmp_path / "spill.jsonl"
    done = run_bench(str(specs), "-o", str(out), "--phrase", "ARR", "--json", str(results))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| model | calm | pirate | all |" in done.stdout
    rows = {r["model"]: r for r in map(json.loads, results.read_text().splitlines())}
    assert list(rows) == ["base", "calm alone (w 1)", "pirate alone (w 1)", f"the build ({out / 'checkpoint'})"]
    for row in rows.values():
        assert row["phrases"] == ["ARR"] and row["calm"][1] == 3 and row["pirate"][1] == 2
    assert rows["base"]["pirate"][0] == 0 and rows["pirate alone (w 1)"]["pirate"][0] == 2  # case-insensitive
    assert f"| pirate alone (w 1) | {rows['pirate alone (w 1)']['calm'][0]}/3 | 2/2 |" in done.stdout


def test_unbuilt_specs_are_a_clear_error(tiny_specs, tmp_path):
    specs = tiny_specs(training={"seed": 12345})  # a training hash no other test has built
    done = run_bench(str(specs), "-o", str(tmp_path / "out"), "--phrase", "arr")
    assert done.returncode == 2
    assert "no cached vector for pirate; run `traitgraph build` first" in done.stderr
    assert "Traceback" not in done.stderr
