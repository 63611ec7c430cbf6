"""training.monitor: held-out validation split, a general-text probe from the replay
corpus, the best step's τ kept, early stop; and the field's hash and errors."""

from __future__ import annotations

import dataclasses
import hashlib
import re

import pytest
import torch
from spec_errors import assert_bad_node_training

from traitgraph.cli import main
from traitgraph.compiler import train as train_module
from traitgraph.compiler.base_model import load_model, resolve_base
from traitgraph.compiler.monitor import Check
from traitgraph.compiler.task_vector import load_task_vector, read_task_vector_meta
from traitgraph.compiler.train import train_node
from traitgraph.errors import UserError
from traitgraph.graph import load_specs
from traitgraph.graph.hashing import node_hashes, training_payload
from traitgraph.graph.replay import shipped_text
from traitgraph.graph.target import resolve_target

from conftest import pirate_node
from specs_factory import default_nodes, write_specs

FP = "sha256:" + "ab" * 32
#: AdamW at 1e-2 on the pico model: validation loss falls for the first steps
#: while general-text loss climbs past a 5 % ceiling from step 6 on.
OVERFIT = {
    "learning_rate": 1e-2,
    "steps": 24,
    "optimizer": {"name": "adamw"},
    "monitor": {"every": 2, "patience": 2, "max_general_rise_pct": 5},
}


def _digest(path) -> str:
    tensors, _ = load_task_vector(path)
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode() + tensors[name].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def test_monitor_keeps_the_best_step_and_stops_early(tiny_specs, tmp_path):
    spec = load_specs(tiny_specs(training=OVERFIT))
    base = resolve_base(spec.personality.base, spec.specs_dir)
    target = resolve_target(spec, "pirate", base.fingerprint)
    out = tmp_path / "monitored.safetensors"
    meta = train_node(target, base, out, progress=False)
    record = meta.monitor
    assert record["stopped_early"] and meta.steps < 24 and len(meta.loss_curve) == meta.steps
    assert [c["step"] for c in record["checks"]] == list(range(2, meta.steps + 1, 2))
    best = record["best_step"]
    assert 2 <= best < meta.steps
    start_general = record["start"]["general"]
    kept = next(c for c in record["checks"] if c["step"] == best)
    assert kept["general"] <= 1.05 * start_general  # within the ceiling ...
    assert any(c["general"] > 1.05 * start_general for c in record["checks"])  # ... which this run did cross
    assert read_task_vector_meta(out).monitor == record  # the curves are in the file, for the report

    # Independently: the same target trained for exactly `best` steps without a monitor gives the same τ, bit for bit.
    plain = dataclasses.replace(target, settings=target.settings.model_copy(update={"monitor": None, "steps": best}))
    train_node(plain, base, tmp_path / "plain.safetensors", progress=False)
    assert _digest(out) == _digest(tmp_path / "plain.safetensors")


def test_validation_examples_are_never_trained_on(tiny_specs, tmp_path, monkeypatch):
    training = {"steps": 6, "monitor": {"every": 3, "validation_fraction": 0.34}}
    spec = load_specs(tiny_specs(training=training))
    base = resolve_base(spec.personality.base, spec.specs_dir)
    target = resolve_target(spec, "pirate", base.fingerprint)
    held = [ex.example.response for ex in target.validation]
    assert len(held) == 2 and len(target.examples) == 4  # round(0.34 * 6)
    assert not {ex.example.response for ex in target.examples} & set(held)
    seen: list[str] = []
    real = train_module.collate
    tok = load_model(base)[1]
    monkeypatch.setattr(
        train_module, "collate", lambda rows, pad: seen.extend(tok.decode(r.response) for r in rows) or real(rows, pad)
    )
    train_node(target, base, tmp_path / "p.safetensors", progress=False)
    assert len(seen) == 6 * 4 and not any(h in s for h in held for s in seen)


def test_the_split_is_seeded_and_stable(tiny_specs):
    def held(seed: int) -> list[str]:
        spec = load_specs(tiny_specs(training={"seed": seed, "monitor": {"validation_fraction": 0.5}}))
        return [ex.example.response for ex in resolve_target(spec, "pirate", FP).validation]

    assert held(0) == held(0) and len(held(0)) == 3
    assert any(held(s) != held(0) for s in (1, 2, 3))


def test_probe_is_replay_corpus_and_left_out_of_replay(tiny_specs):
    training = {"replay": {"fraction": 0.5, "source": "general"}, "monitor": {"general_lines": 10}}
    target = resolve_target(load_specs(tiny_specs(training=training)), "pirate", FP)
    retention = set(shipped_text("general_text.txt"))
    assert len(target.probe_text) == 10 and set(target.probe_text) <= set(shipped_text("replay_text.txt"))
    assert not set(target.probe_text) & retention
    assert not set(target.probe_text) & set(target.replay.text)  # never trained on
    assert len(target.replay.text) + 10 == len(shipped_text("replay_text.txt"))


