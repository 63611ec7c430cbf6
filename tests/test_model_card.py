"""The model card OUT/checkpoint/README.md: Hugging Face front matter, graph, gains, recipe, lock hashes."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from traitgraph.cli import main
from traitgraph.linker.lock import read_lock

from conftest import pirate_node


def _card(out):
    text = (out / "checkpoint" / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    _, meta, body = text.split("---\n", 2)
    return yaml.safe_load(meta), body


@pytest.fixture
def licensed_base(tmp_path, tiny_base_dir):
    """The pico base with a model card of its own that names its licence."""
    base = tmp_path / "licensed-base"
    shutil.copytree(tiny_base_dir, base)
    (base / "README.md").write_text("---\nlicense: mit\n---\n# pico\n")
    return base


def _specs(tiny_specs, tmp_path, base):
    polite = pirate_node(description="Polite | pirate.", weight=0.5, edges=[{"to": "pirate", "kind": "refines"}])
    specs = tiny_specs(nodes={"pirate": pirate_node(), "polite": polite})
    data = yaml.safe_load((specs / "personality.yaml").read_text())
    data["base"] = str(base)
    (specs / "personality.yaml").write_text(yaml.safe_dump(data))
    return specs


def test_card_after_link_then_refreshed_after_eval(tmp_path, tiny_specs, licensed_base):
    specs = _specs(tiny_specs, tmp_path, licensed_base)
    out = tmp_path / "out"
    assert main(["build", str(specs), "-o", str(out), "--", "link"]) == 0
    meta, body = _card(out)
    lock = read_lock(out / "traitgraph.lock")
    assert meta["license"] == "mit"  # from the base's own card
    assert "base_model" not in meta  # a local directory has no hub id
    assert {"traitgraph", "ties"} <= set(meta["tags"])
    assert "model-index" not in meta and "Not evaluated yet" in body
    assert "README.md" not in lock.outputs  # the card is documentation, not a lock output
    for n in lock.nodes:
        assert n.training_hash in body and n.vector_sha256 in body
    for name, digest in lock.outputs.items():
        assert f"| `{name}` | `{digest}` |" in body
    assert "n_polite -->|refines| n_pirate" in body and 'n_pirate["pirate (+1)"]' in body
    assert "Polite \\| pirate." in body  # a description cannot break the table

    assert main(["build", str(specs), "-o", str(out)]) == 0  # eval now
    meta, body = _card(out)
    report = json.loads((out / "report.json").read_text())
    metrics = {m["name"]: m["value"] for r in meta["model-index"][0]["results"] for m in r["metrics"]}
    for node in report["nodes"]:
        assert metrics[f"{node['id']} ({node['measure']})"] == pytest.approx(node["directed_gain_linked"], abs=1e-4)
    assert metrics["general-text loss (linked)"] == pytest.approx(report["retention"]["linked_loss"], abs=1e-4)
    assert "Not evaluated yet" not in body and "gate `" in body
    assert meta["license"] == "mit"  # still known after the refresh
    # the card does not disturb the build: nothing to do, and the lock still verifies
    assert main(["status", str(specs), "-o", str(out)]) == 0
    assert main(["verify", str(out), "--specs", str(specs)]) == 0


def test_embedded_base_facts_come_from_its_gguf():
    from traitgraph.linker.model_card import base_facts

    try:
        facts = base_facts("smollm2-135m-instruct", None)
    except Exception as exc:  # the embedded base is part of the install (scripts/setup.sh)
        pytest.fail(f"embedded base not installed: {exc}")
    assert facts.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert facts.license == "apache-2.0"


def test_embedded_base_licence_is_read_once_into_the_conversion_record(tmp_path):
    """Reading the GGUF's metadata takes seconds, and every link and evaluation writes a card:
    the licence is kept in the converted base's record (an older record gains it on first read)."""
    from traitgraph.compiler.base_model import CONVERSION_RECORD
    from traitgraph.linker.model_card import base_facts

    old = tmp_path / "old"
    old.mkdir()
    (old / CONVERSION_RECORD).write_text(json.dumps({"conversion": 1, "source": "x.gguf"}))
    assert base_facts("smollm2-135m-instruct", None, old).license == "apache-2.0"  # read from the GGUF
    assert json.loads((old / CONVERSION_RECORD).read_text()) == {
        "conversion": 1,
        "source": "x.gguf",
        "license": "apache-2.0",
    }
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    (recorded / CONVERSION_RECORD).write_text(json.dumps({"conversion": 1, "license": "recorded-licence"}))
    assert base_facts("smollm2-135m-instruct", None, recorded).license == "recorded-licence"  # not the GGUF's
