"""The five seed predictions about training, answered with numbers on the real base.

    python bench/predictions.py [SPECS] [--only 1,2,3,4,5] [--nodes boundaries,not-rushing]
                                [--seeds 0] [--out out] [--threads 1]

The design traitgraph comes from predicts that its defences let a node learn
its behaviour strongly without forgetting. Each prediction is put to a small
experiment anyone can rerun (task vectors are cached by training hash, so a
rerun trains nothing); each prints a table and a verdict:

1. **lr 1e-4 with diverse data and replay does not raise general-text loss.**
   One node trained at lr 1e-4 for 16 steps on its own examples only, then
   with half of each batch replayed: the base's own answers to ordinary
   requests, plain text, and the base's answers with a KL anchor.
2. **Behaviours generalise to out-of-distribution cases.** From a build's
   report (``--out``): each node's directed gain on its ``ood`` cases, alone
   and linked, and its behaviour tests on them.
3. **Context-frozen training keeps context understanding.** The same node
   trained with the context frozen and with full backprop, then asked 30
   questions whose answer is only in the conversation
   (``bench/data/context_probe.jsonl``): answers found and the answer's loss.
4. **Dream data beats real-only on OOD cases.** Each node trained at the same
   budget on its own examples, and on its examples plus a ``traitgraph dream``
   file; directed gain on its ``ood`` cases.
5. **The combined defences beat any single one at matched gain.** One node at
   lr 1e-4 for 16 steps with no defence, each defence alone (replay, writing
   only the upper layers, an L2 anchor, the monitor) and all of them
   together; forgetting is compared per 10 nats of gain (a defence that
   forgets less only because it learns less does not win), and pictured in
   ``bench/results/predictions.png``.

Every recipe is a JSON patch over the example's training settings (see
``bench/bench_training_recipe.py``); the node is scored alone, as base + w·τ.
``--seeds 0,1,2`` repeats each training with other seeds (data order and
projections) and prints the mean and the spread.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from bench_training_recipe import measure, recipe_spec, trained_vector  # noqa: I001 (a sibling script)

UPPER = ["model.layers.1[5-9].*", "model.layers.2[0-9].*"]
#: lr 1e-4 for 16 steps on every tensor with no defence: the starting point of 1 and 5.
BARE = {
    "learning_rate": 1e-4,
    "steps": 16,
    "replay": {"fraction": 0.0},
    "trainable": None,
    "anchor": None,
    "monitor": None,
}
REPLIES = {"fraction": 0.5, "source": "base_replies"}
PREDICTION_1 = {
    "own examples only": BARE,
    "+ replay: the base's answers": {**BARE, "replay": REPLIES},
    "+ replay: plain text": {**BARE, "replay": {"fraction": 0.5, "source": "general"}},
    "+ replay: the base's answers, KL anchor": {**BARE, "replay": REPLIES, "anchor": {"kl": 1.0}},
}
PREDICTION_5 = {
    "no defence": BARE,
    "replay (the base's answers)": {**BARE, "replay": REPLIES},
    "upper layers only": {**BARE, "trainable": UPPER},
    "L2 anchor 0.05": {**BARE, "anchor": {"l2": 0.05, "kl": 0.0}},
    "monitor (every 4)": {**BARE, "monitor": {"every": 4}},
    "all: replay + upper layers + KL anchor + monitor": {
        **BARE,
        "replay": REPLIES,
        "trainable": UPPER,
        "anchor": {"kl": 1.0},
        "monitor": {"every": 4},
    },
}
PROBE = Path(__file__).parent / "data" / "context_probe.jsonl"
PROBE_TOKENS = 24


@dataclasses.dataclass
class Bench:
    """What every experiment needs: the specs, the base, its scores, the cache."""

    spec: object
    base: object
    model: object
    tokenizer: object
    lines: list
    prompts: list
    cache: object
    before: dict = dataclasses.field(default_factory=dict)
    only_recipes: tuple[str, ...] = ()
    """Run only these recipes of 1 and 5 (empty: all), e.g. to finish a run split in parts."""

    def baseline(self, node_id: str, light: bool = False) -> dict:
        """The base's scores on the node's cases (a full score serves a light one too)."""
        if node_id not in self.before and not (light and (node_id, "light") in self.before):
            key = (node_id, "light") if light else node_id
            self.before[key] = self.score(self.spec.nodes[node_id], None, light=light)
        return self.before.get(node_id) or self.before[(node_id, "light")]

    def vector(self, node_id: str, patch: dict, seed: int, spec=None) -> Path:
        from traitgraph.evaluate.threads import torch_threads

        settings = {**patch, "seed": seed}
        with torch_threads(1):  # training is bit-identical at one thread, as in a build
            path, _ = trained_vector(recipe_spec(spec or self.spec, node_id, settings), node_id, self.base, self.cache)
        return path

    def score(self, node, path: Path | None, light: bool = False) -> dict:
        """``measure`` of base + w·τ (the base when ``path`` is None); ``light``: margins and the
        behaviour tests only, without the general prompts and text (a tenth of the time)."""
        from traitgraph.evaluate.scores import vectors_applied

        vectors = [] if path is None else [(path, node.spec.weight)]
        with vectors_applied(self.model, vectors):
            if light:
                return margins_and_tests(self.model, self.tokenizer, node)
            return measure(self.model, self.tokenizer, node, self.lines, self.prompts, 48)


def margins_and_tests(model, tokenizer, node) -> dict:
    """Mean margins on the eval and ood cases, and the ood cases' behaviour tests."""
    from traitgraph.evaluate.expectations import check_reply
    from traitgraph.evaluate.scores import generate, score_cases

    k = len(node.spec.eval)
    margins = [s.margin for s in score_cases(model, tokenizer, [*node.spec.eval, *node.spec.ood])]
    tested = [c for c in node.spec.ood if c.expect is not None]
    replies = generate(model, tokenizer, [c.chat() for c in tested], max_new_tokens=48)
    return {
        "eval": statistics.fmean(margins[:k]),
        "ood": statistics.fmean(margins[k:]) if margins[k:] else float("nan"),
        "ood_tests": [not check_reply(r, c.expect) for r, c in zip(replies, tested)],
    }


