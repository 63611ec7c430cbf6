"""What a node replays: the pool of text or examples mixed into its batches.

``training.replay.source`` picks the pool:

==============  ==========================================================
``general``     the shipped replay corpus (``traitgraph/data/replay_text.txt``),
                written for this project and disjoint from the retention set
                (``general_text.txt``, ``general_prompts.jsonl``), so replay
                never trains on the text that measures forgetting
                When ``training.monitor`` is on, its general-text probe
                lines are taken out of the replay pool.
``base_replies`` the shipped replay prompts (``traitgraph/data/replay_prompts.txt``,
                ordinary questions and requests, disjoint from the retention
                prompts), each answered by the *base* model itself, greedily,
                when the node trains (cached per base): the node learns its
                behaviour while ordinary requests keep the base's own answers.
                A prompt equal to one of the node's own contexts is left out
                (the node's response is what it learns there)
``other_nodes`` the training examples of every other node with a *positive*
                weight, by id. A node with a negative weight is one the user
                wants removed; replaying its examples as targets would train
                the very behaviour the link subtracts, so it is left out
``contrast``    the ``base_replies`` prompts, then the one-message contexts of
                every other node's examples (any weight: the base answers them,
                not the other node; not the nodes it ``refines`` or that refine
                it), each answered by the base: a situational
                node (declining, asking back) learns its habit on its own cases
                and leaves the other behaviours' cases as the base answers them,
                so its vector pushes less on them once linked. Multi-turn
                contexts are left out; a context equal to a shipped prompt is
                taken once, and none equal to one of the node's own contexts
==============  ==========================================================

The pool is resolved here, in the graph, so that the training hash
(:mod:`traitgraph.graph.hashing`) and the compiler see the very same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import networkx as nx

from traitgraph.errors import UserError
from traitgraph.graph.schema import Example, TrainingSettings

#: The shipped replay corpus used by ``replay.source: general`` (not the retention set).
GENERAL_REPLAY_FILE = "replay_text.txt"
#: The shipped prompts the base answers for ``replay.source: base_replies`` (not the retention prompts).
REPLAY_PROMPTS_FILE = "replay_prompts.txt"
#: New tokens the base may use for each replay reply (a cut-off reply is trimmed to its last full sentence).
BASE_REPLY_TOKENS = 64


@dataclass(frozen=True)
class LocatedExample:
    """An example and where it was written, for error messages
    (``nodes/x.yaml: node 'x', examples[3]``)."""

    example: Example
    where: str


@dataclass(frozen=True)
class ReplayPool:
    """The rows a node replays: plain text lines, other nodes' examples, or prompts
    the base answers when training starts (one kind)."""

    text: tuple[str, ...] = ()
    examples: tuple[LocatedExample, ...] = ()
    prompts: tuple[str, ...] = ()
    #: where each prompt comes from, for error messages (the shipped file's line or another node's example);
    #: one for each prompt
    prompt_origins: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.text) + len(self.examples) + len(self.prompts)


def shipped_text(name: str) -> tuple[str, ...]:
    """Non-empty, stripped lines of a text file shipped in ``traitgraph/data/``.

    >>> shipped_text("general_text.txt")[0][:7]     # doctest: +SKIP
    'The Sun'
    """
    try:
        text = resources.files("traitgraph.data").joinpath(name).read_text(encoding="utf-8")
    except (FileNotFoundError, OSError) as exc:
        raise UserError(f"the shipped data file {name} is missing ({exc}); reinstall traitgraph") from None
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _example_lines(data_file: Path) -> list[int]:
    """Line numbers of a data file's example lines (neither blank nor ``#``)."""
    try:
        text = Path(data_file).read_text(encoding="utf-8")
    except OSError:
        return []
    return [
        n for n, line in enumerate(text.splitlines(), start=1) if line.strip() and not line.lstrip().startswith("#")
    ]


def example_locations(node) -> list[str]:
    """A readable location for each of a loaded node's examples, in order.

    Inline examples read ``nodes/x.yaml: node 'x', examples[3]``; those of an
    ``examples_file`` (or of the ``training.dream`` file, after them) read
    ``data/x.jsonl line 7: node 'x', examples[12]``.
    """
    node_id = node.spec.id
    n_inline = len(node.spec.examples)
    out = [f"{node.file}: node '{node_id}', examples[{i}]" for i in range(n_inline)]
    files = tuple(getattr(node, "data_files", ()))
    counts = tuple(getattr(node, "data_counts", ())) or ((len(node.examples) - n_inline,) if files else ())
    sources: list[tuple[Path | None, int]] = []  # (file, index in it) for each example after the inline ones
    for data_file, count in zip(files, counts):
        sources += [(data_file, j) for j in range(count)]
    lines = {data_file: _example_lines(data_file) for data_file in files}
    for i in range(n_inline, len(node.examples)):
        data_file, j = sources[i - n_inline] if i - n_inline < len(sources) else (None, i - n_inline)
        found = lines.get(data_file, [])
        src = f"{data_file} line {found[j]}" if j < len(found) else f"{data_file or node.file} record {j + 1}"
        out.append(f"{src}: node '{node_id}', examples[{i}]")
    return out


def located_examples(node) -> tuple[LocatedExample, ...]:
    """Every training example of a loaded node (inline, then ``examples_file``), located."""
    return tuple(LocatedExample(ex, where) for ex, where in zip(node.examples, example_locations(node)))


