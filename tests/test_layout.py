"""The package layout: imports flow one way through the pipeline, with no cycles.

The layers, earliest first, are the stages of the data flow::

    graph -> compiler -> linker -> builder -> evaluate -> pipeline -> commands (and cli)

A module may import its own layer or an earlier one, never a later one. The
shared base modules (``traitgraph/__init__.py``, ``errors.py``, ``atomic.py``,
``versions.py``, ``faults.py``, ``environment.py`` and the ``data`` package) sit below every layer: anyone may
import them and they import no layer. The import graph is read with ``ast``
from the source, so imports inside functions (lazy imports) count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

import traitgraph

PACKAGE_DIR = Path(traitgraph.__file__).parent
REPO = PACKAGE_DIR.parent

#: Layer order, earliest first.
LAYERS = ["base", "graph", "compiler", "linker", "builder", "evaluate", "pipeline", "commands"]

BASE_MODULES = {
    "traitgraph",
    "traitgraph.errors",
    "traitgraph.atomic",
    "traitgraph.versions",
    "traitgraph.faults",
    "traitgraph.environment",
    "traitgraph.data",
}

#: The compiler turns one resolved target into a task vector. From the graph layer
#: it may use the values a target is made of: the validated settings models
#: (``schema``), the target and its replay pool (``target``, ``replay``) and the
#: pure device policy (``device_policy``); never the loading or hashing of the
#: whole spec (``load``, ``hashing``), which stay on the graph's side.
COMPILER_MAY_IMPORT_FROM_GRAPH = {
    "traitgraph.graph.schema",
    "traitgraph.graph.target",
    "traitgraph.graph.replay",
    "traitgraph.graph.device_policy",
}

#: Known exceptions, each with its reason (none today).
ALLOWED_EXCEPTIONS: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    """``traitgraph/linker/link.py`` -> ``traitgraph.linker.link``; packages name their folder."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py")) if "__pycache__" not in p.parts}


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """Every traitgraph module ``path`` imports, at any depth of the file (functions included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if is_package(path) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in known else source)
    return {m for m in found if m in known}


def import_graph() -> nx.DiGraph:
    modules = package_modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        for target in imported_modules(name, path, set(modules)):
            if target != name:
                graph.add_edge(name, target)
    return graph


def layer_of(module: str) -> str:
    if module in BASE_MODULES or module.startswith("traitgraph.data."):
        return "base"
    if module in ("traitgraph.cli", "traitgraph.__main__") or module.startswith("traitgraph.commands"):
        return "commands"
    if module == "traitgraph.pipeline":
        return "pipeline"
    top = module.split(".")[1]
    if top not in LAYERS:
        raise AssertionError(f"module {module} belongs to no layer: add its folder to LAYERS in tests/test_layout.py")
    return top


def uphill_imports(graph: nx.DiGraph) -> list[str]:
    problems = []
    for source, target in sorted(graph.edges):
        if (source, target) in ALLOWED_EXCEPTIONS:
            continue
        src, dst = layer_of(source), layer_of(target)
        if LAYERS.index(dst) > LAYERS.index(src):
            problems.append(f"{source} ({src}) imports {target} ({dst})")
        elif src == "compiler" and dst == "graph" and target not in COMPILER_MAY_IMPORT_FROM_GRAPH:
            problems.append(f"{source} (compiler) imports {target}: the compiler may use only graph.schema")
    return problems


def test_every_module_belongs_to_a_layer():
    for module in package_modules():
        assert layer_of(module) in LAYERS


def test_imports_never_go_uphill():
    assert uphill_imports(import_graph()) == []


def test_the_import_graph_has_no_cycle():
    cycles = list(nx.simple_cycles(import_graph()))
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c + [c[0]]) for c in cycles)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """The checker itself can fail: an uphill import inside a function is reported."""
    pkg = tmp_path / "traitgraph" / "graph"
    pkg.mkdir(parents=True)
    source = pkg / "probe.py"
    source.write_text("def f():\n    from traitgraph.evaluate import run\n    from . import load\n")
    known = {"traitgraph.evaluate", "traitgraph.evaluate.run", "traitgraph.graph", "traitgraph.graph.load"}
    found = imported_modules("traitgraph.graph.probe", source, known)
    assert found == {"traitgraph.evaluate.run", "traitgraph.graph.load"}
    graph = nx.DiGraph([("traitgraph.graph.probe", "traitgraph.evaluate.run")])
    assert uphill_imports(graph) == ["traitgraph.graph.probe (graph) imports traitgraph.evaluate.run (evaluate)"]
    assert uphill_imports(nx.DiGraph([("traitgraph.compiler.x", "traitgraph.graph.load")])) != []


@pytest.mark.parametrize("forbidden", ["build", "dist", "venv", ".venv"])
def test_no_package_folder_has_a_name_tools_skip(forbidden):
    """ruff, black, pytest and the usual .gitignore treat these folder names as output and skip them."""
    folders = [p for p in PACKAGE_DIR.rglob("*") if p.is_dir() and p.name == forbidden]
    assert folders == []


#: Longest function, in lines (signature and docstring included), before it needs a written reason.
MAX_FUNCTION_LINES = 60
#: Functions allowed to be longer, each with its reason.
LONG_FUNCTIONS = {
    "traitgraph.graph.draw.draw_graph": "one matplotlib figure: layout, nodes, edges, labels and legend in order",
    "traitgraph.linker.export_lora.export_lora": "one adapter export in order: tensors, SVD per module, PEFT config, "
    "atomic write; the formatter's one-argument-per-line calls make it long",
    "traitgraph.compiler.train.train_node": "the training loop; reworked by issue 12 item 3 (a resolved target in)",
    "traitgraph.commands.train.run": "loads, trains and reports before/after losses; follows train_node's rework",
}


def long_functions() -> dict[str, int]:
    """``module.function`` -> lines, for every function (methods included) longer than the limit."""
    found = {}
    for name, path in package_modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found[f"{name}.{node.name}"] = lines
    return found


def test_no_function_is_longer_than_a_screen_without_a_reason():
    unexplained = {f: n for f, n in long_functions().items() if f not in LONG_FUNCTIONS}
    assert unexplained == {}, f"split these, or add them with a reason to LONG_FUNCTIONS: {unexplained}"
