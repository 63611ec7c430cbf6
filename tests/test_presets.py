"""APOLLO presets: where they live, the guard that keeps caches honest when one
changes, and the benchmark's Mini sweep that is used to choose them."""

from __future__ import annotations

import pytest

from traitgraph.compiler import TRAINER_VERSION
from traitgraph.compiler.optim import effective_settings
from traitgraph.compiler.optim.apollo import PRESETS
from traitgraph.graph.schema import OptimizerSettings

#: The presets a cached vector of TRAINER_VERSION was trained with. Preset
#: values are not in the training hash (specs leave them unset), so changing
#: one must bump TRAINER_VERSION in traitgraph/compiler/__init__.py, and then
#: this table.
PINNED = {
    "1": {"apollo": (256, "channel", 1.0), "apollo_mini": (1, "tensor", 128.0)},
}


def test_a_preset_change_bumps_the_trainer_version():
    now = {name: (p.rank, p.scale_type, p.scale) for name, p in PRESETS.items()}
    assert TRAINER_VERSION in PINNED, "new TRAINER_VERSION: add its presets to PINNED"
    assert now == PINNED[TRAINER_VERSION], "a preset changed: bump TRAINER_VERSION (cached vectors go stale)"


def test_spec_values_override_the_preset():
    eff = effective_settings(OptimizerSettings(name="apollo_mini", scale=32.0))
    assert (eff.rank, eff.scale_type, eff.scale) == (1, "tensor", 32.0)


def test_bench_sweeps_mini_lr_and_scale(tiny_base_dir, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import bench_optimizer

    bench_optimizer.main(
        [
            "--base",
            str(tiny_base_dir),
            "--steps",
            "1",
            "--threads",
            "1",
            "--optimizers",
            "adamw",
            "--sweep-mini-lr",
            "1e-3,2e-3",
            "--sweep-mini-scale",
            "16,64",
        ]
    )
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("apollo_mini ")]  # loss lists are indented
    assert [r.split()[4] for r in table] == ["lr=0.001", "lr=0.001", "lr=0.002", "lr=0.002"]
    assert [r.split()[3] for r in table] == ["s=16", "s=64", "s=16", "s=64"]
    with pytest.raises(SystemExit):
        bench_optimizer.main(["--base", str(tiny_base_dir), "--sweep-mini-lr", "fast"])