def load_bench(specs: str, threads: int) -> Bench:
    from traitgraph.builder.cache import VectorCache
    from traitgraph.compiler.base_model import load_model, resolve_base
    from traitgraph.compiler.data import load_general_text
    from traitgraph.evaluate.inputs import general_prompts
    from traitgraph.graph import load_specs

    torch.set_num_threads(threads)
    spec = load_specs(specs)
    base = resolve_base(spec.personality.base, spec.specs_dir)
    model, tokenizer = load_model(base)
    return Bench(spec, base, model, tokenizer, load_general_text(None), general_prompts(), VectorCache())


# --------------------------------------------------------------------------- figures of one trained node


def effect(bench: Bench, node_id: str, after: dict) -> dict:
    """Directed gains, tests passed, prompts lost and text change of ``after`` against the base
    (NaN for what a light score did not measure)."""
    before, node = bench.baseline(node_id, light="answered" not in after), bench.spec.nodes[node_id]
    sign = math.copysign(1.0, node.spec.weight)
    out = {
        "gain_eval": sign * (after["eval"] - before["eval"]),
        "gain_ood": sign * (after["ood"] - before["ood"]),
        "ood_tests": sum(after["ood_tests"]),
        "ood_tests_base": sum(before["ood_tests"]),
        "ood_tests_of": len(after["ood_tests"]),
        "prompts_lost": float("nan"),
        "text_pct": float("nan"),
    }
    if "answered" in after:
        out["prompts_lost"] = sum(b and not a for b, a in zip(before["answered"], after["answered"]))
        out["text_pct"] = 100 * (after["text"] / before["text"] - 1)
    return out


