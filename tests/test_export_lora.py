"""`traitgraph export OUT --lora RANK`: a PEFT adapter of the built delta, checked through PEFT itself."""

from __future__ import annotations

import json

import pytest
import torch

from traitgraph.cli import main


@pytest.fixture(scope="module")
def build(tmp_path_factory, tiny_base_dir):
    from conftest import pirate_node, write_tiny_specs

    root = tmp_path_factory.mktemp("pico-build")
    specs = write_tiny_specs(
        root, tiny_base_dir, {"pirate": pirate_node()}, {"learning_rate": 1e-3, "steps": 8, "batch_size": 4, "seed": 0}
    )
    out = root / "out"
    assert main(["build", str(specs), "-o", str(out), "--", "link"]) == 0
    return specs, out


def _logits(model, ids):
    with torch.no_grad():
        return model.eval()(ids).logits


def _adapter_logits(base_dir, adapter_dir, ids):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return _logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir), ids)


def test_full_rank_adapter_reproduces_the_checkpoint_and_low_rank_is_close(build, tiny_base_dir, capsys):
    from transformers import AutoModelForCausalLM

    specs, out = build
    ids = torch.randint(0, 500, (2, 24), generator=torch.Generator().manual_seed(0))
    built = _logits(AutoModelForCausalLM.from_pretrained(out / "checkpoint"), ids)
    base = _logits(AutoModelForCausalLM.from_pretrained(tiny_base_dir), ids)
    base_gap = (base - built).abs().max().item()
    assert base_gap > 0.1  # the build moved the model, so the comparisons below mean something

    # hidden 64: rank 64 spans every delta of the pico model
    assert main(["export", str(out), "--lora", "64", "--specs", str(specs)]) == 0
    assert "100.0 % of the delta's energy kept" in capsys.readouterr().out
    assert (_adapter_logits(tiny_base_dir, out / "lora-r64", ids) - built).abs().max().item() < 1e-4

    gaps = {}
    for rank in (4, 16):
        assert main(["export", str(out), "--lora", str(rank), "--specs", str(specs)]) == 0
        gaps[rank] = (_adapter_logits(tiny_base_dir, out / f"lora-r{rank}", ids) - built).abs().max().item()
    assert gaps[16] < gaps[4] < base_gap  # more rank, closer; any rank closer than the base
    assert gaps[16] < 0.5 * base_gap
    config = json.loads((out / "lora-r16" / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["lora_alpha"] == 16
    assert "lm_head" in config["target_modules"]  # the tied head moves with the embeddings


def test_an_iso_c_build_of_rank_r_exports_exactly_at_rank_r(build, tiny_base_dir, tmp_path, capsys):
    import shutil

    import yaml
    from transformers import AutoModelForCausalLM

    specs, _ = build
    low = shutil.copytree(specs, tmp_path / "specs")
    personality = yaml.safe_load((low / "personality.yaml").read_text())
    personality["merge"] = {"method": "iso_c", "rank": 4, "lambda": 2.0}
    (low / "personality.yaml").write_text(yaml.safe_dump(personality))
    out = tmp_path / "out"
    assert main(["build", str(low), "-o", str(out), "--", "link"]) == 0
    ids = torch.randint(0, 500, (2, 24), generator=torch.Generator().manual_seed(1))
    built = _logits(AutoModelForCausalLM.from_pretrained(out / "checkpoint"), ids)
    assert (_logits(AutoModelForCausalLM.from_pretrained(tiny_base_dir), ids) - built).abs().max().item() > 0.1
    capsys.readouterr()
    assert main(["export", str(out), "--lora", "4", "--specs", str(low)]) == 0
    assert "100.0 % of the delta's energy kept" in capsys.readouterr().out
    assert (_adapter_logits(tiny_base_dir, out / "lora-r4", ids) - built).abs().max().item() < 1e-4


def test_no_norms_leaves_out_modules_to_save(build):
    from safetensors import safe_open

    specs, out = build
    assert main(["export", str(out), "--lora", "8", "--no-norms", "-o", str(out / "plain"), "--specs", str(specs)]) == 0
    with safe_open(out / "plain" / "adapter_model.safetensors", "pt") as f:
        assert all("lora" in k for k in f.keys())
    assert json.loads((out / "plain" / "adapter_config.json").read_text())["modules_to_save"] is None


def test_lora_factors_are_the_truncated_svd():
    from traitgraph.linker.export_lora import lora_factors

    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(12, 3, generator=g), torch.randn(3, 7, generator=g)
    scales = torch.tensor([5.0, 2.0, 0.5])
    delta = u.qr().Q @ torch.diag(scales) @ v.T.qr().Q.T  # singular values 5, 2, 0.5
    A, B, kept = lora_factors(delta, 2)
    assert kept == pytest.approx((25 + 4) / (25 + 4 + 0.25))
    assert torch.linalg.matrix_norm(delta - B @ A).item() == pytest.approx(0.5, abs=1e-5)  # Eckart-Young
    A, B, kept = lora_factors(delta, 10)  # more than the rank: exact, padded with zeros
    assert torch.allclose(B @ A, delta, atol=1e-5) and A.shape == (10, 7) and kept == pytest.approx(1.0)


def test_export_errors_are_user_errors(tmp_path, build, capsys):
    specs, out = build
    assert main(["export", str(tmp_path), "--lora", "8"]) == 2
    assert "lock file not found" in capsys.readouterr().err
    assert main(["export", str(out), "--lora", "0", "--specs", str(specs)]) == 2
    assert "at least 1" in capsys.readouterr().err
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    assert main(["export", str(out), "--lora", "4", "-o", str(keep), "--specs", str(specs)]) == 2
    assert "not a LoRA adapter directory" in capsys.readouterr().err
    assert (keep / "notes.txt").read_text() == "mine"