def replay_nodes(spec, node_id: str) -> list[str]:
    """The nodes whose examples ``node_id`` replays with ``source: other_nodes``, by id:
    every other node with a positive weight (see module doc)."""
    return [other for other in sorted(spec.nodes) if other != node_id and spec.nodes[other].spec.weight > 0]


def contrast_nodes(spec, node_id: str) -> list[str]:
    """The nodes whose contexts ``node_id`` replays with ``source: contrast``, by id: every
    other node except those it ``refines`` or that refine it, directly or not (a node trains
    on top of its parents' vectors; the base's answers on their situations would undo them)."""
    refines = spec.refines_graph()
    family = nx.ancestors(refines, node_id) | nx.descendants(refines, node_id) | {node_id}
    return [other for other in sorted(spec.nodes) if other not in family]


def shipped_prompt_origins(prompts: tuple[str, ...]) -> tuple[str, ...]:
    """Where each shipped replay prompt comes from, for error messages."""
    return tuple(f"replay prompt {i + 1} ({REPLAY_PROMPTS_FILE})" for i in range(len(prompts)))


def own_contexts(spec, node_id: str) -> set[str]:
    """The one-message contexts of the node's own examples."""
    return {ex.context for ex in spec.nodes[node_id].examples if ex.context is not None}


def shipped_prompts_without(own: set[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The shipped replay prompts that are not in ``own``, and where each comes from."""
    shipped = shipped_text(REPLAY_PROMPTS_FILE)
    kept = [(p, where) for p, where in zip(shipped, shipped_prompt_origins(shipped)) if p not in own]
    return tuple(p for p, _ in kept), tuple(where for _, where in kept)


def base_replies_pool(spec, node_id: str) -> ReplayPool:
    """The pool of ``source: base_replies``: the shipped replay prompts, less any that is one of
    the node's own contexts (the node's response is what it should learn there, not the base's)."""
    prompts, origins = shipped_prompts_without(own_contexts(spec, node_id))
    return ReplayPool(prompts=prompts, prompt_origins=origins)


def contrast_pool(spec, node_id: str) -> ReplayPool:
    """The pool of ``source: contrast``: the shipped replay prompts, then each contrast
    node's one-message example contexts (by node id, in example order), without repeats
    and without the node's own contexts; each prompt with where it comes from."""
    own = own_contexts(spec, node_id)
    shipped, shipped_origins = shipped_prompts_without(own)
    prompts, origins = list(shipped), list(shipped_origins)
    seen = set(shipped) | own  # every shipped prompt is in one or the other
    for other in contrast_nodes(spec, node_id):
        for located in located_examples(spec.nodes[other]):
            context = located.example.context
            if context is not None and context not in seen:
                seen.add(context)
                prompts.append(context)
                origins.append(f"{located.where}, its context replayed by node '{node_id}' (replay.source: contrast)")
    return ReplayPool(prompts=tuple(prompts), prompt_origins=tuple(origins))


def probe_indices(n_lines: int, n_probe: int) -> list[int]:
    """Indices of the general-text probe: ``n_probe`` lines spread evenly over a
    file of ``n_lines`` (all of them when the file is shorter).

    >>> probe_indices(10, 3), probe_indices(2, 5)
    ([0, 3, 6], [0, 1])
    """
    if n_probe >= n_lines:
        return list(range(n_lines))
    return sorted({(i * n_lines) // n_probe for i in range(n_probe)})


def general_probe(settings: TrainingSettings) -> tuple[str, ...]:
    """The monitor's general-text probe: lines of the replay corpus (never the
    retention set); empty when the monitor is off."""
    if settings.monitor is None:
        return ()
    lines = shipped_text(GENERAL_REPLAY_FILE)
    return tuple(lines[i] for i in probe_indices(len(lines), settings.monitor.general_lines))


def general_replay_text(settings: TrainingSettings) -> tuple[str, ...]:
    """The replay corpus, less the monitor's probe lines when the monitor is on
    (a probe that was trained on would not measure forgetting)."""
    lines = shipped_text(GENERAL_REPLAY_FILE)
    if settings.monitor is None:
        return lines
    probe = set(probe_indices(len(lines), settings.monitor.general_lines))
    return tuple(line for i, line in enumerate(lines) if i not in probe)


def replay_pool(spec, node_id: str, settings: TrainingSettings) -> ReplayPool:
    """The replay pool of a node (empty when replay is off)."""
    if settings.replay.fraction <= 0:
        return ReplayPool()
    if settings.replay.source == "general":
        pool = ReplayPool(text=general_replay_text(settings))
    elif settings.replay.source == "base_replies":
        pool = base_replies_pool(spec, node_id)
    elif settings.replay.source == "contrast":
        pool = contrast_pool(spec, node_id)
    else:
        pool = ReplayPool(
            examples=tuple(ex for other in replay_nodes(spec, node_id) for ex in located_examples(spec.nodes[other]))
        )
    if not len(pool):
        node = spec.nodes[node_id]
        raise UserError(
            f"{node.file}: node '{node_id}', field training.replay: replay source "
            f"'{settings.replay.source}' has no examples (other nodes with a negative weight are never "
            "replayed); set `replay: fraction: 0` or use `source: general`"
        )
    return pool
