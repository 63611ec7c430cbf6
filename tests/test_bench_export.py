"""bench/bench_export.py runs on a pico build: a full-rank adapter keeps every node's gain, the GGUF its answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_export_gguf import pico_gguf  # noqa: F401  (the pico GGUF template)
from test_export_lora import build  # noqa: F401  (the pico build)

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_export.py"


def test_bench_export_on_the_pico_build(build, pico_gguf):  # noqa: F811
    specs, out = build
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--specs",
            str(specs),
            "--out",
            str(out),
            "--ranks",
            "2,64",
            "--gguf",
            "f16",
            "--template",
            str(pico_gguf),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| LoRA r=64 | 100% |" in proc.stdout
    results = json.loads((out / "bench-export.json").read_text())
    full, low = results["lora"]["64"], results["lora"]["2"]
    assert abs(full["kept"]["pirate"] - 1.0) < 1e-3 and abs(full["energy_kept"] - 1.0) < 1e-9
    assert low["energy_kept"] < 1.0
    assert abs(full["text_loss"] - results["scores"]["checkpoint"]["text_loss"]) < 1e-4
    assert results["gguf"]["f16"]["same_greedy_samples"] is True
