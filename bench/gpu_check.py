"""A short check to run on a machine with a CUDA GPU (minutes), printing one table.

    python bench/gpu_check.py                      # SmolLM2 and a tiny random Qwen2, cuda against cpu
    python bench/gpu_check.py --no-smollm2         # the tiny Qwen2 only (seconds)
    python bench/gpu_check.py --devices cpu --no-smollm2   # the script itself, on a machine without a GPU

For each model and device it trains one node (the example's `listening` on
SmolLM2-135M-Instruct; the pirate node on a tiny random Qwen2) twice, at two
step counts, and reports the time per optimizer step (the difference of the two
runs over the difference of steps, so loading is left out), whether two runs on
the same device gave the same bytes, and the final loss. Then it runs a whole
`traitgraph build` (train on the device, link, eval) of the tiny Qwen2 and
reports whether it passed. Paste the table and the card's name into the README.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def train_once(specs: Path, node: str, steps: int, out: Path) -> tuple[float, bytes, float]:
    """(seconds in training steps and loading, vector bytes, final loss) of one node at ``steps``."""
    from traitgraph.compiler.base_model import resolve_base
    from traitgraph.compiler.train import train_node
    from traitgraph.graph import load_specs

    set_steps(specs, steps)
    spec = load_specs(specs)
    base = resolve_base(spec.personality.base, spec.specs_dir)
    t0 = time.perf_counter()
    meta = train_node(spec, node, base, out, progress=False)
    return time.perf_counter() - t0, out.read_bytes(), meta.final_loss


def set_steps(specs: Path, steps: int, device: str | None = None) -> None:
    path = specs / "personality.yaml"
    doc = yaml.safe_load(path.read_text())
    doc.setdefault("training", {})["steps"] = steps
    if device is not None:
        doc["training"]["device"] = device
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def measure(specs: Path, node: str, device: str, work: Path, steps: tuple[int, int]) -> dict:
    set_steps(specs, steps[0], device)
    short, bytes_a, _ = train_once(specs, node, steps[0], work / "a.safetensors")
    _, bytes_b, _ = train_once(specs, node, steps[0], work / "b.safetensors")
    long, _, loss = train_once(specs, node, steps[1], work / "c.safetensors")
    return {
        "step_s": (long - short) / (steps[1] - steps[0]),
        "repeatable": bytes_a == bytes_b,
        "final_loss": loss,
    }


def example_specs(root: Path) -> Path:
    specs = root / "example"
    shutil.copytree(REPO / "specs", specs)
    return specs


def qwen2_specs(root: Path) -> Path:
    from model_families import make_family_base

    from conftest import pirate_node, write_tiny_specs

    base = make_family_base("qwen2", root / "qwen2-base")
    return write_tiny_specs(
        root / "qwen2", base, {"pirate": pirate_node()}, {"learning_rate": 1e-3, "steps": 3, "batch_size": 4, "seed": 0}
    )


def full_build(specs: Path, out: Path, device: str) -> tuple[int, float]:
    from traitgraph.cli import main

    set_steps(specs, 3, device)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = main(["build", str(specs), "-o", str(out)])
    return rc, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", default="cuda,cpu", help="comma-separated device classes (default: cuda,cpu)")
    ap.add_argument("--no-smollm2", action="store_true", help="skip SmolLM2 (the slow part on the cpu)")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(1)  # the build's thread count (bit-identical cpu vectors need a fixed one)
    devices = args.devices.split(",")
    if "cuda" in devices and not torch.cuda.is_available():
        sys.exit("no CUDA device here (torch.cuda.is_available() is False); use --devices cpu to try the script")
    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        os.environ["TRAITGRAPH_CACHE"] = str(work / "cache")
        models = [("qwen2 (tiny, random)", qwen2_specs(work), "pirate", (2, 12))]
        if not args.no_smollm2:
            models.append(("SmolLM2-135M-Instruct", example_specs(work), "listening", (2, 6)))
        for name, specs, node, steps in models:
            for device in devices:
                r = measure(specs, node, device, work, steps)
                rows.append((name, device, r))
        builds = [
            (device, *full_build(qwen2_specs(work / f"b-{device}"), work / f"out-{device}", device))
            for device in devices
        ]
    print(f"torch {torch.__version__}, card: {card}")
    print("| model | device | s/step | same bytes twice | final loss |\n|---|---|---:|---|---:|")
    for name, device, r in rows:
        print(
            f"| {name} | {device} | {r['step_s']:.3f} | {'yes' if r['repeatable'] else 'no'} | {r['final_loss']:.4f} |"
        )
    print("| build (train, link, eval) of tiny qwen2 | device | exit code | seconds |\n|---|---|---:|---:|")
    for device, rc, seconds in builds:
        print(f"| traitgraph build | {device} | {rc} | {seconds:.1f} |")
    sys.exit(0 if all(rc == 0 for _, rc, _ in builds) else 1)


if __name__ == "__main__":
    main()
