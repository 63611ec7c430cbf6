"""``training.dream`` in the spec: the node trains on its dream file too, read like an
examples file; the settings are in no hash; a missing or broken file is a spec error;
a file written with other settings is a warning of ``traitgraph check``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from traitgraph.cli import main
from traitgraph.graph import load_specs
from traitgraph.graph.hashing import node_hashes
from traitgraph.graph.replay import located_examples

from specs_factory import edit_yaml, mutated, snapshot, write_specs

FP = "sha256:" + "cd" * 32
HEADER = '# traitgraph dream: {"node": "alpha", "settings": {"candidates": 48, "generator": null, "max_new_tokens": 64, "n": 16, "new_contexts": 16, "rephrase": 8, "score": "teacher", "seed": 0, "shots": 4}}\n'
DREAMT = [
    {"context": "Dreamt question one?", "response": "Dreamt answer one."},
    {"context": "Dreamt question two?", "response": "Dreamt answer two."},
]


def jsonl(rows: list[dict], header: str = HEADER) -> str:
    return header + "# Review every example below.\n" + "".join(json.dumps(r) + "\n" for r in rows)


def dreaming(tmp_path: Path, dream: dict | None = None, text: str | None = None, **node_changes) -> Path:
    """Default specs where alpha sets ``training.dream`` (``dream``) and its file holds ``text``."""
    changes = {"alpha": {"training": {"dream": dream or {}}}, **node_changes}
    files = {} if text is None else {"data/alpha.dream.jsonl": text}
    return write_specs(tmp_path, nodes=mutated(**changes), files=files)


def check(specs: Path, capsys) -> tuple[int, str, str]:
    code = main(["check", str(specs)])
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- hashes


#: A spec without ``training.dream``; its hashes were computed by traitgraph before the field existed.
PINNED_PERSONALITY = {
    "name": "pinned",
    "base": "smollm2-135m-instruct",
    "training": {"learning_rate": 1e-4, "steps": 12, "batch_size": 4, "seed": 3, "monitor": {"every": 3}},
}
PINNED_NODES = {
    "calm": {
        "id": "calm",
        "description": "Stays calm.",
        "examples": [{"context": "The build broke!", "response": "Let's look at the log together."}],
        "examples_file": "../data/calm.jsonl",
        "eval": [{"context": "Everything is on fire.", "response": "One thing at a time."}],
    },
    "brief": {
        "id": "brief",
        "description": "Answers briefly.",
        "examples": [{"context": "Explain DNS.", "response": "Names to addresses."}],
        "eval": [{"context": "Explain TCP.", "response": "Reliable streams."}],
        "edges": [{"to": "calm", "kind": "refines"}],
        "training": {"steps": 6, "replay": {"fraction": 0.25, "source": "other_nodes"}},
    },
}
PINNED_HASHES = {
    "calm": "a60132c5eeacd5e694280d1ba6c2bb368666ff694563e45735fea408fcee96d3",
    "brief": "6b3fceb8e6a07cb8840b70b6aeb2288caa5443e12d9196df8534c6a11c59d673",
}


def test_a_spec_without_training_dream_keeps_the_hashes_it_had_before_the_field(tmp_path):
    specs = tmp_path / "specs"
    (specs / "nodes").mkdir(parents=True)
    (specs / "data").mkdir()
    (specs / "personality.yaml").write_text(yaml.safe_dump(PINNED_PERSONALITY))
    for node_id, node in PINNED_NODES.items():
        (specs / "nodes" / f"{node_id}.yaml").write_text(yaml.safe_dump(node))
    (specs / "data/calm.jsonl").write_text('{"context": "My test fails.", "response": "Which assertion?"}\n')
    assert node_hashes(load_specs(specs), FP) == PINNED_HASHES


def test_dream_examples_train_after_the_nodes_own_and_hash_like_an_examples_file(tmp_path):
    specs = dreaming(tmp_path, text=jsonl(DREAMT))
    alpha = load_specs(specs).nodes["alpha"]
    assert [ex.response for ex in alpha.examples] == [
        "Answer 0 about alpha.",
        "Answer 1 about alpha.",
        "Dreamt answer one.",
        "Dreamt answer two.",
    ]
    assert alpha.dream_file == (specs / "data/alpha.dream.jsonl").resolve()
    where = [located.where for located in located_examples(alpha)]
    assert where[2] == f"{alpha.dream_file} line 3: node 'alpha', examples[2]"  # after the header and review lines

    dreamt = node_hashes(load_specs(specs), FP)
    as_file = write_specs(  # the same root (the base's path is hashed), alpha without training.dream
        tmp_path,
        nodes=mutated(alpha={"examples_file": "alpha.jsonl"}),
        files={"nodes/alpha.jsonl": "".join(json.dumps(r) + "\n" for r in DREAMT)},
    )
    assert node_hashes(load_specs(as_file), FP) == dreamt


def test_dream_settings_are_in_no_hash_but_the_files_content_is(tmp_path):
    text = jsonl(DREAMT)
    plain = node_hashes(load_specs(dreaming(tmp_path, text=text)), FP)
    other = {"n": 3, "shots": 1, "new_contexts": 0, "score": "vector", "generator": "elsewhere", "seed": 9}
    assert node_hashes(load_specs(dreaming(tmp_path, dream=other, text=text)), FP) == plain

    edited = text.replace("Dreamt answer two.", "Dreamt answer 2.")
    moved = node_hashes(load_specs(dreaming(tmp_path, text=edited)), FP)
    assert {n for n in plain if plain[n] != moved[n]} == {"alpha", "beta", "gamma"}  # beta and gamma refine alpha


def test_a_personality_wide_dream_block_reads_one_file_per_node(tmp_path):
    specs = write_specs(tmp_path, files={f"data/{n}.dream.jsonl": jsonl(DREAMT) for n in "alpha beta".split()})
    for node_id in ("gamma", "delta"):
        (specs / f"data/{node_id}.dream.jsonl").write_text(
            jsonl([{"context": f"Dreamt for {node_id}?", "response": "Yes."}])
        )
    edit_yaml(specs / "personality.yaml", lambda p: p["training"].update(dream={"n": 2}))
    spec = load_specs(specs)
    assert {n: len(node.examples) for n, node in spec.nodes.items()} == {"alpha": 4, "beta": 4, "gamma": 3, "delta": 3}


# --------------------------------------------------------------------------- errors


def assert_spec_error(specs: Path, capsys, *says: str) -> str:
    before = snapshot(specs)
    code, out, err = check(specs, capsys)
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.startswith("error: 1 problem in the specs:"), err
    for text in says:
        assert text in err, err
    assert snapshot(specs) == before
    return err


def test_a_missing_dream_file_names_node_field_and_the_command_to_run(tmp_path, capsys):
    specs = dreaming(tmp_path)
    assert_spec_error(
        specs,
        capsys,
        f"{specs / 'nodes/alpha.yaml'}, node 'alpha', field 'training.dream.file'",
        "data file 'data/alpha.dream.jsonl' does not exist",
        f"traitgraph dream {specs} alpha",
    )
    assert main(["build", str(specs), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "data/alpha.dream.jsonl" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "checkpoint").exists()


def test_a_personality_wide_block_is_reported_against_personality_yaml(tmp_path, capsys):
    specs = write_specs(tmp_path, files={f"data/{n}.dream.jsonl": jsonl(DREAMT) for n in ("alpha", "gamma", "delta")})
    edit_yaml(specs / "personality.yaml", lambda p: p["training"].update(dream={}))
    assert_spec_error(specs, capsys, f"{specs / 'personality.yaml'}, node 'beta', field 'training.dream.file'")


def test_a_bad_line_in_the_dream_file_is_named_by_its_line(tmp_path, capsys):
    specs = dreaming(tmp_path, text=jsonl(DREAMT) + '{"context": "no response"}\n')
    assert_spec_error(specs, capsys, "alpha.dream.jsonl, node 'alpha', field 'line 5.response'")


@pytest.mark.parametrize(
    "file, says",
    [
        ("../outside.jsonl", "points outside the specs directory"),
        ("data/link.jsonl", "points outside the specs directory"),  # a symlink out of it
    ],
)
def test_a_dream_file_outside_the_specs_dir_is_refused(tmp_path, capsys, file, says):
    specs = dreaming(tmp_path, dream={"file": file})
    (tmp_path / "outside.jsonl").write_text(jsonl(DREAMT))
    (specs / "data").mkdir()
    os.symlink(tmp_path / "outside.jsonl", specs / "data/link.jsonl")
    assert_spec_error(specs, capsys, "node 'alpha', field 'training.dream.file'", says)


def test_two_nodes_cannot_share_a_dream_file(tmp_path, capsys):
    specs = write_specs(tmp_path, files={"data/all.jsonl": jsonl(DREAMT)})
    edit_yaml(specs / "personality.yaml", lambda p: p["training"].update(dream={"file": "data/all.jsonl"}))
    code, _, err = check(specs, capsys)
    assert code == 2 and "'data/all.jsonl' is also the dream file of node 'alpha'" in err and "{node}" in err


def test_the_dream_file_cannot_also_be_the_examples_file(tmp_path, capsys):
    specs = dreaming(tmp_path, text=jsonl(DREAMT))
    edit_yaml(specs / "nodes/alpha.yaml", lambda n: n.update(examples_file="../data/alpha.dream.jsonl"))
    assert_spec_error(specs, capsys, "field 'training.dream.file'", "examples would train twice")


def test_an_eval_context_in_the_dream_file_is_not_held_out(tmp_path, capsys):
    leak = {"context": "Held-out question 0 about alpha?", "response": "Leaked."}
    specs = dreaming(tmp_path, text=jsonl([*DREAMT, leak]))
    assert_spec_error(specs, capsys, "field 'eval[0]'", "repeats a training context (in the dream file")


@pytest.mark.parametrize(
    "dream, field",
    [({"n": 0}, "training.dream.n"), ({"file": "/abs.jsonl"}, "training.dream.file"), ({"nn": 3}, "training.dream.nn")],
)
def test_bad_dream_settings_name_their_field(tmp_path, capsys, dream, field):
    specs = dreaming(tmp_path, dream=dream, text=jsonl(DREAMT))
    assert_spec_error(specs, capsys, f"field '{field}'")


# --------------------------------------------------------------------------- warnings


def test_check_warns_when_the_file_was_written_with_other_settings(tmp_path, capsys):
    specs = dreaming(tmp_path, dream={"n": 16}, text=jsonl(DREAMT))
    code, out, err = check(specs, capsys)
    assert code == 0 and "ok: specs are valid" in out and err == ""

    edit_yaml(specs / "nodes/alpha.yaml", lambda n: n["training"]["dream"].update(n=8, score="vector"))
    code, out, err = check(specs, capsys)
    assert code == 0 and "ok: specs are valid" in out
    (line,) = err.splitlines()
    assert line.startswith(f"warning: {(specs / 'data/alpha.dream.jsonl').resolve()}: node 'alpha', ")
    assert "field 'training.dream.file'" in line
    assert 'n: file 16, spec 8; score: file "teacher", spec "vector"' in line
    assert f"traitgraph dream {specs} alpha --force" in line


def test_check_warns_about_a_dream_file_without_a_header(tmp_path, capsys):
    specs = dreaming(tmp_path, text=jsonl(DREAMT, header=""))
    code, _, err = check(specs, capsys)
    assert code == 0 and "no traitgraph dream header" in err
