"""Redraw the build report (OUT/report.md and OUT/figures/) from OUT/report.json, without
loading a model or recomputing a score.

    traitgraph report                   # out/report.json -> out/report.md
    traitgraph report specs -o out
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("specs_dir", nargs="?", default="specs", help="specs directory (default: specs)")
    parser.add_argument("-o", "--out", default="out", help="output directory of the build (default: out)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from traitgraph.errors import UserError
    from traitgraph.evaluate.report import REPORT_JSON, REPORT_MD, read_report, write_report

    out = Path(args.out)
    report = write_report(read_report(out / REPORT_JSON), out)
    print(f"wrote {out / REPORT_MD} and {len(report.figures)} figures from {out / REPORT_JSON}")
    try:
        from traitgraph.builder.plan import BuildPlan
        from traitgraph.evaluate.run import eval_inputs

        if report.inputs != eval_inputs(BuildPlan.load(args.specs_dir, out)):
            print(
                "note: the specs or the build changed since this report was computed; "
                "run `traitgraph eval` for fresh numbers"
            )
    except UserError:
        pass  # the specs are not needed to redraw
    return 0
