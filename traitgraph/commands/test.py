"""Run the behaviour tests: check what the built model says against each case's `expect:`.

    traitgraph test                       # specs/ against out/checkpoint
    traitgraph test specs -o out -k voice # only tests whose id or prompt contains "voice"
    traitgraph test --base                # the base model instead: which tests it already passes
    traitgraph test --alone voice         # the base plus voice's task vector alone (base + w·τ)

Each eval and ood case with `expect:` is a test (NODE::eval[i], NODE::ood[i]),
and so is each shipped general prompt (@general::N, its answer expected in the
reply). Replies are greedy, with the chat template, at most `eval.max_new_tokens`
tokens (24 for the general prompts). Prints one line per failing test, the pass
rate per node (base -> built when the build's eval or an earlier `--base` run
remembered the base's replies) and `N passed, M failed` last.

`--alone NODE` tests the base plus that node's cached vector at its weight (on
top of the vectors of the nodes it refines), as the specs now stand: the model
of the report's *alone* column. A test the node passes alone and the build
fails was lost in linking; one it fails alone is the node's own weakness; its
replies to the other nodes' prompts show where its habit spills.

Exit status: 0 all passed, 1 some failed, 2 a user error (nothing built yet,
bad specs, no test selected, an unknown or untrained `--alone` node).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("specs_dir", nargs="?", default="specs", help="specs directory (default: specs)")
    parser.add_argument("-o", "--out", default="out", help="output directory of the build (default: out)")
    parser.add_argument(
        "-k",
        dest="pattern",
        default=None,
        help="only tests whose id (NODE::eval[i]) or prompt contains PATTERN, case-insensitively",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--base", action="store_true", help="test the personality's base model instead of the build")
    which.add_argument(
        "--alone",
        metavar="NODE",
        help="test the base plus NODE's cached task vector alone (base + w·τ, on top of the nodes it refines)",
    )
    parser.add_argument("--no-general", action="store_true", help="leave out the general-prompt tests")


def _model_ref(spec, out: Path, base: bool):
    """The base (``base``) or the build's checkpoint in ``out``."""
    from traitgraph.compiler.base_model import ResolvedBase, resolve_base
    from traitgraph.errors import UserError

    if base:
        return resolve_base(spec.personality.base, spec.specs_dir)
    checkpoint = out / "checkpoint"
    if not (checkpoint / "config.json").is_file():
        raise UserError(
            f"nothing to test: {checkpoint} does not exist; build first (`traitgraph build "
            f"{spec.specs_dir} -o {out}`), or pass --base to test the base model"
        )
    return ResolvedBase(reference=str(checkpoint), path=checkpoint, fingerprint="")


def _collect(args: argparse.Namespace, spec):
    from traitgraph.errors import UserError
    from traitgraph.evaluate.behaviour_tests import collect_tests, select
    from traitgraph.evaluate.run import PROMPT_NEW_TOKENS, general_prompts

    every = collect_tests(
        spec,
        general_prompts(),
        node_budget=spec.personality.eval.max_new_tokens,
        prompt_budget=PROMPT_NEW_TOKENS,
        general=not args.no_general,
    )
    tests = select(every, args.pattern)
    if not tests:
        why = f"no test matches -k {args.pattern!r}" if args.pattern else "no eval or ood case has `expect:`"
        raise UserError(f"{why} ({len(every)} tests in {spec.specs_dir})")
    return tests


def run(args: argparse.Namespace) -> int:
    from traitgraph.graph import load_specs

    spec = load_specs(args.specs_dir)
    on_base = args.base or args.alone is not None
    ref = _model_ref(spec, Path(args.out), on_base)
    vectors = _alone_vectors(spec, args.alone, ref) if args.alone is not None else []
    tests = _collect(args, spec)
    if not on_base and not _build_is_current(args):
        print(
            "note: the specs changed since the last build; testing the checkpoint as it was built "
            "(run `traitgraph build` to rebuild)"
        )

    import torch

    from traitgraph.compiler.base_model import load_model
    from traitgraph.evaluate.behaviour_tests import check_tests, reply_all
    from traitgraph.evaluate.run import ModelScorer
    from traitgraph.evaluate.scores import generate, vectors_applied
    from traitgraph.evaluate.threads import eval_threads

    torch.set_num_threads(eval_threads())
    start = time.perf_counter()
    model, tokenizer = load_model(ref)
    print(f"{len(tests)} behaviour tests on {_model_label(args, spec, ref)}", flush=True)
    if args.base:  # remembered, so later runs on the build can show the base's pass rate beside theirs
        memo = _base_memo(spec)
        replies = reply_all(tests, ModelScorer(model, tokenizer, memo).replies)
        memo.save()
    else:
        with vectors_applied(model, vectors):
            replies = reply_all(tests, lambda chats, budget: generate(model, tokenizer, chats, max_new_tokens=budget))
    results = check_tests(tests, replies)
    base = None if args.base else _remembered_base_results(spec, tests)
    tested = f"{args.alone} alone" if args.alone is not None else "built"
    print(render_results(results, time.perf_counter() - start, base, tested))
    return 0 if all(r.passed for r in results) else 1


