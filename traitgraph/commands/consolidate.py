"""Consolidate a built checkpoint: distil it toward each node alone and the base.

    traitgraph consolidate [SPECS_DIR] [-o OUT] [--steps 8] [--lr 1e-5]
                           [--batch-size 8] [--general-weight 1.0] [--general-lines 64]

Reads ``OUT/checkpoint`` (from ``traitgraph build``) and each node's task
vector from the cache, distils the checkpoint toward ``base + w·τ`` of each
node on that node's training contexts and toward the base on replay-corpus
text (never the retention set), and writes ``OUT/consolidated/`` (a Hugging
Face directory, float32, tokenizer included). Printed: the KL to each node
alone and to the base, before and after. See docs/training.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("specs_dir", nargs="?", default="specs", help="specs directory (default: specs)")
    parser.add_argument("-o", "--out", default="out", help="build output directory (default: out)")
    parser.add_argument("--steps", type=int, default=8, help="distillation steps (default 8)")
    parser.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate (default 1e-5)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per node batch and per general batch")
    parser.add_argument("--general-weight", type=float, default=1.0, help="weight of the KL to the base (default 1)")
    parser.add_argument("--general-lines", type=int, default=64, help="replay-corpus lines used (default 64)")


def _save_dir(model, tokenizer, final: Path) -> None:
    """``save_pretrained`` into a temp directory beside ``final``, then swap it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def run(args: argparse.Namespace) -> int:
    import torch

    from traitgraph.builder.consolidation import general_rows, node_sources
    from traitgraph.builder.plan import BuildPlan
    from traitgraph.builder.tasks import train_threads
    from traitgraph.compiler.base_model import load_model, resolve_base
    from traitgraph.compiler.consolidate import (
        ConsolidateSettings,
        Teacher,
        consolidate,
        mean_kl,
    )
    from traitgraph.compiler.data import pad_id
    from traitgraph.errors import UserError

    if args.steps < 1 or args.batch_size < 1 or args.lr <= 0 or args.general_weight < 0 or args.general_lines < 1:
        raise UserError(
            "consolidate: --steps, --batch-size and --general-lines must be at least 1, --lr above 0, "
            "--general-weight at least 0"
        )
    plan = BuildPlan.load(args.specs_dir, args.out)
    if not (plan.out.checkpoint / "config.json").is_file():
        raise UserError(f"no built checkpoint in {plan.out.checkpoint}; run `traitgraph build` first")
    torch.set_num_threads(train_threads())
    base = resolve_base(plan.spec.personality.base, plan.spec.specs_dir)
    student, tokenizer = load_model(resolve_base(str(plan.out.checkpoint.resolve())), dtype=torch.float32)
    teacher = Teacher(load_model(base, dtype=torch.float32)[0])
    pad = pad_id(tokenizer)
    sources = node_sources(plan, tokenizer)
    general = general_rows(tokenizer, args.general_lines)

    def kls() -> list[float]:
        return [mean_kl(student, teacher, s, s.examples, pad) for s in sources] + [
            mean_kl(student, teacher, None, general, pad)
        ]

    before = kls()
    settings = ConsolidateSettings(
        steps=args.steps, learning_rate=args.lr, batch_size=args.batch_size, general_weight=args.general_weight
    )
    consolidate(student, teacher, sources, general, pad, settings)
    after = kls()
    out = plan.out.root / "consolidated"
    _save_dir(student, tokenizer, out)
    for name, b, a in zip([*(s.node_id for s in sources), "(base, general text)"], before, after):
        print(f"KL to {name:<24} {b:.4f} -> {a:.4f}")
    print(f"consolidated checkpoint: {out}")
    return 0
