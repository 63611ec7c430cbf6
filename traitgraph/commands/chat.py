"""Talk to a built model (greedy decoding, the model's chat template).

    traitgraph chat out                       # interactive; the conversation is kept
    traitgraph chat out --prompt "Hi there"   # one answer, then exit
    traitgraph chat out --base                # the base model instead, for comparison

OUT_DIR is a build's output directory (its checkpoint/ is used) or a
checkpoint directory itself. In the interactive chat, /reset starts a new
conversation and /quit (or Ctrl-D) leaves.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from traitgraph.commands.args import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", help="build output directory, or a checkpoint directory")
    parser.add_argument("--prompt", default=None, help="answer this one message and exit")
    parser.add_argument("--base", action="store_true", help="talk to the build's base model instead")
    parser.add_argument(
        "--specs", default="specs", help="specs directory, to find a base given relative to it (default: specs)"
    )
    parser.add_argument("--system", default=None, help="a system message to start the conversation with")
    parser.add_argument(
        "--max-new-tokens", type=positive_int, default=200, help="longest reply in tokens (default: 200)"
    )


def checkpoint_dir(out_dir: Path) -> Path:
    """``OUT/checkpoint`` of a build directory, or the directory itself when it is a checkpoint."""
    from traitgraph.errors import UserError

    for candidate in (out_dir / "checkpoint", out_dir):
        if (candidate / "config.json").is_file():
            return candidate
    raise UserError(
        f"{out_dir} is neither a build directory (with checkpoint/) nor a checkpoint (with config.json); "
        "build first: `traitgraph build`"
    )


def _model_ref(args: argparse.Namespace):
    from traitgraph.compiler.base_model import ResolvedBase, resolve_base
    from traitgraph.errors import UserError
    from traitgraph.linker.lock import read_lock

    out_dir = Path(args.out_dir)
    checkpoint = checkpoint_dir(out_dir)
    if not args.base:
        return ResolvedBase(reference=str(checkpoint), path=checkpoint, fingerprint="")
    locks = [p / "traitgraph.lock" for p in (out_dir, checkpoint.parent) if (p / "traitgraph.lock").is_file()]
    if not locks:
        raise UserError(f"--base needs the build's lock file (traitgraph.lock) beside {checkpoint}")
    lock = read_lock(locks[0])
    return resolve_base(lock.base.reference, Path(args.specs))


def _fit(tokenizer, model, messages: list[dict[str, str]], room: int) -> list[dict[str, str]]:
    """Drop the oldest turns (keeping a system message) until the prompt leaves ``room`` tokens."""
    from traitgraph.evaluate.scores import prompt_ids

    limit = int(getattr(model.config, "max_position_embeddings", 2048)) - room
    keep = list(messages)
    first = 1 if keep and keep[0]["role"] == "system" else 0
    while len(keep) > first + 1 and len(prompt_ids(tokenizer, keep)) > limit:
        del keep[first]
    return keep


def run(args: argparse.Namespace) -> int:
    import torch

    from traitgraph.compiler.base_model import load_model
    from traitgraph.evaluate.scores import generate

    ref = _model_ref(args)
    torch.set_num_threads(os.cpu_count() or 1)
    model, tokenizer = load_model(ref)
    messages: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []

    def reply(text: str) -> str:
        messages.append({"role": "user", "content": text})
        messages[:] = _fit(tokenizer, model, messages, args.max_new_tokens)
        answer = generate(model, tokenizer, [messages], max_new_tokens=args.max_new_tokens)[0]
        messages.append({"role": "assistant", "content": answer})
        return answer

    if args.prompt is not None:
        print(reply(args.prompt))
        return 0
    print(f"chatting with {ref.path}{' (base)' if args.base else ''}; /reset starts over, /quit leaves")
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if text in ("/quit", "/exit"):
            return 0
        if text == "/reset":
            del messages[1 if args.system else 0 :]
            print("(new conversation)")
            continue
        if text:
            print(f"model> {reply(text)}")
