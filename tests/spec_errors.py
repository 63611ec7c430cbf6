"""One check for a bad training setting: ``load_specs`` reports exactly one problem
at the right file, node and field, and ``traitgraph check`` exits 2 without a traceback."""

from __future__ import annotations

import pytest

from traitgraph.cli import main
from traitgraph.errors import SpecError
from traitgraph.graph import load_specs

from specs_factory import default_nodes, write_specs


def assert_bad_node_training(tmp_path, capsys, training: dict, field: str, says: str) -> None:
    """Give node ``alpha`` the ``training`` block and check the problem is reported as ``field``."""
    nodes = default_nodes()
    nodes["alpha"]["training"] = training
    specs = write_specs(tmp_path, nodes=nodes)
    with pytest.raises(SpecError) as info:
        load_specs(specs)
    [problem] = info.value.problems
    assert problem.file.name == "alpha.yaml" and problem.node == "alpha" and problem.field == field
    assert says in problem.message
    assert main(["check", str(specs)]) == 2
    err = capsys.readouterr().err
    assert "alpha.yaml" in err and field in err and "Traceback" not in err
