"""Link benchmark: traitgraph's streaming linker vs mergekit-yaml vs a naive in-memory merge.

    python bench/bench_link.py                                # SmolLM2-135M, 2/4/8 vectors (~10 min)
    python bench/bench_link.py --methods ours,ours-yaml,mergekit,naive --counts 2
    python bench/bench_link.py --models smollm2,random --random-params 0.5B --counts 2,4
    python bench/bench_link.py --work /tmp/bench-link --keep  # keep the generated models
    python bench/bench_link.py --methods ours --counts 6 --merge-method tsv_m   # another merge method

Every run is a fresh subprocess; its wall time and peak resident memory
(``ru_maxrss`` from ``os.wait4``) are measured from outside. All runs merge
with TIES (density 0.2, normalize on, float32) and one thread
(``OMP_NUM_THREADS=1``), so they compete on equal terms on a shared machine.

=================  ==========================================================
``ours``           ``link_checkpoint`` on traitgraph task-vector files
``ours-yaml``      ``traitgraph merge`` on the YAML mergekit gets (τ = model − base)
``mergekit``       ``mergekit-yaml`` on that YAML, ``--no-cuda``
``naive``          load every task vector of the whole model, then per tensor
                   stack, merge (our pure ``ties``), keep; save at the end
=================  ==========================================================

Task vectors are random (0.001 · N(0, 1), dense, like a full fine-tune); the
fine-tuned models mergekit reads are base + τ. The random Llama is built
directly as safetensors (no module init) with SmolLM2's vocabulary and
tokenizer and untied embeddings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("ours", "ours-yaml", "mergekit", "naive")
DEFAULT_METHODS = ("ours", "mergekit", "naive")
DENSITY = 0.2


# --------------------------------------------------------------------------- preparing models


def smollm2_base(work: Path) -> Path:
    """The converted SmolLM2-135M-Instruct (traitgraph's own conversion, cached)."""
    from traitgraph.compiler.base_model import resolve_base

    return resolve_base("smollm2-135m-instruct").path


def random_llama_base(work: Path, params: float, tokenizer_from: Path) -> Path:
    """A random Llama of about ``params`` parameters, float32, written tensor by tensor."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, inter, vocab = 1024, 4096, 49152
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    layers = max(1, round((params - 2 * vocab * hidden) / per_layer))
    out = work / f"random-llama-{layers}L"
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=16,
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],  # mergekit reads the architecture from here
    )
    if (out / "model.safetensors").is_file():
        config.save_pretrained(out)
        return out
    out.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in LlamaForCausalLM(config).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    tensors = {k: (torch.ones(s) if len(s) == 1 else torch.randn(s, generator=g) * 0.02) for k, s in shapes.items()}
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    config.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tokenizer_from / name).is_file():
            shutil.copyfile(tokenizer_from / name, out / name)
    return out


def make_inputs(base: Path, work: Path, n: int) -> tuple[list[Path], list[Path]]:
    """``n`` task-vector files and ``n`` fine-tuned model dirs (base + τ), made once, reused."""
    import torch
    from safetensors.torch import load_file, save_file

    from traitgraph.compiler.task_vector import TaskVectorMeta, save_task_vector

    vectors, tuned = [], []
    base_state = None
    for i in range(n):
        vec, ft = work / f"tau-{i}.safetensors", work / f"ft-{i}"
        vectors.append(vec)
        tuned.append(ft)
        if vec.is_file() and (ft / "model.safetensors").is_file() and _readable_vector(vec):
            _copy_side_files(base, ft)
            continue
        if base_state is None:
            base_state = load_file(base / "model.safetensors")
        g = torch.Generator().manual_seed(1000 + i)
        tau = {k: torch.randn(v.shape, generator=g) * 1e-3 for k, v in base_state.items()}
        meta = TaskVectorMeta(
            node_id=f"node{i}",
            node_hash=f"bench{i}",
            base_fingerprint="bench",
            optimizer={},
            training={},
            steps=0,
            tokens=0,
            final_loss=0.0,
            loss_curve=[],
            oscillation=1.0,
            dtype="float32",
            traitgraph_version="bench",
        )
        save_task_vector(vec, tau, meta)
        if ft.exists():
            shutil.rmtree(ft)
        ft.mkdir()
        _copy_side_files(base, ft)
        save_file({k: v + tau[k] for k, v in base_state.items()}, ft / "model.safetensors", metadata={"format": "pt"})
        del tau
    return vectors, tuned


def mem_available() -> int:
    """Bytes the kernel could give a new process now (MemAvailable: free + reclaimable cache)."""
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _copy_side_files(base: Path, ft: Path) -> None:
    """Config, generation config, tokenizer and template of the base, into a fine-tuned dir."""
    for f in base.iterdir():
        if f.is_file() and f.suffix in (".json", ".jinja") and f.name != "traitgraph-base.json":
            shutil.copyfile(f, ft / f.name)


def _readable_vector(path: Path) -> bool:
    """Whether a cached input is a task vector in the current file format."""
    from traitgraph.compiler.task_vector import read_task_vector_meta
    from traitgraph.errors import BuildError

    try:
        read_task_vector_meta(path)
        return True
    except BuildError:
        return False


def write_yaml(path: Path, base: Path, tuned: list[Path], weights: list[float]) -> None:
    lines = ["merge_method: ties", f"base_model: {base}", "models:"]
    for ft, w in zip(tuned, weights):
        lines += [f"  - model: {ft}", f"    parameters: {{weight: {w}, density: {DENSITY}}}"]
    lines += ["parameters: {normalize: true}", "dtype: float32", ""]
    path.write_text("\n".join(lines))


# --------------------------------------------------------------------------- the runs (in a fresh process)


def run_ours(args: argparse.Namespace) -> None:
    from traitgraph.graph.schema import MergeSettings
    from traitgraph.linker.link import LinkInput, link_checkpoint

    spec = json.loads(args.spec)
    inputs = [LinkInput(f"node{i}", Path(p), w) for i, (p, w) in enumerate(zip(spec["vectors"], spec["weights"]))]
    method = spec.get("merge_method", "ties")
    settings = MergeSettings(method=method, density=DENSITY, normalize="weights")  # = mergekit's for w > 0
    link_checkpoint(Path(spec["base"]), inputs, settings, Path(spec["out"]), progress=False)


def run_naive(args: argparse.Namespace) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from traitgraph.compiler.task_vector import load_task_vector
    from traitgraph.linker.merging import ties

    spec = json.loads(args.spec)
    base = load_file(Path(spec["base"]) / "model.safetensors")
    taus = [load_task_vector(p)[0] for p in spec["vectors"]]  # every vector of the whole model
    merged = {}
    for name, w0 in base.items():
        stacked = torch.stack([t[name] for t in taus])  # (n, *shape)
        merged[name] = w0 + ties(list(stacked), spec["weights"], DENSITY, normalize="weights")
    Path(spec["out"]).mkdir(parents=True, exist_ok=True)
    save_file(merged, Path(spec["out"]) / "model.safetensors", metadata={"format": "pt"})


#: Runs one command and reports its wall time and peak RSS. It is a separate, small process
#: because Linux counts a child's RSS at fork time (the parent's pages) into its ru_maxrss.
#: It kills the command when the machine's available memory falls below a floor (exit -9),
#: so a benchmark never pushes a shared machine into the OOM killer.
LAUNCHER = """
import json, os, subprocess, sys, time
cmd, floor = json.loads(sys.argv[1]), int(sys.argv[2])
def available():
    with open("/proc/meminfo") as fh:
        return next(int(l.split()[1]) * 1024 for l in fh if l.startswith("MemAvailable:"))
t0 = time.perf_counter()
proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
while True:
    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    if pid:
        break
    if available() < floor:
        proc.kill()
    time.sleep(0.05)
print(json.dumps([time.perf_counter() - t0, usage.ru_maxrss, os.waitstatus_to_exitcode(status)]))
"""
#: The launcher's floor: never leave less than this much memory to the rest of the machine.
MIN_FREE = 2 << 30


def measure(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(seconds, peak RSS in MiB, exit status) of ``cmd`` in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-S", "-c", LAUNCHER, json.dumps(cmd), str(MIN_FREE)], env=env, capture_output=True, text=True
    )
    seconds, maxrss_kib, code = json.loads(done.stdout.strip().splitlines()[-1])
    if code == -9:
        print(f"  ! {' '.join(cmd[:3])}... stopped: the machine ran low on memory", file=sys.stderr)
    elif code != 0:
        print(f"  ! {' '.join(cmd[:3])}... exited {code}: {done.stderr[-800:]}", file=sys.stderr)
    return seconds, maxrss_kib / 1024, code


def compare(a: Path, b: Path, tol: float = 1e-5) -> tuple[float, int]:
    """(largest |a − b|, number of entries differing by more than ``tol``), one tensor at a time."""
    from safetensors import safe_open

    from traitgraph.linker.link import checkpoint_files

    def where(d: Path) -> dict[str, Path]:
        out = {}
        for f in checkpoint_files(d):
            with safe_open(str(f), "pt") as h:
                out.update({k: f for k in h.keys()})
        return out

    wa, wb = where(a), where(b)
    worst, count = 0.0, 0
    for name in wa:
        with safe_open(str(wa[name]), "pt") as ha, safe_open(str(wb[name]), "pt") as hb:
            d = (ha.get_tensor(name).float() - hb.get_tensor(name).float()).abs()
            worst, count = max(worst, float(d.max())), count + int((d > tol).sum())
    return worst, count


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2", help="comma list of smollm2, random (default smollm2)")
    parser.add_argument("--counts", default="2,4,8", help="numbers of task vectors (default 2,4,8)")
    parser.add_argument("--random-params", default="0.5B", help="size of the random Llama, e.g. 0.5B, 300M")
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma list of {', '.join(METHODS)} (default {','.join(DEFAULT_METHODS)})",
    )
    parser.add_argument("--work", default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--no-skip",
        action="store_true",
        help="run even what the memory estimate says will not fit (the launcher still stops it "
        "when less than 2 GiB is left)",
    )
    parser.add_argument(
        "--merge-method",
        default="ties",
        help="merge method of the `ours` runs (default ties; mergekit and naive always run TIES)",
    )
    parser.add_argument("--run", choices=["ours", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        {"ours": run_ours, "naive": run_naive}[args.run](args)
        return 0

    import tempfile

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-link-"))
    work.mkdir(parents=True, exist_ok=True)
    counts = [int(c) for c in args.counts.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "PYTHONWARNINGS": "ignore",
    }
    mergekit_cli = shutil.which("mergekit-yaml") or str(Path(sys.executable).with_name("mergekit-yaml"))
    rows = []
    smol = smollm2_base(work)
    print(f"work dir {work}; {shutil.disk_usage(work).free / 1e9:.0f} GB free", flush=True)
    try:
        for model in args.models.split(","):
            mwork = work / model
            mwork.mkdir(exist_ok=True)
            if model == "smollm2":
                base = smol
            else:
                size = args.random_params.upper().rstrip("B")
                params = float(size[:-1]) * 1e6 if size.endswith("M") else float(size) * 1e9
                base = random_llama_base(mwork, params, smol)
            model_mib = sum(f.stat().st_size for f in base.glob("*.safetensors")) / 2**20
            t0 = time.perf_counter()
            vectors, tuned = make_inputs(base, mwork, max(counts))
            print(f"{model}: base {model_mib:.0f} MiB; inputs ready in {time.perf_counter() - t0:.0f}s", flush=True)
            for n in counts:
                weights = [round(1.0 - 0.1 * i, 2) for i in range(n)]
                yaml = mwork / f"ties-{n}.yaml"
                write_yaml(yaml, base, tuned[:n], weights)
                spec = {
                    "base": str(base),
                    "vectors": [str(v) for v in vectors[:n]],
                    "weights": weights,
                    "merge_method": args.merge_method,
                }
                result = {"model": model, "n": n, "model_mib": model_mib}
                for method in methods:
                    out = mwork / f"out-{method}-{n}"
                    shutil.rmtree(out, ignore_errors=True)
                    # Peak memory seen on SmolLM2, in models: naive n + 2, mergekit ~n + 3. A run that
                    # cannot fit beside the launcher's floor is skipped (the machine may be shared).
                    factor = {"naive": n + 2, "mergekit": n + 3}.get(method)
                    if factor and not args.no_skip and factor * model_mib * 2**20 > mem_available() - MIN_FREE:
                        print(
                            f"  {model} n={n} {method:<9} skipped (needs ~{factor * model_mib / 1024:.1f} GiB,"
                            f" {mem_available() / 2**30:.1f} GiB available)",
                            flush=True,
                        )
                        continue
                    script = [sys.executable, __file__, "--spec", json.dumps({**spec, "out": str(out)})]
                    cmd = {
                        "ours": script + ["--run", "ours"],
                        "naive": script + ["--run", "naive"],
                        "ours-yaml": [
                            sys.executable,
                            "-m",
                            "traitgraph",
                            "merge",
                            str(yaml),
                            str(out),
                            "--no-progress",
                        ],
                        "mergekit": [
                            mergekit_cli,
                            str(yaml),
                            str(out),
                            "--no-cuda",
                            "--no-write-model-card",
                            "--quiet",
                        ],
                    }[method]
                    seconds, rss, status = measure(cmd, env)
                    result[method] = (seconds, rss) if status == 0 else None
                    print(f"  {model} n={n} {method:<9} {seconds:7.1f}s  {rss:7.0f} MiB", flush=True)
                mine = "ours-yaml" if result.get("ours-yaml") else "ours"  # ours-yaml: the very same inputs
                if result.get(mine) and result.get("mergekit"):
                    result["diff"] = compare(mwork / f"out-{mine}-{n}", mwork / f"out-mergekit-{n}")
                for method in methods:
                    shutil.rmtree(mwork / f"out-{method}-{n}", ignore_errors=True)
                rows.append(result)
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)

    print()
    header = (
        f"{'model':<8} {'n':>2} | "
        + " | ".join(f"{m:>18}" for m in methods)
        + " | mergekit/ours time | ours RSS / model | vs mergekit"
    )
    print(header)
    print(f"{'':<8} {'':>2} | " + " | ".join(f"{'s':>8} {'MiB':>9}" for _ in methods) + " |")
    for r in rows:
        cells = [f"{r[m][0]:8.1f} {r[m][1]:9.0f}" if r.get(m) else f"{'—':>18}" for m in methods]
        ratio = f"{r['mergekit'][0] / r['ours'][0]:.2f}×" if r.get("mergekit") and r.get("ours") else "—"
        rss_ratio = f"{r['ours'][1] / r['model_mib']:.2f}" if r.get("ours") else "—"
        diff = f"max {r['diff'][0]:.1e}, {r['diff'][1]} > 1e-5" if "diff" in r else "—"
        print(f"{r['model']:<8} {r['n']:>2} | " + " | ".join(cells) + f" | {ratio:>18} | {rss_ratio:>16} | {diff}")
    print(
        "(entries that differ from mergekit sit at the trim threshold: equal magnitudes, which mergekit breaks"
        " with an unstable sort and traitgraph by position, and, for `ours`, τ read exactly where mergekit"
        " recomputes it as model − base)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
