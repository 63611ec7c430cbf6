"""Pictures of the personality graph: DOT text, PNG and SVG (matplotlib).

Nodes are coloured by the sign of their weight (green adds a behaviour, red
subtracts it) and sized by |weight|; edges are coloured and styled by kind.
"""

from __future__ import annotations

from pathlib import Path

import networkx as nx

from traitgraph.atomic import atomic_path, write_text_atomic
from traitgraph.errors import UserError

POSITIVE = "#2e9d5b"
NEGATIVE = "#d1495b"
EDGE_STYLE = {  # kind -> (colour, matplotlib style, DOT style)
    "related": ("#6c757d", "solid", "solid"),
    "refines": ("#1f6feb", "solid", "bold"),
    "conflicts": ("#d1495b", "dashed", "dashed"),
}
PICTURE_FORMATS = (".png", ".svg", ".pdf")


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + escaped + '"'


def to_dot(g: nx.DiGraph) -> str:
    """The graph in Graphviz DOT, coloured like the picture."""
    lines = [
        f"digraph {_quote(g.graph.get('name', 'personality'))} {{",
        "  rankdir=LR;",
        '  node [shape=box, style="rounded,filled", fontcolor=white, fontname="Helvetica"];',
    ]
    for node_id, data in sorted(g.nodes(data=True)):
        w = data.get("weight", 1.0)
        colour = POSITIVE if w >= 0 else NEGATIVE
        label = _quote(f"{node_id}\nweight {w:+g}")
        lines.append(f"  {_quote(node_id)} [label={label}, fillcolor={_quote(colour)}];")
    for src, dst, data in sorted(g.edges(data=True)):
        kind = data.get("kind", "related")
        colour, _, dot_style = EDGE_STYLE.get(kind, EDGE_STYLE["related"])
        lines.append(
            f"  {_quote(src)} -> {_quote(dst)} [label={_quote(kind)}, color={_quote(colour)}, style={dot_style}];"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def draw_graph(g: nx.DiGraph, out: str | Path, title: str | None = None) -> Path:
    """Render the graph to ``out`` (.png, .svg, .pdf or .dot), atomically."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix == ".dot":
        write_text_atomic(out, to_dot(g))
        return out
    if suffix not in PICTURE_FORMATS:
        raise UserError(f"{out}: unknown picture format '{suffix}'; use one of .png, .svg, .pdf, .dot")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    pos = nx.circular_layout(g) if len(g) <= 12 else nx.spring_layout(g, seed=0)
    fig, ax = plt.subplots(figsize=(10, 7))
    for kind, (colour, style, _) in EDGE_STYLE.items():
        edges = [(u, v) for u, v, k in g.edges(data="kind") if k == kind]
        if edges:
            nx.draw_networkx_edges(
                g,
                pos,
                edgelist=edges,
                ax=ax,
                edge_color=colour,
                style=style,
                width=2.0,
                arrows=True,
                arrowsize=18,
                connectionstyle="arc3,rad=0.08",
                min_source_margin=45,
                min_target_margin=45,  # stop outside the label boxes
            )
    for n, (x, y) in pos.items():
        w = g.nodes[n].get("weight", 1.0)
        ax.text(
            x,
            y,
            f"{n}\nweight {w:+g}",
            ha="center",
            va="center",
            color="white",
            fontsize=9 + min(abs(w), 2.0),
            fontweight="bold",
            bbox=dict(boxstyle="round,pad=0.6", fc=POSITIVE if w >= 0 else NEGATIVE, ec="none", alpha=0.95),
        )
    handles = [
        Patch(color=POSITIVE, label="adds a behaviour (weight > 0)"),
        Patch(color=NEGATIVE, label="subtracts a behaviour (weight < 0)"),
    ]
    handles += [Line2D([0], [0], color=c, linestyle=s, lw=2, label=k) for k, (c, s, _) in EDGE_STYLE.items()]
    ax.legend(handles=handles, loc="lower left", fontsize=8, frameon=False, bbox_to_anchor=(0, -0.08))
    ax.set_title(title or g.graph.get("name", "personality"))
    ax.margins(0.15)
    ax.axis("off")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=suffix[1:], dpi=130)
    plt.close(fig)
    return out
