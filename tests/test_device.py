"""Devices, precision and the task-vector dtype policy: what they do to hashes, bytes and errors.

No GPU here: the tests pin down that the cpu path (the default) is exactly what it
was before devices existed, that another device is a different hash, and that
asking for a device the machine lacks is a clear error with exit code 2.
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from traitgraph.compiler.device import (
    BF16_VECTOR_PARAMETERS,
    EMBEDDED_PARAMETERS,
    base_parameters,
    safetensors_parameters,
    vector_dtype_for,
)
from traitgraph.graph import load_specs
from traitgraph.graph.hashing import (
    canonical_json,
    node_hashes,
    sha256_hex,
    training_payload,
)

from conftest import pirate_node

FP = "sha256:" + "0" * 64


def _hash(tiny_specs, tmp_path, name, **training):
    spec = load_specs(tiny_specs(training=training, root=tmp_path / name))
    return node_hashes(spec, FP)["pirate"], training_payload(spec, "pirate", FP, {})


def test_cpu_payload_is_the_pre_device_payload(tiny_specs, tmp_path):
    """The cpu default hashes exactly the settings dump of before devices existed:
    every field, vector_dtype float32, no device or precision key."""
    from traitgraph.graph.schema import TrainingSettings

    h, payload = _hash(tiny_specs, tmp_path, "default")
    before = TrainingSettings(learning_rate=1e-3, steps=8, batch_size=4, seed=0).model_dump(mode="json")
    for absent in ("device", "monitor", "trainable", "anchor", "dream"):  # unset optional blocks are left out
        del before[absent]
    before["vector_dtype"] = "float32"
    assert payload["training"] == before
    assert h == sha256_hex(canonical_json(payload))


def test_explicit_cpu_and_float32_keep_the_hash(tiny_specs, tmp_path):
    default, _ = _hash(tiny_specs, tmp_path, "a")
    explicit, _ = _hash(tiny_specs, tmp_path, "b", device="cpu", vector_dtype="float32")
    assert default == explicit


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto resolves to cuda on this machine")
def test_auto_device_on_a_cpu_machine_is_the_cpu_hash(tiny_specs, tmp_path):
    cpu, _ = _hash(tiny_specs, tmp_path, "a")
    auto, _ = _hash(tiny_specs, tmp_path, "b", device="auto")
    assert cpu == auto


def test_cuda_is_another_vector(tiny_specs, tmp_path):
    cpu, _ = _hash(tiny_specs, tmp_path, "a")
    cuda, payload = _hash(tiny_specs, tmp_path, "b", device="cuda")
    assert cuda != cpu
    assert (payload["training"]["device"], payload["training"]["precision"]) == ("cuda", "bf16-autocast")


def test_vector_dtype_threshold():
    assert vector_dtype_for(BF16_VECTOR_PARAMETERS - 1) == "float32"
    assert vector_dtype_for(BF16_VECTOR_PARAMETERS) == "bfloat16"
    assert vector_dtype_for(8_000_000_000, "float16") == "float16"


def test_base_parameters_counts_the_checkpoint(tiny_base_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base_dir)
    # tied embeddings: one tensor in the checkpoint, counted once by num_parameters
    assert safetensors_parameters(tiny_base_dir) == model.num_parameters()
    assert base_parameters(str(tiny_base_dir)) == model.num_parameters()


def test_embedded_parameter_counts_match_their_gguf():
    import gguf

    from traitgraph.compiler.base_model import _embedded_gguf

    for name, count in EMBEDDED_PARAMETERS.items():
        reader = gguf.GGUFReader(_embedded_gguf(name))
        assert sum(int(torch.tensor([int(d) for d in t.shape]).prod()) for t in reader.tensors) == count


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has cuda")
def test_build_on_a_missing_device_is_a_clear_error(tiny_specs, tmp_path):
    from traitgraph.cli import main

    specs = tiny_specs(nodes={"pirate": pirate_node()}, training={"device": "cuda"})
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = main(["build", str(specs), "-o", str(tmp_path / "out"), "--", "train"])
    assert rc == 2
    assert "node 'pirate'" in err.getvalue() and "no cuda device" in err.getvalue()
    assert "Traceback" not in err.getvalue()
    from traitgraph.builder.cache import VectorCache

    assert not [
        e
        for e in VectorCache().entries()
        if e.node_id == "pirate" and "cuda" in json.dumps(VectorCache().record(e.training_hash).payload)
    ]


def test_unknown_device_is_a_spec_error(tiny_specs, tmp_path):
    from traitgraph.cli import main

    specs = tiny_specs(training={"device": "tpu"})
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = main(["check", str(specs)])
    assert rc == 2 and "device" in err.getvalue() and "personality.yaml" in err.getvalue()


def test_large_base_stores_bfloat16_vectors_in_the_hash():
    from traitgraph.compiler.device import training_record
    from traitgraph.graph.schema import TrainingSettings

    assert training_record(TrainingSettings(), BF16_VECTOR_PARAMETERS)["vector_dtype"] == "bfloat16"
    assert training_record(TrainingSettings(), 134_515_008)["vector_dtype"] == "float32"
    pinned = TrainingSettings(vector_dtype="float32")
    assert training_record(pinned, 8_000_000_000)["vector_dtype"] == "float32"
