"""``traitgraph check``, ``traitgraph graph`` and ``--help`` as a user sees them,
and every shipped specs directory checked like a user's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from traitgraph.cli import main
from traitgraph.graph import load_specs
from traitgraph.graph.hashing import node_hashes

from specs_factory import default_nodes, snapshot, write_specs

REPO = Path(__file__).resolve().parents[1]


def expected_hashes(specs: Path) -> dict[str, str]:
    from traitgraph.compiler.base_model import base_fingerprint

    spec = load_specs(specs)
    return node_hashes(spec, base_fingerprint(spec.personality.base, spec.specs_dir))


def table_rows(out: str) -> dict[str, list[str]]:
    """The summary table's rows, keyed by node: [weight, examples, eval, *edges, hash]."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["node", "weight"])
    rows = {}
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        node, *cells = line.split()
        rows[node] = cells
    return rows


# --------------------------------------------------------------------------- check


def test_check_prints_the_summary_of_valid_specs(tmp_path, capsys):
    nodes = default_nodes()
    nodes["alpha"]["examples"].append({"context": "A third?", "response": "Yes."})
    specs = write_specs(tmp_path, nodes=nodes)
    before = snapshot(tmp_path)

    code = main(["check", str(specs)])

    out, err = capsys.readouterr()
    assert code == 0, err
    assert err == ""
    assert out.startswith("test-personality: 4 nodes, 4 edges, 9 examples, 4 eval cases")
    assert "merge: ties density 0.2 lambda 1" in out
    assert out.rstrip().endswith("ok: specs are valid")
    assert "note:" not in out  # the local base resolved, so hashes use its fingerprint

    rows = table_rows(out)
    hashes = expected_hashes(specs)
    assert list(rows) == ["alpha", "beta", "delta", "gamma"]  # build order: dependencies first
    for node_id, cells in rows.items():
        short = cells[-1]
        assert re.fullmatch(r"[0-9a-f]{12}", short)
        assert short == hashes[node_id][:12]
    assert rows["alpha"][:3] == ["+1", "3", "1"]
    assert rows["delta"][:3] == ["-0.5", "2", "1"]
    assert rows["beta"][3] == "refines:alpha"
    assert rows["delta"][3:-1] == ["related:alpha,", "conflicts:gamma"]
    assert snapshot(tmp_path) == before  # check writes nothing next to the specs


def test_check_without_the_base_at_hand_still_validates(tmp_path, capsys):
    specs = write_specs(tmp_path)
    (specs / "personality.yaml").write_text(
        (specs / "personality.yaml").read_text().replace(str(tmp_path / "base-model"), "./not-downloaded-yet")
    )

    code = main(["check", str(specs)])

    out, _ = capsys.readouterr()
    assert code == 0
    assert "note: hashes use the base reference only" in out
    assert "not-downloaded-yet" in out
    assert "ok: specs are valid" in out


def test_check_defaults_to_specs_in_the_working_directory(tmp_path, capsys, monkeypatch):
    write_specs(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["check"]) == 0
    assert "ok: specs are valid" in capsys.readouterr().out


# --------------------------------------------------------------------------- graph


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("suffix", "looks_like"),
    [
        (".png", lambda b: b.startswith(PNG_MAGIC)),
        (".svg", lambda b: b"<svg" in b[:2000] and b.rstrip().endswith(b"</svg>")),
        (".pdf", lambda b: b.startswith(b"%PDF")),
        (".dot", lambda b: b.startswith(b"digraph ") and b.rstrip().endswith(b"}")),
    ],
)
def test_graph_writes_the_picture(suffix, looks_like, tmp_path, capsys):
    specs = write_specs(tmp_path)
    out = tmp_path / "pictures" / f"graph{suffix}"

    code = main(["graph", str(specs), "-o", str(out)])

    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert stdout.strip() == f"wrote {out}"
    data = out.read_bytes()
    assert looks_like(data), data[:80]
    assert len(data) > 300
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp file left behind


