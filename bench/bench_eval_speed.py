"""Where the time of one evaluation of a built checkpoint goes, and the reply batch size.

    python bench/bench_eval_speed.py                 # specs/ and out/ (run `traitgraph build` first)
    python bench/bench_eval_speed.py --batches 16,32,48,64

Loads ``OUT/checkpoint`` as ``traitgraph eval`` does and times, on the
linked model and with the eval's threads, each thing the eval computes for it:
the nodes' eval and ood cases, the general text, the general prompts' answers,
the report's samples and the behaviour tests' replies. Then it decodes the
behaviour tests' replies again at each batch size and says whether the text
is the same as at the first one (greedy decoding in padded batches can
differ by rounding; the eval's ``REPLY_BATCH`` was chosen here).
"""

from __future__ import annotations

import argparse
import time


def timed(label: str, work) -> object:
    start = time.perf_counter()
    result = work()
    print(f"{label:<34} {time.perf_counter() - start:7.1f} s", flush=True)
    return result


def main() -> int:
    from traitgraph.builder.plan import BuildPlan
    from traitgraph.evaluate import run
    from traitgraph.evaluate.scorer import REPLY_BATCH, ModelScorer
    from traitgraph.evaluate.scores import generate
    from traitgraph.evaluate.threads import eval_threads, torch_threads

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specs", default="specs")
    parser.add_argument("--out", default="out")
    parser.add_argument("--batches", default="16,48", help="reply batch sizes to compare (default 16,48)")
    args = parser.parse_args()
    plan = BuildPlan.load(args.specs, args.out)
    work = run._gather(plan)
    model, tokenizer = run._load_linked(plan)
    budget = plan.spec.personality.eval.max_new_tokens
    with torch_threads(eval_threads()):
        scorer = ModelScorer(model, tokenizer)
        print(f"the eval's work on {plan.out.checkpoint} (reply batch {REPLY_BATCH}):")
        timed("cases (eval + ood)", lambda: [scorer.cases(work.cases(n)) for n in work.order])
        timed(f"general text ({len(work.lines)} lines)", lambda: scorer.text(work.lines))
        timed(f"general prompts ({len(work.prompts)})", lambda: scorer.replies(work.prompt_chats(), 24))
        timed("samples", lambda: scorer.replies(work.sample_chats(), budget))
        timed(
            f"behaviour tests ({len(work.tests)}, new replies only)",
            lambda: run.answer_tests(work.tests, scorer.replies),
        )
        chats = [t.messages() for t in work.tests if t.max_new_tokens == budget]
        print(f"\n{len(chats)} behaviour-test replies of {budget} tokens, by batch size:")
        first = None
        for size in [int(b) for b in args.batches.split(",")]:
            replies = timed(
                f"batch {size}", lambda s=size: generate(model, tokenizer, chats, max_new_tokens=budget, batch_size=s)
            )
            first = first or replies
            same = sum(a == b for a, b in zip(first, replies))
            print(f"{'':<34} {same}/{len(replies)} replies equal to the first batch size's")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
