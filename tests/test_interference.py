"""Interference of task vectors: hand-made pairs with known answers, streaming, the command."""

from __future__ import annotations

import math

import pytest
import torch
from test_link import save_vector

from traitgraph.cli import main
from traitgraph.linker.interference import interference, plot_interference


def vec(tmp_path, name, tensors):
    return save_vector(tmp_path / f"{name}.safetensors", tensors, name)


def test_known_pairs(tmp_path):
    g = torch.Generator().manual_seed(0)
    a = {"w": torch.randn(40, 30, generator=g), "b": torch.randn(30, generator=g)}
    paths = {
        "a": vec(tmp_path, "a", a),
        "same": vec(tmp_path, "same", {k: 2 * v for k, v in a.items()}),
        "negated": vec(tmp_path, "negated", {k: -v for k, v in a.items()}),
    }
    r = interference(paths, density=0.2)
    i = {n: k for k, n in enumerate(r.names)}
    assert r.cosine[i["a"]][i["same"]] == pytest.approx(1.0)
    assert r.cosine[i["a"]][i["negated"]] == pytest.approx(-1.0)
    assert r.overlap[i["a"]][i["negated"]] == 1.0  # the same entries survive the trim
    assert r.conflict[i["a"]][i["same"]] == 0.0
    assert r.conflict[i["a"]][i["negated"]] == 1.0
    # Linked with weight −1, the negated vector pushes the same way as `a`.
    weighted = interference(paths, density=0.2, weights={"negated": -1.0})
    assert weighted.conflict[i["a"]][i["negated"]] == 0.0
    assert weighted.cosine[i["a"]][i["negated"]] == pytest.approx(1.0)
    assert "a × negated" in r.table()


def test_disjoint_supports_and_missing_tensors(tmp_path):
    left = torch.zeros(100)
    left[:50] = torch.arange(1.0, 51.0)
    right = torch.zeros(100)
    right[50:] = -torch.arange(1.0, 51.0)
    paths = {
        "left": vec(tmp_path, "left", {"w": left, "only_left": torch.ones(10)}),
        "right": vec(tmp_path, "right", {"w": right}),
    }
    r = interference(paths, density=0.5)
    assert r.cosine[0][1] == 0.0 and r.overlap[0][1] == 0.0
    assert math.isnan(r.conflict[0][1])  # nothing kept in common: no conflict to measure
    assert r.entries == 110


def test_independent_random_vectors_match_the_expected_rates(tmp_path):
    g = torch.Generator().manual_seed(1)
    paths = {
        n: vec(tmp_path, n, {"w": torch.randn(300, 200, generator=g), "v": torch.randn(5000, generator=g)})
        for n in "xy"
    }
    r = interference(paths, density=0.2)
    assert abs(r.cosine[0][1]) < 0.02
    assert r.overlap[0][1] == pytest.approx(0.2 / 1.8, abs=0.01)
    assert r.conflict[0][1] == pytest.approx(0.5, abs=0.03)


def test_remembered_trims_give_the_same_answer_and_are_used(tmp_path):
    g = torch.Generator().manual_seed(3)
    ties = torch.tensor([2.0, 1.0, 1.0, 1.0, 1.0, 0.5])  # k = 3 of 6: two of the four ties survive
    paths = {n: vec(tmp_path, n, {"w": torch.randn(40, 30, generator=g), "t": ties}) for n in "abc"}
    fresh = interference(paths, density=0.5)
    trims = {}
    first = interference(paths, density=0.5, trims=trims)
    assert sorted(trims) == ["a", "b", "c"] and all(sorted(t) == ["t", "w"] for t in trims.values())
    assert trims["a"]["t"].ties_left == 2  # applying a trim does not use up the remembered one
    again = interference(paths, density=0.5, trims=trims)
    assert first == fresh and again == fresh
    trims["a"]["w"].threshold = math.inf  # a remembered fit is used, not fitted again: `a` now keeps no entry of w
    assert interference(paths, density=0.5, trims=trims).overlap[0][1] < fresh.overlap[0][1]


def test_an_evaluation_fits_only_the_vectors_it_has_not_seen(tmp_path):
    from traitgraph.evaluate.memo import ScoreMemo
    from traitgraph.evaluate.results import measure_interference

    g = torch.Generator().manual_seed(4)
    paths = {n: vec(tmp_path, n, {"w": torch.randn(50, 20, generator=g)}) for n in "abc"}
    shas = {n: f"sha-{n}" for n in paths}
    memo_dir = tmp_path / "memo"
    memo_dir.mkdir()
    measure_interference({n: (paths[n], 1.0) for n in "ab"}, shas, 0.2, ScoreMemo(memo_dir, "interference"), [])
    memo = ScoreMemo(memo_dir, "interference")  # the next evaluation, after node b became c
    assert memo.get("trims", ["sha-a", 0.2]) and memo.get("trims", ["sha-c", 0.2]) is None
    measured = measure_interference({n: (paths[n], 1.0) for n in "ac"}, shas, 0.2, memo, [])
    fresh = interference({n: paths[n] for n in "ac"}, density=0.2)
    assert measured.conflict[0][1] == fresh.conflict[0][1] and measured.overlap[0][1] == fresh.overlap[0][1]
    assert ScoreMemo(memo_dir, "interference").get("trims", ["sha-c", 0.2])


def test_plot_and_command(tmp_path, capsys):
    g = torch.Generator().manual_seed(2)
    paths = [vec(tmp_path, n, {"w": torch.randn(20, 20, generator=g)}) for n in ("kind", "pirate", "terse")]
    png = tmp_path / "heat.png"
    assert main(["interference", *map(str, paths), "--density", "0.3", "-o", str(png)]) == 0
    out = capsys.readouterr().out
    assert "kind × pirate" in out and "terse" in out and "heat.png" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = interference({"a": paths[0], "b": paths[1]}, density=0.3)
    assert plot_interference(result, tmp_path / "two.png").stat().st_size > 1000
    assert main(["interference", str(paths[0])]) == 2  # one vector is a user error