def test_graph_dot_names_every_node_and_edge_kind(tmp_path, capsys):
    specs = write_specs(tmp_path)

    assert main(["graph", str(specs), "--dot"]) == 0

    dot = capsys.readouterr().out
    assert dot.startswith('digraph "test-personality" {')
    assert dot.rstrip().endswith("}")
    assert dot.count("{") == dot.count("}")
    body = [line.strip() for line in dot.splitlines()[1:-1]]
    assert all(line.endswith(";") for line in body)
    for node_id, data in default_nodes().items():
        label = (
            re.escape(f'"{node_id}" [label="{node_id}\\nweight {data["weight"]:+g}", fillcolor="') + '#[0-9a-f]{6}"];'
        )
        assert any(re.fullmatch(label, line) for line in body), (node_id, dot)
    for src, dst, kind in [
        ("beta", "alpha", "refines"),
        ("gamma", "beta", "refines"),
        ("delta", "alpha", "related"),
        ("delta", "gamma", "conflicts"),
    ]:
        assert any(line.startswith(f'"{src}" -> "{dst}" [label="{kind}"') for line in body), (src, dst, dot)
    # weight sign is visible: delta subtracts, alpha adds, in different colours
    colour = {n: re.search(rf'^\s*"{n}" \[.*fillcolor="(#[0-9a-f]+)"', dot, re.M).group(1) for n in ("alpha", "delta")}
    assert colour["alpha"] != colour["delta"]


def test_graph_without_output_prints_dot(tmp_path, capsys):
    specs = write_specs(tmp_path)
    assert main(["graph", str(specs)]) == 0
    assert capsys.readouterr().out.startswith("digraph ")


def test_graph_unknown_suffix_is_a_user_error(tmp_path, capsys):
    specs = write_specs(tmp_path)
    out = tmp_path / "graph.txt"

    code = main(["graph", str(specs), "-o", str(out)])

    stdout, err = capsys.readouterr()
    assert code == 2
    assert "unknown picture format '.txt'" in err
    assert ".png" in err and ".svg" in err and ".dot" in err
    assert "Traceback" not in stdout + err
    assert not out.exists()


def test_graph_on_broken_specs_reports_them(tmp_path, capsys):
    nodes = default_nodes()
    nodes["beta"]["edges"][0]["to"] = "alpah"
    specs = write_specs(tmp_path, nodes=nodes)
    out = tmp_path / "graph.png"

    assert main(["graph", str(specs), "-o", str(out)]) == 2
    assert "did you mean 'alpha'?" in capsys.readouterr().err
    assert not out.exists()


# --------------------------------------------------------------------------- help


def test_help_lists_the_commands():
    result = subprocess.run([sys.executable, "-m", "traitgraph", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    listed = re.findall(r"^    (\S+)\s+\S", result.stdout, re.M)  # argparse's command rows, in order
    assert listed == [
        "check",
        "graph",
        "train",
        "dream",
        "build",
        "status",
        "link",
        "consolidate",
        "merge",
        "interference",
        "cache",
        "eval",
        "test",
        "report",
        "sweep",
        "chat",
        "init",
        "new",
        "schema",
        "export",
        "verify",
    ], result.stdout


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "usage: traitgraph" in capsys.readouterr().err


# --------------------------------------------------------------------------- shipped specs


def shipped_spec_dirs() -> list[Path]:
    patterns = ["specs", "specs/*", "examples/*", "examples/*/specs"]
    return sorted({p.parent for pattern in patterns for p in REPO.glob(f"{pattern}/personality.yaml")})


SHIPPED = shipped_spec_dirs()


def test_the_repository_ships_specs():
    assert REPO / "specs" in SHIPPED


@pytest.mark.parametrize("specs", SHIPPED, ids=lambda p: p.relative_to(REPO).as_posix())
def test_shipped_specs_are_valid_and_substantial(specs):
    spec = load_specs(specs)

    assert spec.nodes
    for node_id, node in spec.nodes.items():
        assert len(node.examples) >= 16, f"{node_id}: {len(node.examples)} examples"
        contrastive = [case for case in node.spec.eval if case.rejected is not None]
        assert len(contrastive) >= 4, f"{node_id}: {len(contrastive)} eval cases with `rejected`"
    assert spec.build_order()  # no cycle
