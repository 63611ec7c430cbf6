"""Does any merge recipe meet the "personality survives the merge" targets? A sweep, then a verdict.

    python bench/bench_merge_targets.py                          # the default grid on specs/ -> out-targets/
    python bench/bench_merge_targets.py --out out-targets --check-only     # judge an existing sweep.json
    python bench/bench_merge_targets.py -- --set merge.method=ties,iso_cts --set merge.lambda=1,1.5

Runs ``traitgraph sweep`` (arguments after ``--`` replace the default grid),
then judges every point of ``OUT/sweep/sweep.json`` against the targets:

* mean kept ≥ 0.90 and every node's kept ≥ 0.70;
* no general prompt the base answers is lost;
* general-text loss rises by at most 1 %;
* a point that trained nothing took at most 90 s (link + eval).

It prints one line per point and the points that meet every target; exit
status 0 when at least one does, 1 otherwise. Choose the example's defaults
on these eval-case figures, never on training examples.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

DEFAULT_GRID = [
    "--set",
    "merge.method=ties,task_arithmetic,della,breadcrumbs_ties,tsv_m,iso_c,iso_cts",
    "--set",
    "merge.lambda=1.0,1.5",
]
MEAN_KEPT, NODE_KEPT, LOSS_PCT, SECONDS = 0.90, 0.70, 1.0, 90.0


def verdict(point: dict) -> list[str]:
    """What a sweep point (a sweep.json entry) misses of the targets; empty when it meets them all.

    >>> verdict({"ok": True, "mean_kept": 0.95, "kept": {"a": 0.8}, "prompts_lost": 0,
    ...          "loss_change_pct": 0.4, "trained": [], "seconds": 60})
    []
    """
    if not point["ok"]:
        return [f"failed: {point['error']}"]
    misses = []
    mean = point["mean_kept"]
    if mean is None or mean < MEAN_KEPT:
        misses.append(f"mean kept {mean if mean is None else round(mean, 2)} < {MEAN_KEPT}")
    low = {n: k for n, k in point["kept"].items() if k is None or k < NODE_KEPT}
    if low:
        misses.append("kept < 0.70: " + ", ".join(f"{n} {k if k is None else round(k, 2)}" for n, k in low.items()))
    if point["prompts_lost"]:
        misses.append(f"{point['prompts_lost']} general prompt(s) lost")
    if point["loss_change_pct"] > LOSS_PCT:
        misses.append(f"general-text loss {point['loss_change_pct']:+.2f}% > +{LOSS_PCT}%")
    if not point["trained"] and point.get("evaluated", True) and point["seconds"] > SECONDS:
        misses.append(f"link + eval took {point['seconds']:.0f}s > {SECONDS:.0f}s")
    return misses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specs", default="specs", help="specs directory (default: specs)")
    parser.add_argument("--out", default="out-targets", help="sweep output directory (default: out-targets)")
    parser.add_argument("--check-only", action="store_true", help="judge OUT/sweep/sweep.json without sweeping")
    parser.add_argument("grid", nargs=argparse.REMAINDER, help="-- then traitgraph sweep --set options")
    args = parser.parse_args()
    if not args.check_only:
        grid = [a for a in args.grid if a != "--"] or DEFAULT_GRID
        cmd = [sys.executable, "-m", "traitgraph", "sweep", args.specs, "-o", args.out, *grid]
        print("$ " + " ".join(cmd), flush=True)
        if subprocess.run(cmd, check=False).returncode not in (0, 1):
            return 2
    sweep = json.loads((Path(args.out) / "sweep" / "sweep.json").read_text(encoding="utf-8"))
    good = []
    for point in sweep["points"]:
        misses = verdict(point)
        settings = " ".join(f"{k}={v}" for k, v in point["settings"].items())
        print(f"{point['name']} {settings}: " + ("meets every target" if not misses else "; ".join(misses)))
        good += [point["name"]] if not misses else []
    print(f"points meeting every target: {', '.join(good) or 'none'}; Pareto front: {', '.join(sweep['pareto'])}")
    return 0 if good else 1


if __name__ == "__main__":
    raise SystemExit(main())
