"""What storing task vectors in bfloat16 does to the merged checkpoint.

    python bench/bench_vector_dtype.py                     # the example's specs on the pico model
    python bench/bench_vector_dtype.py --base DIR          # on another local Hugging Face directory

Builds the example to `link` twice, with `vector_dtype: float32` and
`bfloat16` (same seed, so the same training), and reports the size of the
cached vectors and how far the bfloat16 merge lands from the float32 one:
``|Δ_bf16 − Δ_fp32| / |Δ_fp32|`` over all tensors, where Δ = merged − base,
and the largest elementwise difference relative to max |Δ_fp32|.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def build(specs: Path, out: Path, cache: Path, dtype: str) -> int:
    doc = yaml.safe_load((specs / "personality.yaml").read_text())
    doc["training"]["vector_dtype"] = dtype
    (specs / "personality.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    env = {**os.environ, "TRAITGRAPH_CACHE": str(cache)}
    subprocess.run(
        [sys.executable, "-m", "traitgraph", "build", str(specs), "-o", str(out), "-n", "2", "--", "link"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return sum(p.stat().st_size for p in (cache / "vectors").glob("*.safetensors"))


def tensors(directory: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update({k: v.float() for k, v in load_file(f).items()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, help="a local Hugging Face directory (default: a pico Llama)")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    import torch

    with tempfile.TemporaryDirectory(prefix="bench-dtype-") as tmp:
        work = Path(tmp)
        if args.base is None:
            from conftest import make_tiny_base

            base = make_tiny_base(work / "base")
        else:
            base = args.base.resolve()
        specs = work / "specs"
        shutil.copytree(REPO / "specs", specs)
        doc = yaml.safe_load((specs / "personality.yaml").read_text())
        doc["base"] = str(base)
        (specs / "personality.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        sizes = {d: build(specs, work / d, work / f"cache-{d}", d) for d in ("float32", "bfloat16")}
        w0, w32, w16 = (
            tensors(base),
            tensors(work / "float32" / "checkpoint"),
            tensors(work / "bfloat16" / "checkpoint"),
        )
    d32 = torch.cat([(w32[k] - w0[k]).flatten() for k in sorted(w0)])
    d16 = torch.cat([(w16[k] - w0[k]).flatten() for k in sorted(w0)])
    rel = float((d16 - d32).norm() / d32.norm())
    worst = float((d16 - d32).abs().max() / d32.abs().max())
    print(f"base: {base if args.base else 'pico Llama (tests/conftest.py)'}; example specs, to `link`")
    print("| vector_dtype | cached vectors (bytes) |\n|---|---:|")
    for d, n in sizes.items():
        print(f"| {d} | {n:,} |")
    print(f"merged delta, bfloat16 vs float32: relative L2 {rel:.2e}, worst element {worst:.2e} of max |delta|")


if __name__ == "__main__":
    main()
