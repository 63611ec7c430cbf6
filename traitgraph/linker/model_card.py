"""The model card: ``OUT/checkpoint/README.md`` in Hugging Face's model-card format.

YAML front matter (``base_model``, ``license`` of the base when known,
``tags``, ``model-index`` with the evaluation's results), then the
personality graph (a Mermaid diagram: text, so the checkpoint gains no image
file), each node's description, weight and gains, retention, the merge
recipe and the lock's hashes.

The card is written after every link and refreshed after every evaluation.
It is *not* one of the lock's outputs: it is derived from the lock and the
report, and changes when the report does, while the lock fixes the bytes of
the weights, config and tokenizer. ``traitgraph verify`` ignores it.

>>> text = render_card(spec, lock, report=None, base=BaseFacts("smollm2-135m-instruct",
...                    hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", license="apache-2.0"))  # doctest: +SKIP
>>> text.splitlines()[0]                                                                   # doctest: +SKIP
'---'
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

#: Hub ids of the embedded bases (a GGUF carries no repository id).
EMBEDDED_HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
CARD_FILE = "README.md"


@dataclass(frozen=True)
class BaseFacts:
    """What the card says about the base model."""

    reference: str
    hub_id: str | None = None
    license: str | None = None


# --------------------------------------------------------------------------- base facts (I/O)


def _front_matter(readme: Path) -> dict[str, Any]:
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError:
        return {}
    if not text.startswith("---"):
        return {}
    try:
        data = yaml.safe_load(text.split("---", 2)[1])
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _gguf_license(gguf: Path, converted: Path | None) -> str | None:
    """The licence of an embedded base: from its conversion record when it has it, else read from
    the GGUF (once per file and process: a build or a sweep writes several cards)."""
    from traitgraph.compiler.base_model import record_license, recorded_license

    if converted is not None:
        known, licence = recorded_license(converted)
        if known:
            return licence
    stat = gguf.stat()
    licence = _gguf_license_of(str(gguf), stat.st_size, stat.st_mtime_ns)
    if converted is not None:
        record_license(converted, licence)
    return licence


@functools.lru_cache(maxsize=8)
def _gguf_license_of(path: str, size: int, mtime_ns: int) -> str | None:
    from traitgraph.compiler.base_model import gguf_license

    return gguf_license(Path(path))


def base_facts(reference: str, specs_dir: Path | None, base_dir: Path | None = None) -> BaseFacts:
    """Hub id and licence of a base: from the embedded GGUF's metadata, or the base directory's
    own model card front matter (``license``, ``base_model``); unknown stays ``None``."""
    from traitgraph.compiler.base_model import base_gguf

    gguf = base_gguf(reference, specs_dir)
    if gguf is not None:
        return BaseFacts(reference, EMBEDDED_HUB_IDS.get(reference), _gguf_license(gguf, base_dir))
    meta = _front_matter(base_dir / "README.md") if base_dir is not None else {}
    hub_id = reference if "/" in reference and not Path(reference).expanduser().exists() else None
    licence = meta.get("license")
    return BaseFacts(reference, hub_id, str(licence) if licence else None)


# --------------------------------------------------------------------------- rendering (pure)


def report_for_lock(report: dict[str, Any] | None, lock) -> dict[str, Any] | None:
    """The report when it evaluated exactly this lock's checkpoint, else ``None``."""
    if not report:
        return None
    inputs = report.get("inputs", {})
    return report if inputs.get("outputs") == dict(sorted(lock.outputs.items())) else None


