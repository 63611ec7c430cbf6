"""Export a build as a PEFT LoRA adapter: the built delta W_built − W_base, per module, by truncated SVD.

What each kind of changed tensor becomes:

=======================  ==========================================================
2-D ``nn.Linear`` weight  LoRA ``A`` (r × in), ``B`` (out × r) from the rank-r
                          truncated SVD of the delta: B = U_r·√S_r, A = √S_r·V_rᵀ
                          (``lora_alpha = r``, so PEFT's scale is 1). At
                          r ≥ min(out, in) the adapter is exact; a larger r is
                          padded with zeros.
``nn.Embedding``          LoRA on the embedding (PEFT's ``lora_embedding_A/B``),
                          the same SVD of the delta's transpose.
tied output head          when the base ties ``lm_head`` to the embeddings, the
                          embedding delta also changes the head: ``lm_head`` gets
                          a LoRA of the same delta, so both uses move together.
1-D tensors (norms)       no low-rank form: the whole module is saved
                          (PEFT ``modules_to_save``; a few KB), exact. With
                          ``include_norms=False`` they are left out (vLLM's
                          multi-LoRA serving rejects ``modules_to_save``).
anything else             not representable; listed in :attr:`LoraExport.dropped`.
=======================  ==========================================================

>>> export_lora(Path("base"), Path("out/checkpoint"), 32, Path("out/lora-r32"))   # doctest: +SKIP
LoraExport(rank=32, modules=211, saved_modules=61, dropped=[], ...)
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from traitgraph.errors import BuildError, UserError


@dataclass
class LoraExport:
    """What :func:`export_lora` wrote."""

    rank: int
    modules: int
    """Modules with a LoRA (A, B) pair."""
    saved_modules: int
    """Modules saved whole (``modules_to_save``: norms)."""
    kept_energy: float
    """Σ of the kept squared singular values / Σ of all of them, over every LoRA module (1.0 = exact)."""
    dropped: list[str] = field(default_factory=list)
    """Changed tensors the adapter does not carry."""


def lora_factors(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(A, B, kept)`` with ``B @ A`` the best rank-``rank`` approximation of ``delta`` (out × in).

    ``A`` is (rank × in), ``B`` (out × rank); rows/columns past the matrix rank are zero.
    ``kept`` is the share of the delta's squared Frobenius norm the factors keep.

    >>> d = torch.outer(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.0, 1.0]))   # rank 1
    >>> A, B, kept = lora_factors(d, 2)
    >>> torch.allclose(B @ A, d, atol=1e-6), A.shape, B.shape, round(kept, 6)
    (True, torch.Size([2, 3]), torch.Size([2, 2]), 1.0)
    """
    U, S, Vh = torch.linalg.svd(delta.double(), full_matrices=False)  # (out,k) (k,) (k,in)
    r = min(rank, S.numel())
    root = S[:r].sqrt()
    A = torch.zeros(rank, delta.shape[1], dtype=torch.float64)
    B = torch.zeros(delta.shape[0], rank, dtype=torch.float64)
    A[:r] = root[:, None] * Vh[:r]
    B[:, :r] = U[:, :r] * root[None, :]
    total = float((S**2).sum())
    kept = 1.0 if total == 0 else float((S[:r] ** 2).sum()) / total
    return A.float(), B.float(), kept