def over_seeds(rows: list[dict]) -> dict:
    """The mean of each figure over seeds, and the spread (max − min) of the gain and the text change."""
    keys = ["gain_eval", "gain_ood", "prompts_lost", "text_pct", "ood_tests", "ood_tests_base", "ood_tests_of"]
    out = {k: statistics.fmean(r[k] for r in rows) for k in keys}
    out["gain_spread"] = max(r["gain_eval"] for r in rows) - min(r["gain_eval"] for r in rows)
    out["text_spread"] = max(r["text_pct"] for r in rows) - min(r["text_pct"] for r in rows)
    out["seeds"] = len(rows)
    return out


def recipe_rows(bench: Bench, recipes: dict, nodes: list[str], seeds: list[int]) -> list[dict]:
    return [
        seed_row(bench, node_id, name, seeds, patch=patch)
        for node_id in nodes
        for name, patch in recipes.items()
        if not bench.only_recipes or name in bench.only_recipes
    ]


def seed_row(
    bench: Bench, node_id: str, name: str, seeds: list[int], patch: dict | None = None, spec=None, light=False
) -> dict:
    """One table row: ``node_id`` trained under ``patch`` (of ``spec``'s settings) once per seed,
    its :func:`effect` averaged over the seeds; printed as a JSON line as soon as it is known."""
    node = bench.spec.nodes[node_id]
    runs = [
        effect(bench, node_id, bench.score(node, bench.vector(node_id, patch or {}, seed, spec=spec), light=light))
        for seed in seeds
    ]
    row = {"node": node_id, "recipe": name, **over_seeds(runs)}
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A markdown table: (header, key, format) per column."""
    head = "| " + " | ".join(h for h, _, _ in columns) + " |\n|" + "|".join("---" for _ in columns) + "|\n"
    body = "".join("| " + " | ".join(cell(r[k], f) for _, k, f in columns) + " |\n" for r in rows)
    return head + body


def cell(value, spec: str) -> str:
    """One table cell: ``value`` formatted by ``spec``, a dash for a missing (NaN) number."""
    if isinstance(value, float) and math.isnan(value):
        return "–"
    return format(value, spec) if spec else str(value)


RECIPE_COLUMNS = [
    ("node", "node", ""),
    ("recipe", "recipe", ""),
    ("directed gain eval", "gain_eval", "+.1f"),
    ("directed gain ood", "gain_ood", "+.1f"),
    ("general prompts lost", "prompts_lost", ".1f"),
    ("general text", "text_pct", "+.2f"),
]


# --------------------------------------------------------------------------- the five predictions


def prediction_1(bench: Bench, nodes: list[str], seeds: list[int]) -> dict:
    return summary_1(recipe_rows(bench, PREDICTION_1, nodes, seeds))


def in_order(rows: list[dict], recipes: dict) -> list[dict]:
    """Rows by node (first seen first), then in the recipes' order."""
    nodes = list(dict.fromkeys(r["node"] for r in rows))
    names = list(recipes)
    return sorted(
        rows, key=lambda r: (nodes.index(r["node"]), names.index(r["recipe"]) if r["recipe"] in names else 99)
    )


def summary_1(rows: list[dict]) -> dict:
    rows = in_order(rows, PREDICTION_1)
    replays = [r for r in dict.fromkeys(r["recipe"] for r in rows) if r != "own examples only"]
    held = []
    for recipe in replays:
        runs = [r for r in rows if r["recipe"] == recipe]
        held.append(f"{recipe}: {sum(r['text_pct'] <= 0 for r in runs)} of {len(runs)} nodes")
    return {
        "rows": rows,
        "table": table(rows, RECIPE_COLUMNS),
        "verdict": "general-text loss did not rise with " + "; ".join(held),
    }