def model_index(name: str, report: dict[str, Any]) -> list[dict[str, Any]]:
    """Hugging Face ``model-index`` entries: each node's directed gain, and retention."""
    behaviour = [
        {"type": "directed_gain", "name": f"{n['id']} ({n['measure']})", "value": round(n["directed_gain_linked"], 4)}
        for n in report["nodes"]
        if n.get("directed_gain_linked") is not None
    ]
    ret = report["retention"]
    retention = [
        {"type": "loss", "name": "general-text loss (linked)", "value": round(ret["linked_loss"], 4)},
        {"type": "loss", "name": "general-text loss (base)", "value": round(ret["base_loss"], 4)},
    ]
    if ret.get("prompts"):
        ok = sum(p["built_ok"] for p in ret["prompts"]) / len(ret["prompts"])
        retention.append({"type": "accuracy", "name": "general prompts answered", "value": round(ok, 4)})
    task = {"type": "text-generation", "name": "Text Generation"}
    return [
        {
            "name": name,
            "results": [
                {
                    "task": task,
                    "dataset": {"type": "traitgraph-eval-cases", "name": f"{name} held-out eval cases"},
                    "metrics": behaviour,
                },
                {
                    "task": dict(task),
                    "dataset": {"type": "traitgraph-general", "name": "general text and prompts"},
                    "metrics": retention,
                },
            ],
        }
    ]


def front_matter(spec, lock, report: dict[str, Any] | None, base: BaseFacts) -> str:
    meta: dict[str, Any] = {}
    if base.hub_id:
        meta["base_model"] = base.hub_id
    if base.license:
        meta["license"] = base.license
    meta["library_name"] = "transformers"
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = ["traitgraph", "personality", "merge", lock.merge.method.replace("_", "-")]
    if report:
        meta["model-index"] = model_index(spec.personality.name, report)
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def mermaid_graph(spec) -> str:
    """The personality graph as a Mermaid flowchart (Hugging Face renders it)."""
    lines = ["```mermaid", "graph LR"]
    for node_id in spec.build_order():
        lines.append(f'  {_mermaid_id(node_id)}["{node_id} ({spec.nodes[node_id].spec.weight:+g})"]')
    for node_id in spec.build_order():
        for edge in spec.nodes[node_id].spec.edges:
            arrow = "-.->" if edge.kind != "refines" else "-->"
            lines.append(f"  {_mermaid_id(node_id)} {arrow}|{edge.kind}| {_mermaid_id(edge.to)}")
    return "\n".join([*lines, "```"])


def _mermaid_id(node_id: str) -> str:
    return "n_" + node_id.replace("-", "_")


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _num(value: float | None, fmt: str = "+.3f") -> str:
    return "–" if value is None else format(value, fmt)


def behaviours_table(spec, lock, report: dict[str, Any] | None) -> str:
    results = {n["id"]: n for n in (report or {}).get("nodes", [])}
    rows = ["| node | weight | description | gain alone | gain linked | kept |", "|---|---|---|---|---|---|"]
    for node in sorted(lock.nodes, key=lambda n: n.id):
        r = results.get(node.id, {})
        description = spec.nodes[node.id].spec.description if node.id in spec.nodes else ""
        kept = r.get("kept")
        rows.append(
            f"| `{node.id}` | {node.weight:+g} | {_cell(description)} | {_num(r.get('directed_gain_alone'))} "
            f"| {_num(r.get('directed_gain_linked'))} | {'–' if kept is None else f'{kept:.0%}'} |"
        )
    note = (
        "Gains are the change of each node's measure (preference margin, or log p of the wanted reply) on its "
        "held-out eval cases, in the direction of its weight: alone = base + w·τ, linked = this checkpoint."
    )
    return "\n".join(rows) + "\n\n" + (note if report else "Not evaluated yet: run `traitgraph build` (eval).")


def retention_section(report: dict[str, Any] | None) -> str:
    if not report:
        return "Not evaluated yet."
    ret = report["retention"]
    rise = 100 * (ret["linked_loss"] - ret["base_loss"]) / ret["base_loss"]
    text = (
        f"General-text loss {ret['base_loss']:.4f} (base) → {ret['linked_loss']:.4f} (this model), "
        f"{rise:+.1f} % over {ret['tokens']} tokens."
    )
    if ret.get("prompts"):
        n = len(ret["prompts"])
        text += (
            f" General prompts answered: {sum(p['base_ok'] for p in ret['prompts'])}/{n} (base), "
            f"{sum(p['built_ok'] for p in ret['prompts'])}/{n} (this model)."
        )
    gates = report.get("gates", [])
    if gates:
        text += "\n\n" + "\n".join(
            f"- gate `{g['name']}`: {'passed' if g['passed'] else 'FAILED'}: {g['message']}" for g in gates
        )
    return text