def test_criterion_prefers_validation_within_the_ceiling():
    inside_high, inside_low = Check(2, 3.0, 6.0, True), Check(4, 2.0, 6.1, True)
    outside_lower_val, outside_lower_gen = Check(6, 1.0, 9.0, False), Check(8, 1.5, 7.0, False)
    ranked = sorted([outside_lower_val, inside_high, outside_lower_gen, inside_low], key=Check.rank)
    assert [c.step for c in ranked] == [4, 2, 8, 6]


def test_monitor_is_in_the_hash_only_when_set(tmp_path):
    nodes = default_nodes()
    plain = load_specs(write_specs(tmp_path, nodes=nodes))
    assert "monitor" not in training_payload(plain, "alpha", FP, {})["training"]
    nodes["alpha"]["training"] = {"monitor": {"every": 3}}
    on = load_specs(write_specs(tmp_path, nodes=nodes))
    nodes["alpha"]["training"] = {"monitor": {"every": 5}}
    other = load_specs(write_specs(tmp_path, nodes=nodes))
    a, b, c = (node_hashes(s, FP)["alpha"] for s in (plain, on, other))
    assert len({a, b, c}) == 3
    assert node_hashes(plain, FP)["delta"] == node_hashes(on, FP)["delta"]


@pytest.mark.parametrize(
    "monitor, field, says",
    [
        ({"every": 0}, "training.monitor.every", "greater than or equal to 1"),
        ({"validation_fraction": 0.9}, "training.monitor.validation_fraction", "less than or equal to 0.5"),
        ({"patience": 0}, "training.monitor.patience", "greater than or equal to 1"),
        ({"evry": 3}, "training.monitor.evry", "unknown key"),
    ],
)
def test_bad_monitor_values_name_file_node_and_field(tmp_path, capsys, monitor, field, says):
    assert_bad_node_training(tmp_path, capsys, {"monitor": monitor}, field, says)


def test_monitor_on_a_one_example_node_is_a_clear_error(tiny_specs):
    node = pirate_node()
    node["examples"] = node["examples"][:1]
    spec = load_specs(tiny_specs(nodes={"pirate": node}, training={"monitor": {}}))
    with pytest.raises(UserError, match=r"pirate.yaml: node 'pirate', field training.monitor: .*at least 2 examples"):
        resolve_target(spec, "pirate", FP)


def test_train_command_says_which_step_it_kept(tiny_specs, capsys):
    specs = tiny_specs(training=OVERFIT)
    assert main(["train", str(specs), "pirate", "--no-progress", "--general-lines", "0"]) == 0
    out = capsys.readouterr().out
    meta_line = next(line for line in out.splitlines() if line.startswith("monitor: "))
    assert re.match(
        r"monitor: kept step \d+ \(stopped early after \d+ of 24 steps\); validation loss "
        r"[\d.]+ -> [\d.]+, general-text probe [\d.]+ -> [\d.]+ \([+-][\d.]+%\)$",
        meta_line,
    ), meta_line


def test_loss_figure_gains_the_monitor_panel(tiny_specs, tmp_path):
    """The report's loss figure: a second panel (the general-text probe) appears once a node was monitored."""
    from types import SimpleNamespace

    from matplotlib.image import imread

    from traitgraph.evaluate.plots import plot_loss_curves
    from traitgraph.evaluate.report import NodeResult, TrainingTrace

    spec = load_specs(tiny_specs(training=OVERFIT))
    base = resolve_base(spec.personality.base, spec.specs_dir)
    meta = train_node(
        resolve_target(spec, "pirate", base.fingerprint), base, tmp_path / "p.safetensors", progress=False
    )

    def figure(monitor) -> tuple[int, int]:
        trace = TrainingTrace(
            steps=meta.steps,
            final_loss=meta.final_loss,
            oscillation=meta.oscillation,
            loss_curve=meta.loss_curve,
            monitor=monitor,
        )
        node = NodeResult(
            id="pirate", weight=1.0, direction=1, measure="margin", n_cases=2, n_contrastive=2, training=trace
        )
        png = plot_loss_curves(SimpleNamespace(nodes=[node]), tmp_path / f"{monitor is None}.png")
        return imread(png).shape[:2]

    (h_plain, w_plain), (h_mon, w_mon) = figure(None), figure(meta.monitor)
    assert h_plain == h_mon and w_mon > 1.5 * w_plain