def prediction_2(out: Path) -> dict:
    from traitgraph.evaluate.report import read_report

    report = read_report(out / "report.json")
    ood_tests = {"base": {}, "built": {}}
    for which, results in (("base", report.tests.base), ("built", report.tests.built)):
        for result in (r for r in results if r.case.startswith("ood")):
            passed, total = ood_tests[which].get(result.group, (0, 0))
            ood_tests[which][result.group] = (passed + result.passed, total + 1)
    rows = []
    for n in report.nodes:
        sign = n.direction
        rows.append(
            {
                "node": n.id,
                "eval_alone": sign * n.gain_alone,
                "eval_linked": sign * n.gain_linked,
                "ood_alone": sign * n.ood.gain_alone if n.ood else float("nan"),
                "ood_linked": sign * n.ood.gain_linked if n.ood else float("nan"),
                "ood_tests": "{}/{}".format(*ood_tests["built"].get(n.id, (0, 0))),
                "ood_tests_base": "{}/{}".format(*ood_tests["base"].get(n.id, (0, 0))),
            }
        )
    return summary_2(rows)


def summary_2(rows: list[dict]) -> dict:
    columns = [
        ("node", "node", ""),
        ("directed gain eval, alone", "eval_alone", "+.1f"),
        ("eval, linked", "eval_linked", "+.1f"),
        ("ood, alone", "ood_alone", "+.1f"),
        ("ood, linked", "ood_linked", "+.1f"),
        ("ood tests passed: base", "ood_tests_base", ""),
        ("linked", "ood_tests", ""),
    ]
    moved = [r["node"] for r in rows if r["ood_alone"] > 0 and r["ood_linked"] > 0]
    return {
        "rows": rows,
        "table": table(rows, columns),
        "verdict": f"{len(moved)} of {len(rows)} nodes move as intended on their ood cases, alone and linked",
    }


def probe_scores(bench: Bench, path: Path | None, weight: float) -> dict:
    """Answers found (greedy reply contains the answer) and the mean loss of the bare answer as the reply."""
    from traitgraph.evaluate.scores import generate, score_cases, vectors_applied
    from traitgraph.graph.schema import EvalCase

    items = [json.loads(line) for line in PROBE.read_text(encoding="utf-8").splitlines() if line.strip()]
    cases = [EvalCase(messages=tuple(i["messages"]), response=i["answer"]) for i in items]
    vectors = [] if path is None else [(path, weight)]
    with vectors_applied(bench.model, vectors):
        replies = generate(bench.model, bench.tokenizer, [c.chat() for c in cases], max_new_tokens=PROBE_TOKENS)
        scores = score_cases(bench.model, bench.tokenizer, cases)
    found = sum(i["answer"].casefold() in r.casefold() for i, r in zip(items, replies))
    return {"found": found, "of": len(items), "answer_loss": statistics.fmean(s.wanted.loss for s in scores)}


def prediction_3(bench: Bench, nodes: list[str], seeds: list[int]) -> dict:
    base = probe_scores(bench, None, 1.0)
    rows = [{"node": "(base)", "context": "-", "seed": "-", **base, "gain_eval": float("nan")}]
    for node_id in nodes:
        node = bench.spec.nodes[node_id]
        for context in ("frozen", "full"):
            for seed in seeds:
                path = bench.vector(node_id, {"context": context}, seed)
                gain = effect(bench, node_id, bench.score(node, path, light=True))["gain_eval"]
                rows.append({"node": node_id, "context": context, "seed": seed, "gain_eval": gain})
                rows[-1].update(probe_scores(bench, path, node.spec.weight))
                print(json.dumps(rows[-1]), flush=True)
    return summary_3(rows)


