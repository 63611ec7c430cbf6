"""Load a specs directory into a validated :class:`Spec`.

Layout::

    SPECS_DIR/personality.yaml
    SPECS_DIR/nodes/<id>.yaml          (one behaviour node each)

Loading never stops at the first mistake: every file is read, every problem
is collected as a :class:`~traitgraph.errors.SpecProblem` (file, node, field,
message, hint), and one :class:`~traitgraph.errors.SpecError` carries them all.

>>> spec = load_specs("specs")                 # doctest: +SKIP
>>> spec.training_settings("listening").steps   # doctest: +SKIP
24
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import networkx as nx
import yaml
from pydantic import BaseModel, ValidationError

from traitgraph.errors import SpecError, SpecProblem
from traitgraph.graph.confine import OutsideSpecs, confined_path, read_confined
from traitgraph.graph.dreamfile import DREAM_FIELD, dream_rel, dream_spec_file, read_header
from traitgraph.graph.examples_file import ExampleSource, read_examples_file, validation_problems
from traitgraph.graph.schema import (
    DEPENDENCY_EDGE_KINDS,
    DreamSettings,
    Example,
    NodeSpec,
    Personality,
    TrainingSettings,
)

PERSONALITY_FILE = "personality.yaml"
NODES_DIR = "nodes"


@dataclass(frozen=True)
class LoadedNode:
    """A validated node with everything it trains on."""

    spec: NodeSpec
    file: Path
    examples: tuple[Example, ...]
    """Inline examples, then those of ``examples_file``, then those of the ``training.dream`` file."""
    data_files: tuple[Path, ...] = ()
    """The files read for ``examples`` (resolved), in order."""
    data_counts: tuple[int, ...] = ()
    """How many examples each of ``data_files`` gave."""
    dream_file: Path | None = None
    """The ``training.dream`` file read (resolved), when the node sets it."""
    dream_header: dict | None = field(default=None, hash=False)
    """That file's header (how it was written); ``None`` when it has none."""

    @property
    def id(self) -> str:
        return self.spec.id


@dataclass
class Spec:
    """A whole, valid personality: its settings and its nodes."""

    specs_dir: Path
    personality_file: Path
    personality: Personality
    nodes: dict[str, LoadedNode] = field(default_factory=dict)

    def training_settings(self, node_id: str) -> TrainingSettings:
        """The node's effective training settings: defaults merged with its overrides."""
        return merged_training(self.nodes[node_id].spec, self.personality)

    def dependencies(self, node_id: str) -> list[str]:
        """Nodes whose task vectors this node trains on top of (its ``refines`` targets)."""
        return sorted({e.to for e in self.nodes[node_id].spec.edges if e.kind in DEPENDENCY_EDGE_KINDS})

    def graph(self) -> nx.DiGraph:
        """The personality as a directed graph: one vertex per node, one edge per spec edge."""
        g = nx.DiGraph(name=self.personality.name)
        for node_id, node in sorted(self.nodes.items()):
            g.add_node(
                node_id,
                weight=node.spec.weight,
                description=node.spec.description,
                examples=len(node.examples),
                eval_cases=len(node.spec.eval),
            )
        for node_id, node in sorted(self.nodes.items()):
            for edge in node.spec.edges:
                g.add_edge(node_id, edge.to, kind=edge.kind)
        return g

    def refines_graph(self) -> nx.DiGraph:
        """Every node, with an edge from each ``refines`` target to the node that trains on top of it."""
        deps = nx.DiGraph()
        deps.add_nodes_from(self.nodes)
        for node_id in self.nodes:
            for dep in self.dependencies(node_id):
                deps.add_edge(dep, node_id)
        return deps

    def build_order(self) -> list[str]:
        """Node ids with every dependency before its dependents (ties broken by id)."""
        return list(nx.lexicographical_topological_sort(self.refines_graph()))


def merged_training(node: NodeSpec, personality: Personality) -> TrainingSettings:
    """A node's effective training settings: the personality's with the node's overrides laid over."""
    return node.training.apply(personality.training) if node.training is not None else personality.training


# --------------------------------------------------------------------------- helpers