def recipe_section(lock) -> str:
    merge = lock.merge.model_dump(mode="json", by_alias=True)
    rows = ["| setting | value |", "|---|---|", *(f"| `{k}` | `{v}` |" for k, v in sorted(merge.items()))]
    return (
        "W = W_base + λ · merge(w₁·τ₁, …, wₙ·τₙ), tensor by tensor, where τ = W_trained − W_base "
        "is each node's task vector.\n\n" + "\n".join(rows)
    )


def lock_section(lock) -> str:
    nodes = ["| node | training hash | vector sha256 | weight |", "|---|---|---|---|"]
    nodes += [
        f"| `{n.id}` | `{n.training_hash}` | `{n.vector_sha256}` | {n.weight:+g} |"
        for n in sorted(lock.nodes, key=lambda n: n.id)
    ]
    outputs = ["| file | sha256 |", "|---|---|", *(f"| `{k}` | `{v}` |" for k, v in sorted(lock.outputs.items()))]
    return (
        f"traitgraph {lock.traitgraph_version}; base `{lock.base.reference}` ({lock.base.fingerprint}).\n\n"
        + "\n".join(nodes)
        + "\n\n"
        + "\n".join(outputs)
        + "\n\nThis README is not among the lock's outputs (it is refreshed after each evaluation). "
        "`traitgraph verify OUT` rebuilds the files above from the lock and compares every hash."
    )


def render_card(spec, lock, report: dict[str, Any] | None, base: BaseFacts) -> str:
    """The whole card (front matter and body) as text."""
    report = report_for_lock(report, lock)
    p = spec.personality
    base_line = f"[`{base.hub_id}`](https://huggingface.co/{base.hub_id})" if base.hub_id else f"`{base.reference}`"
    sections = [
        front_matter(spec, lock, report, base),
        f"# {p.name}\n\n{p.description.strip() or 'A personality built with traitgraph.'}\n\n"
        f"Built with traitgraph from {len(lock.nodes)} behaviour node{'s' if len(lock.nodes) != 1 else ''} on {base_line}: one task vector per "
        f"node, linked with `{lock.merge.method}`.",
        "## Personality graph\n\n" + mermaid_graph(spec),
        "## Behaviours\n\n" + behaviours_table(spec, lock, report),
        "## Retention\n\n" + retention_section(report),
        "## Merge recipe\n\n" + recipe_section(lock),
        "## Lock\n\n" + lock_section(lock),
        "## Use\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        'model = AutoModelForCausalLM.from_pretrained("PATH")\ntokenizer = AutoTokenizer.from_pretrained("PATH")\n```',
    ]
    return "\n\n".join(s.rstrip() for s in sections) + "\n"


# --------------------------------------------------------------------------- writing


def write_model_card(out_root: str | Path, spec, lock=None, base_dir: Path | None = None) -> Path:
    """Write ``OUT/checkpoint/README.md`` from the lock (read from ``OUT`` when not given) and,
    when it evaluated this checkpoint, ``OUT/report.json``.

    >>> write_model_card("out", load_specs("specs"))    # doctest: +SKIP
    PosixPath('out/checkpoint/README.md')
    """
    from traitgraph.atomic import write_text_atomic
    from traitgraph.linker.lock import read_lock

    out_root = Path(out_root)
    lock = lock if lock is not None else read_lock(out_root / "traitgraph.lock")
    try:
        report = json.loads((out_root / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        report = None
    if base_dir is None:
        from traitgraph.compiler.base_model import resolve_base

        base_dir = resolve_base(lock.base.reference, spec.specs_dir).path
    base = base_facts(lock.base.reference, spec.specs_dir, base_dir)
    path = out_root / "checkpoint" / CARD_FILE
    write_text_atomic(path, render_card(spec, lock, report, base))
    return path
