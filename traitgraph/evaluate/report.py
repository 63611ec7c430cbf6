"""The evaluation report: one pydantic document (``OUT/report.json``) and its rendering
(``OUT/report.md`` with PNG figures under ``OUT/figures/``).

The parts live in their own modules: :mod:`~traitgraph.evaluate.schema` (the
document), :mod:`~traitgraph.evaluate.gates` (the budgets),
:mod:`~traitgraph.evaluate.markdown` (the rendering); their public names are
importable from here too. This module writes a report to disk.

``report.json`` holds every number behind every table and figure, so
``traitgraph report`` redraws the whole report from it without a model.
Every file is written atomically; ``report.json`` is written last, so a
report that says it passed always has its figures beside it.

>>> report = EvalReport.model_validate_json(Path("out/report.json").read_text())  # doctest: +SKIP
>>> write_report(report, Path("out"))                                            # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

from traitgraph.atomic import write_text_atomic
from traitgraph.evaluate.gates import check_gates, gate_failure_message
from traitgraph.evaluate.markdown import (  # noqa: F401  (old private names, for old callers)
    _cell,
    _f,
    _pct,
    behaviour_table,
    gates_table,
    interference_table,
    print_summary,
    render_markdown,
    retention_table,
)
from traitgraph.evaluate.schema import (
    FIGURES_DIR,
    FORMAT,
    REPORT_JSON,
    REPORT_MD,
    CaseRow,
    EvalReport,
    Gate,
    GraphPicture,
    Interference,
    ModelScore,
    NodeResult,
    PromptResult,
    Retention,
    Sample,
    TrainingTrace,
    _Model,  # noqa: F401
    read_report,
)

__all__ = [
    "FIGURES_DIR",
    "FORMAT",
    "REPORT_JSON",
    "REPORT_MD",
    "CaseRow",
    "EvalReport",
    "Gate",
    "GraphPicture",
    "Interference",
    "ModelScore",
    "NodeResult",
    "PromptResult",
    "Retention",
    "Sample",
    "TrainingTrace",
    "behaviour_table",
    "check_gates",
    "gate_failure_message",
    "gates_table",
    "interference_table",
    "print_summary",
    "read_report",
    "render_markdown",
    "retention_table",
    "write_report",
]


def write_report(report: EvalReport, out_root: str | Path) -> EvalReport:
    """Draw the figures, then write ``report.md`` and ``report.json`` (last), atomically.

    Returns the report with its ``figures`` filled in.
    """
    from traitgraph.evaluate.plots import draw_figures

    out_root = Path(out_root)
    figures = draw_figures(report, out_root / FIGURES_DIR)
    report = report.model_copy(update={"figures": {k: str(v.relative_to(out_root)) for k, v in figures.items()}})
    write_text_atomic(out_root / REPORT_MD, render_markdown(report))
    write_text_atomic(out_root / REPORT_JSON, json.dumps(report.model_dump(mode="json"), indent=1) + "\n")
    return report
