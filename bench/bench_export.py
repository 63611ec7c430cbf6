"""Export benchmark: how much of a build a LoRA adapter (and a GGUF) keeps.

    python bench/bench_export.py                          # specs/ built into out/, ranks 8, 32, 128
    python bench/bench_export.py --specs S --out O --ranks 4,16 --gguf f16,q8_0

Needs a finished build (``traitgraph build``). For each rank it exports the
adapter (``traitgraph export OUT --lora RANK``) into a temporary directory,
loads it with ``PeftModel.from_pretrained(base, dir)`` and scores it exactly
as the evaluation scores the checkpoint:

* per node, the **directed gain** d·(measure(model) − measure(base)) on the
  node's held-out eval cases (measure = preference margin, or log p(wanted)),
  and **kept** = gain(adapter) / gain(checkpoint);
* **retention**: general-text loss (rise against the base, %) and general
  prompts answered, beside the checkpoint's.

With ``--gguf TYPES`` each GGUF type is exported too, read back through
transformers, and compared with the checkpoint: max |Δ logit| on the eval
prompts, and whether its greedy answers to every node's sample prompts (the
report's samples) equal the checkpoint's.

Results print as a table and go to ``OUT/bench-export.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def score_model(model, tokenizer, spec, nodes, lines, prompts) -> dict:
    """measure per node, general-text loss, general prompts answered, sample replies."""
    from traitgraph.evaluate.run import SAMPLES_PER_NODE, ModelScorer, _measure, _model_score
    from traitgraph.evaluate.scores import contains_answer

    scorer = ModelScorer(model, tokenizer)
    measures = {}
    for n in nodes:
        cases = spec.nodes[n].spec.eval
        kind = "margin" if any(c.rejected for c in cases) else "logprob"
        measures[n] = _measure(_model_score(scorer.cases(cases)), kind)
    answers = scorer.replies([[{"role": "user", "content": p["prompt"]}] for p in prompts], 24)
    samples = [c.chat() for n in nodes for c in spec.nodes[n].spec.eval[:SAMPLES_PER_NODE]]
    return {
        "measure": measures,
        "text_loss": scorer.text(lines).loss,
        "prompts_ok": sum(contains_answer(a, p["answer"]) for a, p in zip(answers, prompts)),
        "samples": scorer.replies(samples, spec.personality.eval.max_new_tokens),
    }


def directed(spec, n, model_score, base_score) -> float:
    sign = 1 if spec.nodes[n].spec.weight > 0 else -1
    return sign * (model_score["measure"][n] - base_score["measure"][n])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specs", default="specs")
    parser.add_argument("--out", default="out")
    parser.add_argument("--ranks", default="8,32,128")
    parser.add_argument("--gguf", default="", help="GGUF types to check too, e.g. f16,q8_0")
    parser.add_argument("--template", default=None, help="GGUF template for a Hugging Face base")
    args = parser.parse_args()

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from traitgraph.builder.exports import export_gguf_from_build, export_lora_from_build, locked_base
    from traitgraph.builder.plan import OutputLayout
    from traitgraph.compiler.base_model import load_model
    from traitgraph.compiler.data import load_general_text
    from traitgraph.evaluate.run import general_prompts, general_text_file
    from traitgraph.graph import load_specs

    torch.set_num_threads(1)
    spec, out = load_specs(args.specs), OutputLayout(Path(args.out))
    lock, base = locked_base(out, Path(args.specs))
    nodes = [n.id for n in sorted(lock.nodes, key=lambda n: n.id) if n.id in spec.nodes]
    lines, prompts = load_general_text(general_text_file(spec)), general_prompts()
    base_model, tokenizer = load_model(base)
    scores = {"base": score_model(base_model, tokenizer, spec, nodes, lines, prompts)}
    checkpoint = AutoModelForCausalLM.from_pretrained(out.checkpoint, dtype=torch.float32).eval()
    scores["checkpoint"] = score_model(checkpoint, tokenizer, spec, nodes, lines, prompts)
    results = {"nodes": nodes, "lora": {}, "gguf": {}}
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        for rank in [int(r) for r in args.ranks.split(",") if r]:
            t0 = time.perf_counter()
            info = export_lora_from_build(out.root, Path(args.specs), rank, Path(tmp) / f"r{rank}")
            model = PeftModel.from_pretrained(load_model(base)[0], Path(tmp) / f"r{rank}").eval()
            s = score_model(model, tokenizer, spec, nodes, lines, prompts)
            results["lora"][rank] = {
                "energy_kept": info.kept_energy,
                "seconds": round(time.perf_counter() - t0, 1),
                "kept": {
                    n: directed(spec, n, s, scores["base"]) / directed(spec, n, scores["checkpoint"], scores["base"])
                    for n in nodes
                },
                "text_loss": s["text_loss"],
                "prompts_ok": s["prompts_ok"],
            }
        for gguf_type in [t for t in args.gguf.split(",") if t]:
            path = export_gguf_from_build(
                out.root,
                Path(args.specs),
                gguf_type,
                Path(tmp) / f"x-{gguf_type}.gguf",
                Path(args.template) if args.template else None,
            )[0]
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
            s = score_model(model, tokenizer, spec, nodes, lines, prompts)
            results["gguf"][gguf_type] = {
                "same_greedy_samples": s["samples"] == scores["checkpoint"]["samples"],
                "measure_delta": {n: s["measure"][n] - scores["checkpoint"]["measure"][n] for n in nodes},
                "text_loss": s["text_loss"],
                "prompts_ok": s["prompts_ok"],
            }
    results["scores"] = {k: {kk: vv for kk, vv in v.items() if kk != "samples"} for k, v in scores.items()}
    print_table(results, scores, len(prompts))
    (out.root / "bench-export.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"\n-> {out.root / 'bench-export.json'}")
    return 0


def print_table(results: dict, scores: dict, n_prompts: int) -> None:
    base_loss = scores["base"]["text_loss"]
    rise = lambda loss: f"{100 * (loss - base_loss) / base_loss:+.1f}%"  # noqa: E731
    nodes = results["nodes"]
    print("| model | " + " | ".join(f"{n} kept" for n in nodes) + " | text loss | prompts |")
    print("|---" * (len(nodes) + 3) + "|")
    ck = scores["checkpoint"]
    print(
        "| checkpoint | "
        + " | ".join("100%" for _ in nodes)
        + f" | {rise(ck['text_loss'])} | {ck['prompts_ok']}/{n_prompts} |"
    )
    for rank, r in results["lora"].items():
        print(
            f"| LoRA r={rank} | "
            + " | ".join(f"{100 * r['kept'][n]:.0f}%" for n in nodes)
            + f" | {rise(r['text_loss'])} | {r['prompts_ok']}/{n_prompts} |"
        )
    for t, r in results["gguf"].items():
        print(
            f"| GGUF {t} | "
            + " | ".join(f"Δ{r['measure_delta'][n]:+.3f}" for n in nodes)
            + f" | {rise(r['text_loss'])} | {r['prompts_ok']}/{n_prompts} | greedy samples equal: {r['same_greedy_samples']}"
        )


if __name__ == "__main__":
    sys.exit(main())