def summary_3(rows: list[dict]) -> dict:
    base = next(r for r in rows if r["node"] == "(base)")
    trained = sorted((r for r in rows if r is not base), key=lambda r: (r["node"], r["context"], r["seed"]))
    columns = [
        ("node", "node", ""),
        ("context", "context", ""),
        ("seed", "seed", ""),
        ("directed gain eval", "gain_eval", "+.1f"),
        ("probe answers found", "found", "d"),
        ("of", "of", "d"),
        ("answer loss", "answer_loss", ".3f"),
    ]
    verdicts = []
    for node_id in dict.fromkeys(r["node"] for r in trained):
        found = {
            c: [r["found"] for r in trained if r["node"] == node_id and r["context"] == c] for c in ("frozen", "full")
        }
        if found["frozen"] and found["full"]:
            diff = statistics.fmean(found["frozen"]) - statistics.fmean(found["full"])
            verdicts.append(
                f"{node_id}: frozen finds {diff:+.1f} answers against full ({plural(len(found['frozen']), 'seed')})"
            )
    return {
        "rows": [base, *trained],
        "table": table([base, *trained], columns),
        "verdict": "; ".join(verdicts) + f" (base {base['found']}/{base['of']})",
    }


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def dream_specs(specs: Path, where: Path) -> Path:
    """A copy of the specs whose every node trains on a dream file too (written by `traitgraph dream`)."""
    import shutil

    import yaml

    if not (where / "personality.yaml").is_file():
        shutil.copytree(specs, where, ignore=shutil.ignore_patterns("data"))
        doc = yaml.safe_load((where / "personality.yaml").read_text(encoding="utf-8"))
        doc.setdefault("training", {})["dream"] = {}
        (where / "personality.yaml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    subprocess.run([sys.executable, "-m", "traitgraph", "dream", str(where)], check=True)
    return where


def prediction_4(bench: Bench, nodes: list[str], seeds: list[int], specs: Path) -> dict:
    from traitgraph.graph import load_specs

    dreamed = load_specs(dream_specs(specs, Path("bench/results/dream-specs")))
    rows = [
        seed_row(bench, node_id, name, seeds, spec=spec, light=True)
        for node_id in nodes
        for name, spec in (("real only", bench.spec), ("real + dream", dreamed))
    ]
    return summary_4(rows)


def summary_4(rows: list[dict]) -> dict:
    nodes = list(dict.fromkeys(r["node"] for r in rows))
    better = [n for n in nodes if _row(rows, n, "real + dream")["gain_ood"] > _row(rows, n, "real only")["gain_ood"]]
    columns = [
        ("node", "node", ""),
        ("training data", "recipe", ""),
        ("directed gain eval", "gain_eval", "+.1f"),
        ("directed gain ood", "gain_ood", "+.1f"),
        ("ood tests passed (base)", "ood_tests_base", ".0f"),
        ("alone", "ood_tests", ".0f"),
        ("of", "ood_tests_of", ".0f"),
    ]
    return {
        "rows": rows,
        "table": table(rows, columns),
        "verdict": f"dream raises the ood gain of {len(better)} of {len(nodes)} nodes ({', '.join(better) or 'none'})",
    }


def _row(rows: list[dict], node: str, recipe: str) -> dict:
    return next(r for r in rows if r["node"] == node and r["recipe"] == recipe)


def prediction_5(bench: Bench, nodes: list[str], seeds: list[int]) -> dict:
    return summary_5(recipe_rows(bench, PREDICTION_5, nodes, seeds))


def summary_5(rows: list[dict]) -> dict:
    rows = in_order(rows, PREDICTION_5)
    nodes = list(dict.fromkeys(r["node"] for r in rows))
    for r in rows:
        per = 10 / max(r["gain_eval"], 1e-9)
        r["prompts_per_10"], r["text_per_10"] = r["prompts_lost"] * per, r["text_pct"] * per
    columns = [
        *RECIPE_COLUMNS,
        ("prompts lost per 10 nats", "prompts_per_10", ".2f"),
        ("text % per 10 nats", "text_per_10", "+.2f"),
    ]
    combined = "all: replay + upper layers + KL anchor + monitor"
    wins = []
    for n in nodes:
        single = [r for r in rows if r["node"] == n and r["recipe"] not in (combined, "no defence")]
        best = _row(rows, n, combined)
        if all(
            best["prompts_per_10"] <= s["prompts_per_10"] and best["text_per_10"] <= s["text_per_10"] for s in single
        ):
            wins.append(n)
    _picture(rows, Path("bench/results/predictions.png"))
    return {
        "rows": rows,
        "table": table(rows, columns),
        "verdict": f"the combination forgets least per nat of gain on both measures for {len(wins)} of {len(nodes)} nodes",
    }


def _picture(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    markers = dict(zip(sorted({r["node"] for r in rows}), "os^Dv<>"))
    for ax, key, label in ((axes[0], "prompts_lost", "general prompts lost"), (axes[1], "text_pct", "general text, %")):
        for i, recipe in enumerate(recipes):
            for r in (r for r in rows if r["recipe"] == recipe):
                ax.scatter(r["gain_eval"], r[key], color=f"C{i}", marker=markers[r["node"]], s=50)
        ax.set_xlabel("directed gain on eval cases (nats)")
        ax.set_ylabel(label)
        ax.axhline(0, color="grey", lw=0.6)
    handles = [plt.Line2D([], [], color=f"C{i}", marker="o", ls="", label=r) for i, r in enumerate(recipes)]
    handles += [plt.Line2D([], [], color="k", marker=m, ls="", label=n) for n, m in markers.items()]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle("Forgetting against gain, each defence alone and combined (lower right is better)")
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


# --------------------------------------------------------------------------- main

SUMMARIES = {1: summary_1, 2: summary_2, 3: summary_3, 4: summary_4, 5: summary_5}


def combined(files: list[str], only: set[int]) -> dict:
    """The rows of every run in ``files`` (JSON lines written by ``--json``), summarised per prediction."""
    rows: dict[int, list[dict]] = {}
    for name in files:
        for line in Path(name).read_text(encoding="utf-8").splitlines():
            for key, result in json.loads(line)["results"].items():
                if int(key) in only:
                    kept = [r for r in result["rows"] if r not in rows.setdefault(int(key), [])]
                    rows[int(key)] += kept
    return {k: SUMMARIES[k](v) for k, v in sorted(rows.items())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("specs", nargs="?", default="specs")
    ap.add_argument("--only", default="1,2,3,4,5", help="predictions to run (default all)")
    ap.add_argument("--nodes", default="boundaries,not-rushing", help="nodes of 1, 3 and 5 (4: every node)")
    ap.add_argument("--seeds", default="0", help="training seeds, e.g. 0,1,2")
    ap.add_argument("--dream-nodes", default=None, help="nodes of 4 (default: every node)")
    ap.add_argument("--recipes", default=None, help="only these recipes of 1 and 5, separated by ';' (default all)")
    ap.add_argument("--out", default="out", help="the build whose report prediction 2 reads")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for scoring (training uses one)")
    ap.add_argument("--json", default="bench/results/predictions.json")
    ap.add_argument(
        "--combine",
        nargs="+",
        metavar="JSON",
        help="print the tables of earlier runs' --json files together (runs split by node), computing nothing",
    )
    args = ap.parse_args(argv)
    only = {int(x) for x in args.only.split(",")}
    nodes, seeds = args.nodes.split(","), [int(s) for s in args.seeds.split(",")]
    results = {}
    if args.combine:
        results = combined(args.combine, only)
    elif 2 in only:
        results[2] = prediction_2(Path(args.out))
    if only - {2} and not args.combine:
        bench = load_bench(args.specs, args.threads)
        bench.only_recipes = tuple(r for r in (args.recipes or "").split(";") if r)
        if 1 in only:
            results[1] = prediction_1(bench, nodes, seeds)
        if 3 in only:
            results[3] = prediction_3(bench, nodes, seeds)
        if 4 in only:
            dream_nodes = args.dream_nodes.split(",") if args.dream_nodes else list(bench.spec.build_order())
            results[4] = prediction_4(bench, dream_nodes, seeds, Path(args.specs))
        if 5 in only:
            results[5] = prediction_5(bench, nodes, seeds)
    for k in sorted(results):
        print(f"\n## Prediction {k}\n\n{results[k]['table']}\n{results[k]['verdict']}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    with open(args.json, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"argv": sys.argv[1:], "results": results}, default=str) + "\n")


if __name__ == "__main__":
    main()
