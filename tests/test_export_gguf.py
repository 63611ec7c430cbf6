"""`traitgraph export OUT --gguf`: the base's GGUF as template, the built weights written in.

The template is a pico GGUF written the way llama.cpp's converter writes one
(tests/gguf_fixture.py). Every exported file is read back through
transformers' own GGUF loader, which undoes llama.cpp's Q/K permutation, and
compared with the checkpoint. Tolerances (max |Δ logit|, pico logits are
about ±3): f32 1e-5 (exact up to summation order), f16 1e-2, q8_0 5e-2.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_export_lora import build  # noqa: F401  (the pico build, one per module)

from traitgraph.cli import main

TOLERANCE = {"f32": 1e-5, "f16": 1e-2, "q8_0": 5e-2}


@pytest.fixture(scope="module")
def pico_gguf(tmp_path_factory, tiny_base_dir):
    from gguf_fixture import write_pico_gguf

    return write_pico_gguf(tiny_base_dir, tmp_path_factory.mktemp("gguf") / "pico-f32.gguf")


def _load_gguf(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def _ids():
    return torch.randint(0, 500, (2, 24), generator=torch.Generator().manual_seed(0))


def test_fixture_is_a_faithful_gguf_of_the_pico_base(pico_gguf, tiny_base_dir):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_base_dir).eval()
    with torch.no_grad():
        assert torch.allclose(_load_gguf(pico_gguf)(_ids()).logits, hf(_ids()).logits, atol=1e-6)


@pytest.mark.parametrize("gguf_type", ["f32", "f16", "q8_0"])
def test_exported_gguf_reads_back_with_the_checkpoints_logits(build, pico_gguf, gguf_type, capsys):
    from transformers import AutoModelForCausalLM

    specs, out = build
    target = out / f"tiny-{gguf_type}.gguf"
    assert (
        main(["export", str(out), "--gguf", "--type", gguf_type, "--template", str(pico_gguf), "--specs", str(specs)])
        == 0
    )
    assert f"wrote {target}" in capsys.readouterr().out
    built = AutoModelForCausalLM.from_pretrained(out / "checkpoint").eval()
    base = AutoModelForCausalLM.from_pretrained(pico_gguf.parent, gguf_file=pico_gguf.name).eval()
    with torch.no_grad():
        expected = built(_ids()).logits
        gap = (_load_gguf(target)(_ids()).logits - expected).abs().max().item()
        assert (base(_ids()).logits - expected).abs().max().item() > 10 * TOLERANCE[gguf_type]  # the build moved
    assert gap < TOLERANCE[gguf_type]


def test_exported_gguf_keeps_the_templates_metadata_and_layout(build, pico_gguf):
    import gguf

    specs, out = build
    assert main(["export", str(out), "--gguf", "--template", str(pico_gguf), "--specs", str(specs)]) == 0
    template, exported = gguf.GGUFReader(pico_gguf), gguf.GGUFReader(out / "tiny-f16.gguf")
    changed = {"general.file_type", "general.name"}
    for key, field in template.fields.items():
        if key not in changed and not key.startswith("GGUF."):
            assert exported.fields[key].contents() == field.contents(), key
    assert exported.fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_F16)
    assert exported.fields["general.name"].contents() == "tiny"
    assert [t.name for t in exported.tensors] == [t.name for t in template.tensors]
    for t in exported.tensors:
        assert t.tensor_type == (gguf.GGMLQuantizationType.F32 if len(t.shape) == 1 else gguf.GGMLQuantizationType.F16)
    assert "output.weight" not in {t.name for t in exported.tensors}  # tied, like the base


def test_greedy_answers_and_tokenizer_match_the_checkpoint(build, pico_gguf):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from traitgraph.graph import load_specs

    specs, out = build
    target = out / "tiny-f16.gguf"
    if not target.exists():
        assert main(["export", str(out), "--gguf", "--template", str(pico_gguf), "--specs", str(specs)]) == 0
    tok = AutoTokenizer.from_pretrained(out / "checkpoint")
    tok_gguf = AutoTokenizer.from_pretrained(target.parent, gguf_file=target.name)
    built = AutoModelForCausalLM.from_pretrained(out / "checkpoint").eval()
    exported = _load_gguf(target)
    cases = load_specs(specs).nodes["pirate"].spec.eval
    for case in cases:
        prompt = tok.apply_chat_template(case.chat(), add_generation_prompt=True, tokenize=False)
        assert prompt == tok_gguf.apply_chat_template(case.chat(), add_generation_prompt=True, tokenize=False)
        ids = tok(prompt, return_tensors="pt").input_ids
        assert ids.tolist() == tok_gguf(prompt, return_tensors="pt").input_ids.tolist()
        kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        with torch.no_grad():
            assert exported.generate(ids, **kw).tolist() == built.generate(ids, **kw).tolist()


def test_modelfile_beside_the_gguf(build, pico_gguf):
    specs, out = build
    assert (
        main(["export", str(out), "--gguf", "--type", "q8_0", "--template", str(pico_gguf), "--specs", str(specs)]) == 0
    )
    text = (out / "Modelfile").read_text()
    assert text.startswith("FROM ./tiny-q8_0.gguf\n")
    assert "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>" in text
    assert 'SYSTEM """You are a tiny test model."""' in text  # the template's default system prompt
    assert 'PARAMETER stop "<|im_end|>"' in text


def test_hf_base_without_template_and_wrong_templates_are_user_errors(build, tmp_path, capsys):
    import gguf

    specs, out = build
    assert main(["export", str(out), "--gguf", "--specs", str(specs)]) == 2
    assert "--template" in capsys.readouterr().err
    other = tmp_path / "gpt2.gguf"
    w = gguf.GGUFWriter(other, "gpt2")
    w.add_block_count(2)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert main(["export", str(out), "--gguf", "--template", str(other), "--specs", str(specs)]) == 2
    assert "not supported" in capsys.readouterr().err
    assert not list(out.glob("*.gguf.*"))  # nothing half-written


def test_template_of_another_model_is_refused(build, tmp_path, capsys):
    from traitgraph.compiler.base_model import base_gguf

    specs, out = build
    smollm = base_gguf("smollm2-135m-instruct")  # installed with traitgraph (scripts/setup.sh)
    assert main(["export", str(out), "--gguf", "--template", str(smollm), "--specs", str(specs)]) == 2
    err = capsys.readouterr().err
    assert "not a GGUF of this" in err and "Traceback" not in err
