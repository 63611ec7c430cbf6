"""``traitgraph sweep`` on the pico model: a 2×2 grid built, linked and evaluated,
training only once per node; a broken point reported, not fatal; bad paths exit 2."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import pirate_node
from traitgraph.cli import main


def shouting_node() -> dict:
    """A second behaviour the pico model can pick up: replies in capitals."""
    return {
        "description": "Answers in capitals.",
        "examples": [
            {"context": "hello there", "response": "HELLO THERE FRIEND"},
            {"context": "how are you", "response": "VERY GOOD"},
            {"context": "say yes", "response": "YES"},
            {"context": "tell me a word", "response": "WORD"},
        ],
        "eval": [
            {
                "context": "good day to you",
                "response": "GOOD DAY",
                "rejected": "good day",
                "expect": {"max_words": 400},  # met by any reply of the pico model
            }
        ],
        "ood": [
            {
                "context": "nice weather today",
                "response": "NICE WEATHER",
                "rejected": "nice weather",
                "expect": {"contains_all": ["xylophone"]},  # met by none
            }
        ],
    }


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_base_dir):
    """The 2×2 sweep of merge.method × nodes.pirate.weight: (specs, out, exit status, stdout)."""
    from tests.conftest import write_tiny_specs

    mp = pytest.MonkeyPatch()
    mp.setenv("TRAITGRAPH_EVAL_THREADS", "1")
    root = tmp_path_factory.mktemp("sweep")
    mp.setenv("TRAITGRAPH_CACHE", str(root / "cache"))  # its own cache: other tests train the same nodes
    training = {"learning_rate": 1e-3, "steps": 4, "batch_size": 4, "seed": 0}
    specs = write_tiny_specs(root, tiny_base_dir, {"pirate": pirate_node(), "shouting": shouting_node()}, training)
    out = root / "out"
    status = main(
        [
            "sweep",
            str(specs),
            "-o",
            str(out),
            "--no-progress",
            "--set",
            "merge.method=ties,iso_c",
            "--set",
            "nodes.pirate.weight=0.5,1",
        ]
    )
    yield specs, out, status
    mp.undo()


def test_every_point_is_built_and_evaluated_in_its_own_directory(swept):
    _, out, status = swept
    assert status == 0
    sweep = json.loads((out / "sweep" / "sweep.json").read_text())
    points = sweep["points"]
    assert [p["settings"] for p in points] == [
        {"merge.method": "ties", "nodes.pirate.weight": 0.5},
        {"merge.method": "ties", "nodes.pirate.weight": 1},
        {"merge.method": "iso_c", "nodes.pirate.weight": 0.5},
        {"merge.method": "iso_c", "nodes.pirate.weight": 1},
    ]
    assert all(p["ok"] for p in points), [p["error"] for p in points]
    for p in points:
        report = json.loads((out / "sweep" / p["name"] / "report.json").read_text())
        lock = json.loads((out / "sweep" / p["name"] / "traitgraph.lock").read_text())
        assert lock["merge"]["method"] == p["settings"]["merge.method"]
        assert {n["id"]: n["weight"] for n in lock["nodes"]}["pirate"] == p["settings"]["nodes.pirate.weight"]
        assert p["kept"] == {n["id"]: n["kept"] for n in report["nodes"]}
        assert p["loss_change_pct"] == pytest.approx(report["retention"]["change_pct"])


def test_vectors_are_trained_once_and_reused(swept):
    _, out, _ = swept
    points = json.loads((out / "sweep" / "sweep.json").read_text())["points"]
    assert sorted(points[0]["trained"]) == ["pirate", "shouting"]  # weights and merge settings do not retrain
    assert all(p["trained"] == [] for p in points[1:])
    # the two points that differ only in the merge method link the same vectors
    locks = [json.loads((out / "sweep" / p["name"] / "traitgraph.lock").read_text()) for p in points]
    assert [n["vector_sha256"] for n in locks[0]["nodes"]] == [n["vector_sha256"] for n in locks[2]["nodes"]]


def test_a_second_run_reuses_every_link_and_report(swept, capsys):
    specs, out, _ = swept
    first = json.loads((out / "sweep" / "sweep.json").read_text())
    assert (
        main(
            [
                "sweep",
                str(specs),
                "-o",
                str(out),
                "--no-progress",
                "--set",
                "merge.method=ties,iso_c",
                "--set",
                "nodes.pirate.weight=0.5,1",
            ]
        )
        == 0
    )
    again = json.loads((out / "sweep" / "sweep.json").read_text())
    assert all(p["evaluated"] for p in first["points"]) and not any(p["evaluated"] for p in again["points"])
    strip = [{k: v for k, v in p.items() if k not in ("seconds", "evaluated", "trained")} for p in first["points"]]
    assert strip == [
        {k: v for k, v in p.items() if k not in ("seconds", "evaluated", "trained")} for p in again["points"]
    ]


def test_table_and_picture_mark_the_pareto_front(swept):
    _, out, _ = swept
    sweep = json.loads((out / "sweep" / "sweep.json").read_text())
    assert sweep["pareto"]
    table = (out / "sweep" / "sweep.md").read_text()
    for p in sweep["points"]:
        row = next(line for line in table.splitlines() if line.startswith(f"| {p['name']}"))
        assert ("★" in row) == (p["name"] in sweep["pareto"])
        assert f"{p['loss_change_pct']:+.2f}%" in row
        # What the model says at this point: one of the two node tests passes, the ood one never.
        assert (p["tests"], p["ood_tests"]) == ("1/2", "0/1") and "| 1/2 | 0/1 |" in row
    assert (out / "sweep" / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_a_failing_point_is_reported_and_the_others_still_run(swept, tmp_path, capsys):
    specs, _, _ = swept
    (specs / "general.txt").write_text("the sea is wide and deep\nships sail on the sea\n")
    out = tmp_path / "out"
    status = main(
        ["sweep", str(specs), "-o", str(out), "--no-progress", "--set", "eval.general_text=missing.txt,general.txt"]
    )
    assert status == 0
    points = json.loads((out / "sweep" / "sweep.json").read_text())["points"]
    assert [p["ok"] for p in points] == [False, True]
    assert "missing.txt" in points[0]["error"]
    assert "failed: " in (out / "sweep" / "sweep.md").read_text()
    assert "1 failed: p01" in capsys.readouterr().out


@pytest.mark.parametrize(
    "option, message",
    [
        ("merge.methd=ties", "unknown field 'merge.methd'"),
        ("nodes.parrot.weight=1", "no node 'parrot'"),
        ("nodes.pirate.weight=loud", "nodes.pirate.weight: Input should be a valid number"),
        ("merge.method=ties,slerp", "merge.method: Input should be"),
        ("merge.density", "expected PATH=VALUE"),
    ],
)
def test_bad_paths_and_values_exit_2_naming_them_before_any_work(swept, tmp_path, option, message, capsys):
    specs, _, _ = swept
    assert main(["sweep", str(specs), "-o", str(tmp_path / "o"), "--set", option]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_personality_file_is_untouched(swept):
    specs, _, _ = swept
    assert yaml.safe_load((specs / "personality.yaml").read_text()).get("merge") is None


def test_each_report_opens_with_mean_kept_and_what_was_lost_and_splits_trim_from_merge(swept):
    _, out, _ = swept
    points = json.loads((out / "sweep" / "sweep.json").read_text())["points"]
    for p in points:
        report = json.loads((out / "sweep" / p["name"] / "report.json").read_text())
        first = (out / "sweep" / p["name"] / "report.md").read_text().split("## Gates")[0]
        assert "**Lost: " in first
        assert ("**Mean kept: " in first) == (report["mean_kept"] is not None)
        assert p["mean_kept"] == report["mean_kept"]
        for node in report["nodes"]:
            assert node["trimmed"] is not None and node["gain_trimmed"] is not None
            if p["settings"]["merge.method"] == "iso_c":  # no trim: the trimmed model is the alone model
                assert node["gain_trimmed"] == node["gain_alone"]
            else:  # TIES keeps 20% of each τ: a different model
                assert node["gain_trimmed"] != node["gain_alone"]
        assert "prompts" in {g["name"] for g in report["gates"]}


def test_a_point_keeps_the_training_blocks_a_node_inherits(tiny_specs):
    """A node that writes part of a training block (here `replay: {source: general}`) keeps the rest
    from the personality at every point, as the same edit made by hand would; a point once wrote
    every unwritten block back as null, which turned the node's replay and anchor off."""
    from traitgraph.evaluate.sweep_grid import apply_point
    from traitgraph.graph import load_specs
    from traitgraph.graph.hashing import node_hashes

    training = {"replay": {"fraction": 0.5, "source": "other_nodes"}, "anchor": {"kl": 1.0}}
    nodes = {"pirate": pirate_node(training={"replay": {"source": "general"}}), "shouting": shouting_node()}
    spec = load_specs(tiny_specs(nodes=nodes, training=training))
    fp = "sha256:" + "cd" * 32
    point = apply_point(spec, {"nodes.pirate.weight": 0.5, "nodes.shouting.training.replay.source": "general"})
    for node_id in ("pirate", "shouting"):
        settings = point.training_settings(node_id)
        assert (settings.replay.fraction, settings.replay.source, settings.anchor.kl) == (0.5, "general", 1.0)
    assert node_hashes(point, fp)["pirate"] == node_hashes(spec, fp)["pirate"]  # a weight never retrains


@pytest.mark.parametrize(
    "path, message",
    [
        ("nodes.pirate.training.replay.sauce", "unknown field 'training.replay.sauce'; known here: fraction, source"),
        ("nodes.pirate.weight.x", "unknown field 'weight.x'; known here: none (not a mapping)"),
        ("merge.lambda.x", "unknown field 'merge.lambda.x'"),
    ],
)
def test_a_path_into_a_block_the_file_left_out_is_checked_against_the_spec(tiny_specs, path, message):
    from traitgraph.errors import UserError
    from traitgraph.evaluate.sweep_grid import apply_point
    from traitgraph.graph import load_specs

    spec = load_specs(tiny_specs())
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        apply_point(spec, {path: 1})
