"""The README stands alone: no link leaves the repository, the spec reference is the schema's,
and every environment variable and exit code is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from traitgraph.graph.reference import END, START, spec_reference

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
USER_DOCS = [README, *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)


@pytest.mark.parametrize("doc", USER_DOCS, ids=lambda p: p.name)
def test_every_link_stays_inside_the_repository(doc):
    outside = []
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+://", target) or target.startswith("#"):
            continue  # web pages and anchors are not files of another checkout
        path = (doc.parent / target.split("#")[0]).resolve()
        if REPO not in path.parents or not path.exists():
            outside.append(target)
    assert outside == []


def test_the_spec_reference_is_generated_from_the_schema():
    text = README.read_text(encoding="utf-8")
    assert START in text and END in text
    section = text[text.index(START) : text.index(END) + len(END)]
    assert section == spec_reference(), "run: python scripts/spec_reference.py --write"
    assert "None" not in section and "(0.9, 0.999)" not in section  # YAML, not Python
    assert "| `training.optimizer.betas` | `[0.9, 0.999]` |" in section


def environment_variables() -> set[str]:
    """Every TRAITGRAPH_* variable the package reads."""
    names = set()
    for path in (REPO / "traitgraph").rglob("*.py"):
        names |= set(re.findall(r"[\"'](TRAITGRAPH_[A-Z_]+)[\"']", path.read_text(encoding="utf-8")))
    return names


def test_every_environment_variable_is_documented():
    found = environment_variables()
    assert {"TRAITGRAPH_CACHE", "TRAITGRAPH_TRAIN_THREADS", "TRAITGRAPH_EVAL_THREADS"} <= found
    text = README.read_text(encoding="utf-8")
    assert [name for name in sorted(found) if f"| `{name}` |" not in text] == []


def test_the_exit_codes_are_documented():
    text = README.read_text(encoding="utf-8")
    for code, meaning in (("0", "success"), ("1", "internal error"), ("2", "user error")):
        assert re.search(rf"^\| {code} \| {meaning}", text, re.M), code