def read_checkpoint_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors checkpoint directory (all shards)."""
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise BuildError(f"{directory}: no *.safetensors files; is this a built checkpoint?")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update(load_file(f))
    return tensors


def changed_tensors(model, built: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """name -> W_built − W_base (float32) for every tensor that differs from the loaded base."""
    base = model.state_dict()
    deltas = {}
    for name, value in built.items():
        if name not in base:
            raise BuildError(f"checkpoint tensor {name} is not in the base model; the checkpoint is not built on it")
        delta = value.float() - base[name].float()
        if torch.any(delta != 0):
            deltas[name] = delta
    return deltas


def plan_modules(model, deltas: dict[str, torch.Tensor], include_norms: bool):
    """Sort the changed tensors into LoRA targets, whole modules and dropped names."""
    lora: dict[str, torch.Tensor] = {}
    whole: list[str] = []
    dropped: list[str] = []
    for name, delta in deltas.items():
        module_name, _, param = name.rpartition(".")
        module = model.get_submodule(module_name)
        if param == "weight" and isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            lora[module_name] = delta
        elif delta.dim() == 1 and include_norms and len(list(module.parameters())) == 1:
            whole.append(module_name)
        else:
            dropped.append(name)
    tied = getattr(model.config, "tie_word_embeddings", False)
    embed = model.get_input_embeddings()
    embed_name = next(n for n, m in model.named_modules() if m is embed)
    if tied and embed_name in lora:
        head_name = next(n for n, m in model.named_modules() if m is model.get_output_embeddings())
        lora[head_name] = lora[embed_name]  # the tied head moves with the embeddings
    return lora, sorted(whole), sorted(dropped)


def _fill_adapter(peft_model, lora: dict[str, torch.Tensor], whole: list[str], built, rank: int) -> float:
    """Write the SVD factors and the saved modules into the PEFT model; return the kept energy."""
    inner = peft_model.base_model.model
    kept_num = kept_den = 0.0
    for module_name, delta in lora.items():
        module = inner.get_submodule(module_name)
        if hasattr(module, "lora_embedding_A") and "default" in module.lora_embedding_A:
            A, B, kept = lora_factors(delta.T, rank)  # PEFT: delta = (B @ A)ᵀ, B (dim × r), A (r × vocab)
            module.lora_embedding_A["default"].data.copy_(A)
            module.lora_embedding_B["default"].data.copy_(B)
        else:
            A, B, kept = lora_factors(delta, rank)
            module.lora_A["default"].weight.data.copy_(A)
            module.lora_B["default"].weight.data.copy_(B)
        energy = float((delta.double() ** 2).sum())
        kept_num, kept_den = kept_num + kept * energy, kept_den + energy
    for module_name in whole:
        wrapper = inner.get_submodule(module_name)
        wrapper.modules_to_save["default"].weight.data.copy_(built[f"{module_name}.weight"].float())
    return 1.0 if kept_den == 0 else kept_num / kept_den


def export_lora(
    base_dir: Path,
    checkpoint_dir: Path,
    rank: int,
    out_dir: Path,
    *,
    include_norms: bool = True,
    base_name: str | None = None,
) -> LoraExport:
    """Write a PEFT LoRA adapter of ``checkpoint_dir − base_dir`` at ``rank`` into ``out_dir`` (atomically).

    It loads with ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out_dir)``.
    ``base_name`` goes into ``adapter_config.json`` as ``base_model_name_or_path``.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise UserError(
            "LoRA export needs the peft package:  pip install 'traitgraph[export]'  (or: pip install peft)"
        ) from None
    from transformers import AutoModelForCausalLM

    if rank < 1:
        raise UserError(f"--lora RANK must be at least 1, got {rank}")
    if out_dir.exists() and (
        not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / "adapter_config.json").is_file())
    ):
        raise UserError(
            f"{out_dir} exists and is not a LoRA adapter directory; refusing to replace it (choose another -o)"
        )
    model = AutoModelForCausalLM.from_pretrained(
        base_dir, dtype=torch.float32, use_safetensors=True, local_files_only=True
    )
    built = read_checkpoint_tensors(checkpoint_dir)
    lora, whole, dropped = plan_modules(model, changed_tensors(model, built), include_norms)
    if not lora and not whole:
        raise BuildError(f"{checkpoint_dir} equals its base: there is no delta to export")
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        target_modules=sorted(lora),
        modules_to_save=whole or None,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # the tied head gets its own LoRA of the same delta on purpose
        warnings.filterwarnings("ignore", message=".*tie_word_embeddings.*")
        peft_model = get_peft_model(model, config)
    kept = _fill_adapter(peft_model, lora, whole, built, rank)
    peft_model.peft_config["default"].base_model_name_or_path = base_name or str(base_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        peft_model.save_pretrained(tmp, save_embedding_layers=False)  # the LoRA carries their delta
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return LoraExport(rank=rank, modules=len(lora), saved_modules=len(whole), kept_energy=kept, dropped=dropped)
