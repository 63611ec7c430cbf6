"""bench/bench_training.py runs as a user calls it (on the pico model) and its
configurations change what they say: scope touches fewer tensors, anchor shrinks τ."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_training


def test_bench_training_table(tiny_specs, capsys):
    bench_training.main(
        [
            str(tiny_specs()),
            "--node",
            "pirate",
            "--configs",
            "budget,scope,anchor",
            "--threads",
            "1",
            "--general-lines",
            "4",
        ]
    )
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert set(rows) == {"budget", "scope", "anchor"}
    assert rows["budget"][1] == "32" and int(rows["scope"][8]) == 3 < int(rows["budget"][8])  # layer 1's MLP only
    assert float(rows["anchor"][7]) < float(rows["budget"][7])  # ‖τ‖
