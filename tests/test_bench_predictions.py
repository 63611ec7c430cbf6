"""bench/predictions.py and bench/bench_optimizer.py --node run as a user calls them (on the pico
model): the tables have a row per model trained, the numbers come from the runs, and a run's JSON
prints the same tables again with --combine."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_optimizer
import predictions


def _rows(markdown: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines() if line.startswith("| ")]


def test_context_probe_prediction_trains_frozen_and_full_and_combines(tiny_specs, tmp_path, capsys):
    record = tmp_path / "predictions.json"
    predictions.main([str(tiny_specs()), "--only", "3", "--nodes", "pirate", "--json", str(record)])
    printed = capsys.readouterr().out
    rows = _rows(printed[printed.index("## Prediction 3") :])
    assert [r[:3] for r in rows[1:]] == [["(base)", "-", "-"], ["pirate", "frozen", "0"], ["pirate", "full", "0"]]
    assert all(r[5] == "30" for r in rows[1:])  # the 30 shipped probe questions
    assert all(0 <= int(r[4]) <= 30 for r in rows[1:])
    frozen, full = rows[2], rows[3]
    assert frozen[3] != full[3]  # two trainings, two vectors: their gains differ
    assert "pirate: frozen finds" in printed and "(1 seed)" in printed

    (result,) = [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines()]
    assert len(result["results"]["3"]["rows"]) == 3
    predictions.main(["--only", "3", "--combine", str(record), "--json", str(tmp_path / "again.json")])
    again = capsys.readouterr().out
    assert _rows(again[again.index("## Prediction 3") :]) == rows


def test_optimizer_at_the_nodes_budget_is_judged_against_adamw(tiny_specs, capsys):
    specs = tiny_specs()
    bench_optimizer.main(
        ["--node", "pirate", "--specs", str(specs), "--optimizers", "adamw,apollo_mini", "--threads", "1"]
    )
    printed = capsys.readouterr().out
    rows = {(r[0], r[1]): r for r in _rows(printed)[1:]}
    adamw = rows[("adamw", "lr=0.0001")]
    mini = rows[("apollo_mini", "r=1 t s=128 lr=0.0001")]
    assert adamw[3] == "1.000" and adamw[5] == "1.00"  # AdamW against itself
    assert float(mini[2]) != float(adamw[2])  # a second training, another held-out loss
    assert "held-out loss of its 2 eval responses" in printed  # the pirate node has two eval cases
