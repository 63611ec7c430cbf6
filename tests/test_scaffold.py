"""`traitgraph init / new / schema`: scaffolded specs check, build, and validate against the schemas."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest
import yaml

from traitgraph.cli import main


def _validate(yaml_file: Path, schema_file: Path) -> None:
    data = yaml.safe_load(yaml_file.read_text(encoding="utf-8"))
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(schema).validate(data)


def _modeline_target(yaml_file: Path) -> Path:
    first = yaml_file.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=")
    return (yaml_file.parent / first.split("$schema=", 1)[1]).resolve()


def test_scaffolded_files_validate_against_the_published_schema(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["init", "demo"]) == 0
    assert main(["new", "politeness", "demo", "-d", "Says please."]) == 0
    assert main(["schema", "-o", "published"]) == 0
    personality = tmp_path / "demo" / "personality.yaml"
    nodes = sorted((tmp_path / "demo" / "nodes").glob("*.yaml"))
    assert [p.stem for p in nodes] == ["greeting", "politeness"]
    # the modelines point at schema files that exist, equal to the published ones
    for f in [personality, *nodes]:
        target = _modeline_target(f)
        assert target.read_text() == (tmp_path / "published" / target.name).read_text()
    _validate(personality, tmp_path / "published" / "personality.schema.json")
    for f in nodes:
        _validate(f, tmp_path / "published" / "node.schema.json")
    assert yaml.safe_load(nodes[1].read_text())["description"] == "Says please."
    umask = os.umask(0)
    os.umask(umask)
    assert personality.stat().st_mode & 0o777 == 0o666 & ~umask  # readable like any file the user writes


def test_schema_rejects_what_the_loader_rejects(tmp_path):
    assert main(["schema", "-o", str(tmp_path)]) == 0
    schema = json.loads((tmp_path / "node.schema.json").read_text())
    with pytest.raises(jsonschema.ValidationError, match="descripton"):
        jsonschema.validate({"id": "a", "description": "x", "descripton": "typo"}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"id": "Bad Id", "description": "x"}, schema)


def test_init_refuses_a_non_empty_directory_and_new_an_existing_node(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert main(["init", str(tmp_path / "full")]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert main(["init", str(tmp_path / "demo")]) == 0
    assert main(["new", "greeting", str(tmp_path / "demo")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["new", "Bad Id", str(tmp_path / "demo")]) == 2
    assert not list((tmp_path / "demo" / "nodes").glob("Bad*"))


def test_init_check_build_on_a_fresh_directory(tmp_path, monkeypatch, tiny_base_dir):
    """The five-minute start: init, check, build, as a user types them (pico base)."""
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_base_dir, tmp_path / "models" / "pico")
    assert main(["init", "demo", "--base", "models/pico"]) == 0  # relative to where the user types it
    assert 'base: "../models/pico"' in (tmp_path / "demo" / "personality.yaml").read_text()
    assert main(["check", "demo"]) == 0
    assert main(["build", "demo", "-o", "demo-out"]) == 0
    assert (tmp_path / "demo-out" / "checkpoint" / "config.json").is_file()
    assert (tmp_path / "demo-out" / "traitgraph.lock").is_file()
    assert json.loads((tmp_path / "demo-out" / "report.json").read_text())["passed"] is True
