"""Export a build for the places people run small models.

    traitgraph export out --lora 32                 # out/lora-r32/: a PEFT LoRA adapter of the built delta
    traitgraph export out --lora 32 -o adapters/x   # elsewhere
    traitgraph export out --gguf                    # out/<name>-f16.gguf and out/Modelfile (Ollama)
    traitgraph export out --gguf --type q8_0        # f16 (default), q8_0 or f32
    traitgraph export out --gguf --template base.gguf   # a Hugging Face base: name a GGUF of the base

The build's lock file names the base; ``--specs`` is where a relative base
reference is resolved (default: specs).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output directory of a build (holds checkpoint/ and traitgraph.lock)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--lora", type=int, metavar="RANK", help="write a PEFT LoRA adapter of this rank")
    what.add_argument("--gguf", action="store_true", help="write one GGUF file for llama.cpp / Ollama")
    parser.add_argument(
        "-o",
        "--output",
        default=None,
        help="adapter directory or GGUF file (default: OUT/lora-rRANK or OUT/NAME-TYPE.gguf)",
    )
    parser.add_argument("--type", default="f16", choices=["f16", "q8_0", "f32"], help="GGUF tensor type (default: f16)")
    parser.add_argument("--template", default=None, help="GGUF of the base to use as the template (Hugging Face bases)")
    parser.add_argument(
        "--no-norms",
        action="store_true",
        help="LoRA: leave out changed 1-D tensors (norms), for servers that refuse modules_to_save",
    )
    parser.add_argument("--specs", default="specs", help="where a relative base reference is resolved (default: specs)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    out = Path(args.out)
    if args.lora is not None:
        from traitgraph.builder.exports import export_lora_from_build

        target = Path(args.output) if args.output else out / f"lora-r{args.lora}"
        result = export_lora_from_build(out, Path(args.specs), args.lora, target, include_norms=not args.no_norms)
        print(
            f"wrote {target}: LoRA rank {result.rank} on {result.modules} modules "
            f"({100 * result.kept_energy:.1f} % of the delta's energy kept), "
            f"{result.saved_modules} norm modules saved whole"
        )
        if result.dropped:
            print(f"not in the adapter: {', '.join(result.dropped)}")
        print(f"load: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), '{target}')")
        return 0
    from traitgraph.builder.exports import export_gguf_from_build

    written = export_gguf_from_build(
        out,
        Path(args.specs),
        args.type,
        Path(args.output) if args.output else None,
        Path(args.template) if args.template else None,
    )
    for path in written:
        print(f"wrote {path}")
    print(f"run: ollama create NAME -f {written[-1]}   or   llama-cli -m {written[0]}")
    return 0