def _model_label(args: argparse.Namespace, spec, ref) -> str:
    """What the header line says is being tested."""
    if args.base:
        return f"{ref.path} (base)"
    if args.alone is not None:
        return f"{ref.path} + {args.alone} alone (weight {spec.nodes[args.alone].spec.weight:g})"
    return str(ref.path)


def _alone_vectors(spec, node_id: str, base) -> list[tuple[Path, float]]:
    """``(τ file, α)`` of ``node_id`` at its weight on top of the nodes it refines (weight 1): the
    model the report's *alone* column scores, from the cache as the specs now stand; a node not in
    the specs, or a vector not trained yet, is a user error."""
    from traitgraph.builder.cache import VectorCache
    from traitgraph.errors import UserError
    from traitgraph.graph.hashing import node_hashes

    if node_id not in spec.nodes:
        raise UserError(
            f"--alone {node_id!r}: no such node in {spec.specs_dir} (nodes: {', '.join(sorted(spec.nodes))})"
        )
    cache, hashes = VectorCache(), node_hashes(spec, base.fingerprint)
    applied = [*spec.dependencies(node_id), node_id]
    missing = [n for n in applied if not cache.is_fresh(hashes[n])]
    if missing:
        raise UserError(
            f"--alone {node_id!r}: no task vector of {', '.join(missing)} as the specs now stand in the cache "
            f"{cache.vectors}; train it first (`traitgraph build {spec.specs_dir}` or "
            f"`traitgraph train {spec.specs_dir} {missing[0]}`)"
        )
    weight = spec.nodes[node_id].spec.weight
    return [(cache.verify(hashes[n]), weight if n == node_id else 1.0) for n in applied]


def _build_is_current(args: argparse.Namespace) -> bool:
    """Whether the last link in OUT used the current specs (trained nodes, weights, merge settings)."""
    from traitgraph.builder.plan import BuildPlan
    from traitgraph.errors import UserError

    try:
        return BuildPlan.load(args.specs_dir, args.out).link_is_current()
    except UserError:
        return False


def _base_memo(spec):
    """The evaluation's remembered base scores (``<cache>/eval``), keyed like the ``eval`` task's."""
    from traitgraph.compiler.base_model import default_cache_dir, resolve_base
    from traitgraph.evaluate.run import ScoreMemo

    base = resolve_base(spec.personality.base, spec.specs_dir)
    return ScoreMemo(default_cache_dir() / "eval", f"base {base.fingerprint}")


def _remembered_base_results(spec, tests):
    """The base's results on ``tests`` when a build's eval (or `--base`) remembered every reply; else None."""
    from traitgraph.errors import UserError
    from traitgraph.evaluate.behaviour_tests import check_tests
    from traitgraph.evaluate.scorer import reply_item

    try:
        memo = _base_memo(spec)
    except UserError:
        return None
    items = [reply_item(t.messages(), t.max_new_tokens) for t in tests]
    if not memo.has_all("reply", items):
        return None
    return check_tests(tests, memo.lookup("reply", items, lambda missing: []))


def render_results(results, seconds: float, base=None, tested: str = "built") -> str:
    """Failing tests one per line, a pass rate per node (the base's beside it when known),
    then ``N passed, M failed in S s``; ``tested`` names the model in the pass-rate header."""
    from traitgraph.evaluate.behaviour_tests import failure_line, group_label, pass_rates, summary_line

    lines = [failure_line(r) for r in results if not r.passed]
    rates = pass_rates(results)
    base_rates = pass_rates(base) if base is not None else {}
    width = max(len(group_label(g)) for g in rates)
    lines += ["", "pass rate per node:" + (f"  (base -> {tested})" if base_rates else "")]
    for g, (p, t) in rates.items():
        before = f"{base_rates[g][0]}/{t} -> " if g in base_rates else ""
        lines.append(f"  {group_label(g):<{width}}  {before}{p}/{t}")
    if base is not None:
        lines.append(f"base: {summary_line(base)}")
    lines.append(f"{summary_line(results)} in {seconds:.1f}s")
    return "\n".join(lines)