class _DuplicateKey(yaml.constructor.ConstructorError):
    """A key given twice in one mapping (PyYAML would silently keep the last)."""


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys, so a repeated ``examples:``
    block is an error instead of silently dropping the first one."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *defaults` then explicit keys is legitimate overriding
                key = self.construct_object(key_node, deep=deep)
                try:
                    seen = key in first
                except TypeError:  # unhashable key: SafeLoader reports it below
                    continue
                if seen:
                    raise _DuplicateKey(
                        None,
                        None,
                        f"duplicate key '{key}' (first given at line {first[key] + 1})",
                        key_node.start_mark,
                    )
                first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _yaml_error_line(exc: yaml.YAMLError, text: str) -> str:
    """`` at line L, column C`` of a YAML error ('' when unknown); a reader error (a NUL byte) has only an offset."""
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        return f" at line {mark.line + 1}, column {mark.column + 1}"
    if isinstance(exc, yaml.reader.ReaderError):
        before = text[: exc.position]
        return f" at line {before.count(chr(10)) + 1}, column {len(before) - before.rfind(chr(10))}"
    return ""


def _read_yaml_mapping(file: Path, problems: list[SpecProblem], node: str | None, specs_dir: Path) -> dict | None:
    """Parse a YAML file (confined to ``specs_dir``) that must hold a mapping; record a problem
    and return None otherwise."""
    try:
        text = read_confined(file, specs_dir)
    except OutsideSpecs as exc:
        problems.append(
            SpecProblem(
                file=file,
                node=node,
                message=f"cannot read file: {exc}",
                hint="spec files are regular files inside the specs directory",
            )
        )
        return None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except RecursionError:
        problems.append(SpecProblem(file=file, node=node, message="YAML nested too deeply to read"))
        return None
    except _DuplicateKey as exc:
        mark = exc.problem_mark
        problems.append(
            SpecProblem(
                file=file,
                node=node,
                message=f"YAML error at line {mark.line + 1}, column {mark.column + 1}: {exc.problem}",
                hint="give each key once; later values would otherwise silently replace earlier ones",
            )
        )
        return None
    except yaml.YAMLError as exc:
        where = _yaml_error_line(exc, text)
        reason = getattr(exc, "problem", None) or str(exc)
        problems.append(
            SpecProblem(
                file=file,
                node=node,
                message=f"YAML syntax error{where}: {reason}",
                hint="quote values that contain ': ' or start with a special character, or use a `|` block",
            )
        )
        return None
    if data is None:
        problems.append(SpecProblem(file=file, node=node, message="file is empty"))
        return None
    if not isinstance(data, dict):
        problems.append(
            SpecProblem(
                file=file, node=node, message=f"expected a mapping of keys to values, got {type(data).__name__}"
            )
        )
        return None
    return data


def _validate(model: type[BaseModel], data: dict, file: Path, node: str | None, problems: list[SpecProblem]):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems.extend(validation_problems(exc, file, node))
        return None


def _load_examples_file(
    node: NodeSpec, node_file: Path, specs_dir: Path, problems: list[SpecProblem]
) -> tuple[tuple[Example, ...], Path | None]:
    rel = node.examples_file
    assert rel is not None
    source = ExampleSource(node.id, node_file, "examples_file", "paths are relative to the node file")
    target = node_file.parent / rel
    examples, text = read_examples_file(target, rel, source, specs_dir, problems)
    return examples, (target.resolve() if text is not None else None)


def _check_general_text(rel: str, personality_file: Path, specs_dir: Path, problems: list[SpecProblem]) -> None:
    """``eval.general_text`` must exist now (not after training and linking), under the confinement rule."""
    try:
        confined_path(specs_dir / rel, specs_dir)
    except OutsideSpecs as exc:
        problems.append(
            SpecProblem(
                file=personality_file,
                field="eval.general_text",
                message=str(exc),
                hint="a UTF-8 text file inside the specs directory, path relative to it",
            )
        )


# --------------------------------------------------------------------------- loading


def load_specs(specs_dir: str | Path, dream_files: bool = True) -> Spec:
    """Load, validate and return the personality in ``specs_dir``.

    Raises :class:`SpecError` listing every problem found. ``dream_files=False``
    leaves every ``training.dream`` file unread (for ``traitgraph dream``, which
    writes them: each node then has its own examples only).

    >>> spec = load_specs("specs")                         # doctest: +SKIP
    >>> spec.build_order()                                 # doctest: +SKIP
    ['voice', 'curt', ...]
    """
    specs_dir = Path(specs_dir)
    problems: list[SpecProblem] = []
    if not specs_dir.is_dir():
        what = "is a file, not a directory" if specs_dir.exists() else "does not exist"
        raise SpecError(
            [
                SpecProblem(
                    file=specs_dir,
                    message=f"specs directory {what}",
                    hint="pass the directory that holds personality.yaml and nodes/",
                )
            ]
        )
    personality_file = specs_dir / PERSONALITY_FILE
    personality = _load_personality(personality_file, specs_dir, problems)
    node_files = _node_files(specs_dir / NODES_DIR, problems)
    nodes: dict[str, LoadedNode] = {}
    for file in node_files:
        loaded = _load_node(file, specs_dir, nodes, problems)
        if loaded is not None:
            nodes[loaded.spec.id] = loaded
    # Graph checks run even when some files failed, to report everything at
    # once; an edge to a node whose file exists but failed to load is not
    # reported as dangling (its own problem is).
    _graph_problems(nodes, problems, unloaded={f.stem for f in node_files} - set(nodes))
    if personality is not None:
        _node_setting_problems(personality, personality_file, set(nodes) | {f.stem for f in node_files}, problems)
        training = _effective_training(personality, nodes, problems)
        if dream_files:
            _read_dream_files(training, personality_file, nodes, specs_dir, problems)
    if personality is None or problems:
        raise SpecError(problems)
    return Spec(specs_dir=specs_dir, personality_file=personality_file, personality=personality, nodes=nodes)


def _load_personality(personality_file: Path, specs_dir: Path, problems: list[SpecProblem]) -> Personality | None:
    if not personality_file.is_file():
        problems.append(
            SpecProblem(
                file=personality_file,
                message="missing personality file",
                hint="create it with at least `name:`; see specs/personality.yaml in the traitgraph repo",
            )
        )
        return None
    data = _read_yaml_mapping(personality_file, problems, None, specs_dir)
    personality = None if data is None else _validate(Personality, data, personality_file, None, problems)
    if personality is not None and personality.eval.general_text is not None:
        _check_general_text(personality.eval.general_text, personality_file, specs_dir, problems)
    return personality


def _node_files(nodes_dir: Path, problems: list[SpecProblem]) -> list[Path]:
    # Hidden files (editor locks and backups such as `.#voice.yaml`) are not nodes.
    node_files = (
        sorted(p for p in [*nodes_dir.glob("*.yaml"), *nodes_dir.glob("*.yml")] if not p.name.startswith("."))
        if nodes_dir.is_dir()
        else []
    )
    if not node_files:
        problems.append(
            SpecProblem(
                file=nodes_dir, message="no node files (nodes/<id>.yaml)", hint="add at least one behaviour node"
            )
        )
    return node_files


def _load_node(
    file: Path, specs_dir: Path, loaded: dict[str, LoadedNode], problems: list[SpecProblem]
) -> LoadedNode | None:
    """One node file, validated, with its examples file read; ``None`` (and problems) when it fails."""
    stem = file.stem
    data = _read_yaml_mapping(file, problems, stem, specs_dir)
    if data is None:
        return None
    node_name = data.get("id") if isinstance(data.get("id"), str) else stem
    node = _validate(NodeSpec, data, file, node_name, problems)
    if node is None:
        return None
    if node.id != stem:
        problems.append(
            SpecProblem(
                file=file,
                node=node.id,
                field="id",
                message=f"id '{node.id}' differs from the file name '{file.name}'",
                hint=f"rename the file to {node.id}.yaml or set `id: {stem}`",
            )
        )
        return None
    if node.id in loaded:
        problems.append(
            SpecProblem(
                file=file,
                node=node.id,
                field="id",
                message=f"duplicate id: also defined in {loaded[node.id].file}",
                hint="keep one of nodes/<id>.yaml and nodes/<id>.yml",
            )
        )
        return None
    examples = node.examples
    data_files: tuple[Path, ...] = ()
    data_counts: tuple[int, ...] = ()
    if node.examples_file is not None:
        more, target = _load_examples_file(node, file, specs_dir, problems)
        examples = examples + more
        data_files, data_counts = ((target,), (len(more),)) if target is not None else ((), ())
    _content_problems(node, file, examples, problems)
    return LoadedNode(spec=node, file=file, examples=examples, data_files=data_files, data_counts=data_counts)


def _effective_training(
    personality: Personality, nodes: dict[str, LoadedNode], problems: list[SpecProblem]
) -> dict[str, TrainingSettings]:
    """Each node's training settings with its overrides merged in; a merge that is
    invalid (each block valid alone, not together) is a problem naming the node."""
    settings = {}
    for node_id, node in sorted(nodes.items()):
        try:
            settings[node_id] = merged_training(node.spec, personality)
        except ValidationError as exc:
            for err in exc.errors():
                where = ".".join(str(part) for part in ("training", *err["loc"]))
                problems.append(SpecProblem(file=node.file, node=node_id, field=where, message=err["msg"]))
    return settings


def _read_dream_files(
    training: dict[str, TrainingSettings],
    personality_file: Path,
    nodes: dict[str, LoadedNode],
    specs_dir: Path,
    problems: list[SpecProblem],
) -> None:
    """Append each ``training.dream`` file's examples to its node (in ``nodes``), like an
    examples file read after the node's own; problems name the file that sets the block."""
    claimed: dict[Path, str] = {}
    for node_id, settings in sorted(training.items()):
        node = nodes[node_id]
        if settings.dream is not None:
            nodes[node_id] = _with_dream_file(node, settings.dream, personality_file, specs_dir, claimed, problems)


def _with_dream_file(
    node: LoadedNode,
    settings: DreamSettings,
    personality_file: Path,
    specs_dir: Path,
    claimed: dict[Path, str],
    problems: list[SpecProblem],
) -> LoadedNode:
    rel = dream_rel(settings, node.id)
    spec_file = dream_spec_file(node, personality_file)
    write_it = (
        f"write it with `traitgraph dream {specs_dir} {node.id}`, review it, then build; or remove training.dream"
    )
    source = ExampleSource(node.id, spec_file, DREAM_FIELD, write_it)
    target = specs_dir / rel
    where = dict(file=spec_file, node=node.id, field=DREAM_FIELD)
    if target.resolve() in claimed:
        other = claimed[target.resolve()]
        problems.append(
            SpecProblem(
                **where,
                message=f"'{rel}' is also the dream file of node '{other}'",
                hint="give each node its own file; `{node}` in `file` stands for the node's id",
            )
        )
        return node
    if target.resolve() in node.data_files:
        problems.append(
            SpecProblem(
                **where,
                message=f"'{rel}' is also this node's examples_file, so its examples would train twice",
                hint="remove `examples_file` (training.dream reads the file) or point training.dream elsewhere",
            )
        )
        return node
    examples, text = read_examples_file(target, rel, source, specs_dir, problems)
    if text is None:
        return node
    claimed[target.resolve()] = node.id
    _held_out_problems(node.spec, node.file, examples, problems, also=f" (in the dream file {rel})")
    return replace(
        node,
        examples=node.examples + examples,
        data_files=(*node.data_files, target.resolve()),
        data_counts=(*node.data_counts, len(examples)),
        dream_file=target.resolve(),
        dream_header=read_header(text),
    )


def _content_problems(node: NodeSpec, file: Path, examples, problems: list[SpecProblem]) -> None:
    """A node needs training examples and held-out eval cases that training never saw."""
    if not examples and node.examples_file is None:
        problems.append(
            SpecProblem(
                file=file,
                node=node.id,
                field="examples",
                message="no training examples",
                hint="add at least one {context, response} under `examples:` or set `examples_file:`",
            )
        )
    if not node.eval:
        problems.append(
            SpecProblem(
                file=file,
                node=node.id,
                field="eval",
                message="no held-out eval cases",
                hint="add cases under `eval:` (with `rejected:` for contrastive scoring)",
            )
        )
    _held_out_problems(node, file, examples, problems)


def _held_out_problems(node: NodeSpec, file: Path, examples, problems: list[SpecProblem], also: str = "") -> None:
    """No eval or ood case repeats one of ``examples``' contexts (``also`` says where they come from)."""
    trained = {tuple(map(str, ex.chat())) for ex in examples}
    for kind, cases in (("eval", node.eval), ("ood", node.ood)):
        for i, case in enumerate(cases):
            if tuple(map(str, case.chat())) in trained:
                problems.append(
                    SpecProblem(
                        file=file,
                        node=node.id,
                        field=f"{kind}[{i}]",
                        message=f"this {kind} case repeats a training context{also}, so it is not held out",
                        hint=f"write a new context for the {kind} case",
                    )
                )


def _near_miss(name: str, known: list[str]) -> str | None:
    """The known id closest to a mistyped one (`listning`, `not_rushing`), if any is close."""
    norm = {k.replace("_", "-"): k for k in known}
    close = difflib.get_close_matches(name.replace("_", "-"), list(norm), n=1, cutoff=0.75)
    return norm[close[0]] if close else None


def _graph_problems(
    nodes: dict[str, LoadedNode], problems: list[SpecProblem], unloaded: set[str] = frozenset()
) -> None:
    """Edges to real nodes, no self-edges, one edge per pair, no cycle among dependency edges."""
    deps = nx.DiGraph()
    deps.add_nodes_from(nodes)
    for node_id, node in sorted(nodes.items()):
        seen: dict[str, str] = {}  # target -> kind of the first edge to it
        for i, edge in enumerate(node.spec.edges):
            where = dict(file=node.file, node=node_id, field=f"edges[{i}].to")
            if edge.to == node_id:
                problems.append(SpecProblem(**where, message="a node cannot have an edge to itself"))
                continue
            if edge.to not in nodes:
                if edge.to not in unloaded:
                    known = sorted({*nodes, *unloaded})
                    close = _near_miss(edge.to, known)
                    hint = f"did you mean '{close}'?" if close else f"known nodes: {', '.join(known)}"
                    problems.append(SpecProblem(**where, message=f"edge to unknown node '{edge.to}'", hint=hint))
                continue
            # One edge per ordered pair: the graph is a DiGraph, and two kinds to one
            # node are redundant (related + refines) or contradictory (refines + conflicts).
            if edge.to in seen:
                first = seen[edge.to]
                problems.append(
                    SpecProblem(
                        **where,
                        message=f"duplicate `{edge.kind}` edge to '{edge.to}'"
                        if first == edge.kind
                        else f"a second edge to '{edge.to}' (`{edge.kind}`, after `{first}`)",
                        hint="keep one edge per pair of nodes",
                    )
                )
                continue
            seen[edge.to] = edge.kind
            if edge.kind in DEPENDENCY_EDGE_KINDS:
                deps.add_edge(node_id, edge.to)
    # simple_cycles' order and starting points vary with the hash seed: start
    # each cycle at its smallest id and sort, so the message is the same every run.
    cycles = sorted(c[c.index(min(c)) :] + c[: c.index(min(c))] for c in nx.simple_cycles(deps))
    for cycle in cycles:
        first = cycle[0]
        problems.append(
            SpecProblem(
                file=nodes[first].file,
                node=first,
                field="edges",
                message="dependency cycle: " + " -> ".join([*cycle, cycle[0]]) + " (via `refines` edges)",
                hint="a node cannot be trained on top of itself; make one of these edges `related`",
            )
        )


def _node_setting_problems(personality: Personality, file: Path, known: set[str], problems: list[SpecProblem]) -> None:
    """Settings keyed by node id (``eval.node_test_pass_rate``) name real nodes."""
    for node_id in sorted(personality.eval.node_test_pass_rate):
        if node_id not in known:
            close = _near_miss(node_id, sorted(known))
            problems.append(
                SpecProblem(
                    file=file,
                    field=f"eval.node_test_pass_rate.{node_id}",
                    message=f"unknown node '{node_id}'",
                    hint=f"did you mean '{close}'?" if close else f"known nodes: {', '.join(sorted(known))}",
                )
            )
