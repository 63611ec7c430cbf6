"""The streaming linker and the lock file, on the pico Llama of conftest (tied embeddings)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import traitgraph.linker.link as link_module
from traitgraph.atomic import sha256_file
from traitgraph.errors import BuildError, UserError
from traitgraph.graph.schema import MergeSettings
from traitgraph.linker.link import LinkInput, checkpoint_files, link_checkpoint
from traitgraph.linker.lock import (
    LockBase,
    LockFile,
    LockNode,
    lock_json,
    read_lock,
    relink,
    verify_outputs,
    write_lock,
)
from traitgraph.linker.merging import ties

from conftest import save_vector


def base_tensors(base_dir: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in checkpoint_files(base_dir):
        out.update(load_file(f))
    return out


def random_tau(
    base: dict[str, torch.Tensor], seed: int, scale: float = 0.01, skip: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * scale for k, v in base.items() if not any(s in k for s in skip)}


def checkpoint_tensors(out_dir: Path) -> dict[str, torch.Tensor]:
    return base_tensors(out_dir)


@pytest.fixture(scope="module")
def vectors(tiny_base_dir, tmp_path_factory):
    """Three task vectors: 'a' and 'b' touch every tensor, 'c' only the MLPs."""
    d = tmp_path_factory.mktemp("vectors")
    base = base_tensors(tiny_base_dir)
    taus = {
        "a": random_tau(base, 1),
        "b": random_tau(base, 2),
        "c": random_tau(base, 3, skip=("attn", "embed", "norm")),
    }
    paths = {n: save_vector(d / f"{n}.safetensors", t, n) for n, t in taus.items()}
    return base, taus, paths


def test_round_trip_through_transformers_gives_base_plus_delta(tiny_base_dir, vectors, tmp_path):
    from transformers import AutoModelForCausalLM

    base, taus, paths = vectors
    weights = {"a": 1.0, "b": -0.5, "c": 0.8}
    settings = MergeSettings(method="ties", density=0.3, **{"lambda": 0.9})
    outputs = link_checkpoint(
        tiny_base_dir,
        [LinkInput(n, paths[n], w) for n, w in weights.items()],
        settings,
        tmp_path / "out",
        progress=False,
    )
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"} <= set(outputs)
    for name, digest in outputs.items():
        assert sha256_file(tmp_path / "out" / name) == digest

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    state = model.state_dict()
    for name, w0 in base.items():
        present = [n for n in weights if name in taus[n]]
        expected = w0 + ties([taus[n][name] for n in present], [weights[n] for n in present], 0.3, lambda_=0.9)
        assert torch.equal(state[name], expected), name
    # Tied embeddings stay tied: the output head is the merged embedding.
    assert "lm_head.weight" not in outputs and model.config.tie_word_embeddings
    assert torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])
    assert not torch.equal(state["model.embed_tokens.weight"], base["model.embed_tokens.weight"])


def test_density_one_single_vector_is_base_plus_lambda_tau(tiny_base_dir, vectors, tmp_path):
    base, taus, paths = vectors
    settings = MergeSettings(method="ties", density=1.0, **{"lambda": 0.5})
    link_checkpoint(tiny_base_dir, [LinkInput("a", paths["a"], 1.0)], settings, tmp_path / "out", progress=False)
    out = checkpoint_tensors(tmp_path / "out")
    for name in base:
        assert torch.equal(out[name], base[name] + 0.5 * taus["a"][name])


def test_vector_and_negated_twin_give_the_base_exactly(tiny_base_dir, vectors, tmp_path):
    base, taus, paths = vectors
    twin = save_vector(tmp_path / "twin.safetensors", taus["a"], "twin")
    inputs = [LinkInput("a", paths["a"], 1.0), LinkInput("twin", twin, -1.0)]
    link_checkpoint(tiny_base_dir, inputs, MergeSettings(method="task_arithmetic"), tmp_path / "out", progress=False)
    out = checkpoint_tensors(tmp_path / "out")
    assert set(out) == set(base)
    for name in base:
        assert torch.equal(out[name], base[name]), name


def test_chunked_streaming_equals_whole_tensors(tiny_base_dir, vectors, tmp_path, monkeypatch):
    _, _, paths = vectors
    inputs = [LinkInput(n, p, w) for (n, p), w in zip(paths.items(), (1.0, -0.7, 0.4))]
    for method in ("ties", "dare_ties"):
        settings = MergeSettings(method=method, density=0.3)
        whole = link_checkpoint(tiny_base_dir, inputs, settings, tmp_path / f"{method}-whole", progress=False)
        with monkeypatch.context() as m:
            m.setattr(link_module, "CHUNK_ELEMENTS", 300)  # many chunks per tensor, rows split mid-tensor
            m.setattr(link_module, "READ_BUDGET", 10_000)  # and handles reopened all the time
            chunked = link_checkpoint(tiny_base_dir, inputs, settings, tmp_path / f"{method}-chunked", progress=False)
        assert chunked == whole


def test_same_inputs_give_identical_files_in_any_order(tiny_base_dir, vectors, tmp_path):
    _, _, paths = vectors
    inputs = [LinkInput("a", paths["a"], 1.0), LinkInput("b", paths["b"], -0.5), LinkInput("c", paths["c"], 0.3)]
    settings = MergeSettings(method="dare_ties", density=0.5, seed=3)
    first = link_checkpoint(tiny_base_dir, inputs, settings, tmp_path / "one", progress=False)
    second = link_checkpoint(tiny_base_dir, inputs[::-1], settings, tmp_path / "two", progress=False)
    assert first == second
    other_seed = link_checkpoint(
        tiny_base_dir, inputs, settings.model_copy(update={"seed": 4}), tmp_path / "three", progress=False
    )
    assert other_seed["model.safetensors"] != first["model.safetensors"]
    with safe_open(str(tmp_path / "one" / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}  # no time stamps


def test_sharding_writes_an_index_and_loads(tiny_base_dir, vectors, tmp_path):
    from transformers import AutoModelForCausalLM

    _, _, paths = vectors
    inputs = [LinkInput("a", paths["a"], 1.0)]
    single = link_checkpoint(tiny_base_dir, inputs, MergeSettings(), tmp_path / "single", progress=False)
    sharded = link_checkpoint(
        tiny_base_dir, inputs, MergeSettings(max_shard_size="100KB"), tmp_path / "sharded", progress=False
    )
    shards = sorted(n for n in sharded if n.endswith(".safetensors"))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(
        t.numel() * 4 for t in checkpoint_tensors(tmp_path / "single").values()
    )
    a, b = checkpoint_tensors(tmp_path / "single"), checkpoint_tensors(tmp_path / "sharded")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    AutoModelForCausalLM.from_pretrained(tmp_path / "sharded")
    # A sharded checkpoint is a valid base too.
    again = link_checkpoint(
        tmp_path / "sharded", inputs, MergeSettings(method="task_arithmetic"), tmp_path / "again", progress=False
    )
    assert again["model.safetensors"] != single["model.safetensors"]  # τ added twice


def test_output_dtype_bfloat16(tiny_base_dir, vectors, tmp_path):
    from transformers import AutoModelForCausalLM

    base, taus, paths = vectors
    link_checkpoint(
        tiny_base_dir,
        [LinkInput("a", paths["a"], 1.0)],
        MergeSettings(dtype="bfloat16", density=1.0),
        tmp_path / "out",
        progress=False,
    )
    out = checkpoint_tensors(tmp_path / "out")
    name = "model.layers.0.mlp.up_proj.weight"
    assert out[name].dtype == torch.bfloat16
    assert torch.equal(out[name], (base[name] + taus["a"][name]).to(torch.bfloat16))
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out").dtype == torch.bfloat16


def test_fine_tuned_directory_as_input_equals_its_task_vector(tiny_base_dir, vectors, tmp_path):
    base, taus, paths = vectors
    tuned = tmp_path / "tuned"
    shutil.copytree(tiny_base_dir, tuned)
    save_file({k: v + taus["a"][k] for k, v in base.items()}, tuned / "model.safetensors", metadata={"format": "pt"})
    settings = MergeSettings(method="ties", density=0.5)
    from_dir = link_checkpoint(tiny_base_dir, [LinkInput("a", tuned, 1.0)], settings, tmp_path / "d", progress=False)
    from_tau = link_checkpoint(
        tiny_base_dir, [LinkInput("a", paths["a"], 1.0)], settings, tmp_path / "t", progress=False
    )
    x, y = checkpoint_tensors(tmp_path / "d"), checkpoint_tensors(tmp_path / "t")
    assert all(torch.allclose(x[k], y[k], atol=1e-6) for k in x)  # (b + τ) − b rounds τ slightly
    assert from_dir.keys() == from_tau.keys()


# --------------------------------------------------------------------------- bad inputs


def test_unknown_tensor_and_wrong_shape_name_the_node_and_tensor(tiny_base_dir, vectors, tmp_path):
    base, taus, _ = vectors
    extra = save_vector(
        tmp_path / "extra.safetensors", {**taus["a"], "model.layers.9.mlp.up_proj.weight": torch.ones(2)}, "extra"
    )
    with pytest.raises(BuildError, match=r"node 'pirate': tensor 'model.layers.9.mlp.up_proj.weight'.*not in the base"):
        link_checkpoint(
            tiny_base_dir, [LinkInput("pirate", extra, 1.0)], MergeSettings(), tmp_path / "out", progress=False
        )
    name = "model.norm.weight"
    wrong = save_vector(tmp_path / "wrong.safetensors", {name: torch.ones(3)}, "wrong")
    with pytest.raises(BuildError, match=rf"node 'shy': tensor '{name}' has shape \[3\].*but \[64\]"):
        link_checkpoint(
            tiny_base_dir, [LinkInput("shy", wrong, 1.0)], MergeSettings(), tmp_path / "out", progress=False
        )
    nan = save_vector(tmp_path / "nan.safetensors", {name: torch.full((64,), float("nan"))}, "nan")
    with pytest.raises(BuildError, match=rf"node 'broken'.*NaN.*'{name}'"):
        link_checkpoint(
            tiny_base_dir, [LinkInput("broken", nan, 1.0)], MergeSettings(), tmp_path / "out", progress=False
        )
    with pytest.raises(BuildError, match="node 'gone': task vector not found"):
        link_checkpoint(
            tiny_base_dir,
            [LinkInput("gone", tmp_path / "nope.safetensors", 1.0)],
            MergeSettings(),
            tmp_path / "out",
            progress=False,
        )
    assert not (tmp_path / "out").exists()


def test_refuses_to_replace_what_is_not_a_checkpoint(tiny_base_dir, vectors, tmp_path):
    _, _, paths = vectors
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="refusing to replace"):
        link_checkpoint(tiny_base_dir, [LinkInput("a", paths["a"], 1.0)], MergeSettings(), precious, progress=False)
    with pytest.raises(UserError, match="contains the base"):
        link_checkpoint(
            tiny_base_dir, [LinkInput("a", paths["a"], 1.0)], MergeSettings(), tiny_base_dir, progress=False
        )
    assert (precious / "notes.txt").read_text() == "keep me"


def test_interrupted_link_leaves_no_output_and_keeps_the_old_one(tiny_base_dir, vectors, tmp_path, monkeypatch):
    _, _, paths = vectors
    inputs = [LinkInput("a", paths["a"], 1.0), LinkInput("b", paths["b"], 0.5)]
    calls = {"n": 0}
    real = link_module._merge_tensor

    def dies_midway(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(link_module, "_merge_tensor", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        link_checkpoint(tiny_base_dir, inputs, MergeSettings(), tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []  # no out_dir, no temporary directory

    monkeypatch.setattr(link_module, "_merge_tensor", real)
    old = link_checkpoint(tiny_base_dir, inputs[:1], MergeSettings(), tmp_path / "out", progress=False)
    calls["n"] = 0
    monkeypatch.setattr(link_module, "_merge_tensor", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        link_checkpoint(tiny_base_dir, inputs, MergeSettings(), tmp_path / "out", progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert {n: sha256_file(tmp_path / "out" / n) for n in old} == old

    monkeypatch.setattr(link_module, "_merge_tensor", real)  # replacing a finished one works too
    new = link_checkpoint(tiny_base_dir, inputs, MergeSettings(), tmp_path / "out", progress=False)
    assert new != old and [p.name for p in tmp_path.iterdir()] == ["out"]


# --------------------------------------------------------------------------- lock file


def hex_hash(node_id: str) -> str:
    """A training hash as a lock holds one (64 hex digits), stable per node."""
    return hashlib.sha256(node_id.encode()).hexdigest()


def make_lock(
    paths: dict[str, Path], weights: dict[str, float], settings: MergeSettings, outputs: dict[str, str]
) -> LockFile:
    return LockFile(
        traitgraph_version="0.1.0",
        base=LockBase(reference="tiny", fingerprint="sha256:tiny"),
        nodes=[
            LockNode(id=n, training_hash=hex_hash(n), vector_sha256=sha256_file(paths[n]), weight=w)
            for n, w in weights.items()
        ],
        merge=settings,
        outputs=outputs,
    )


def test_lock_round_trip_is_stable_and_strict(vectors, tmp_path):
    _, _, paths = vectors
    lock = make_lock(paths, {"a": 1.0, "b": -0.5}, MergeSettings(**{"lambda": 0.7}), {"model.safetensors": "0" * 64})
    write_lock(tmp_path / "x.lock", lock)
    text = (tmp_path / "x.lock").read_text()
    assert read_lock(tmp_path / "x.lock") == lock
    assert lock_json(read_lock(tmp_path / "x.lock")) == text
    data = json.loads(text)
    assert list(data) == sorted(data) and data["merge"]["lambda"] == 0.7
    data["merge"]["lamda"] = 1.0
    (tmp_path / "bad.lock").write_text(json.dumps(data))
    with pytest.raises(BuildError, match=r"bad.lock: invalid lock file: merge.lamda"):
        read_lock(tmp_path / "bad.lock")


def test_relink_reproduces_identical_files_and_refuses_tampering(tiny_base_dir, vectors, tmp_path):
    _, taus, paths = vectors
    cache = tmp_path / "cache"
    cache.mkdir()
    for n, p in paths.items():
        shutil.copyfile(p, cache / f"{hex_hash(n)}.safetensors")
    cached = {n: cache / f"{hex_hash(n)}.safetensors" for n in paths}
    weights = {"a": 1.0, "b": -0.5, "c": 0.3}
    settings = MergeSettings(method="dare_ties", density=0.4, seed=1, max_shard_size="200KB")
    outputs = link_checkpoint(
        tiny_base_dir,
        [LinkInput(n, cached[n], w) for n, w in weights.items()],
        settings,
        tmp_path / "first",
        progress=False,
    )
    lock = make_lock(cached, weights, settings, outputs)

    def vector_path_for(h: str) -> Path:
        return cache / f"{h}.safetensors"

    assert relink(lock, vector_path_for, tiny_base_dir, tmp_path / "again", progress=False) == outputs
    assert verify_outputs(lock, tmp_path / "again") == []
    for name in outputs:
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "first" / name).read_bytes()

    # An output edited after the fact is reported.
    (tmp_path / "again" / "config.json").write_text("{}")
    assert verify_outputs(lock, tmp_path / "again") == ["config.json"]

    # A tampered vector is refused, naming the node; nothing is written.
    save_vector(cached["b"], {k: v * 2 for k, v in taus["b"].items()}, "b")
    with pytest.raises(BuildError, match=r"node 'b': task vector .* sha256 .* lock recorded"):
        relink(lock, vector_path_for, tiny_base_dir, tmp_path / "third", progress=False)
    cached["b"].unlink()
    with pytest.raises(BuildError, match=f"node 'b': its task vector {hex_hash('b')[:12]} is not in the cache"):
        relink(lock, vector_path_for, tiny_base_dir, tmp_path / "third", progress=False)
    assert not (tmp_path / "third").exists()


def test_relink_onto_another_base_fails_and_keeps_the_output(tiny_base_dir, vectors, tmp_path):
    _, _, paths = vectors
    settings = MergeSettings()
    outputs = link_checkpoint(
        tiny_base_dir, [LinkInput("a", paths["a"], 1.0)], settings, tmp_path / "ckpt", progress=False
    )
    lock = make_lock(paths, {"a": 1.0}, settings, outputs)
    other = tmp_path / "other-base"
    shutil.copytree(tiny_base_dir, other)
    state = load_file(other / "model.safetensors")
    save_file({k: v + 1 for k, v in state.items()}, other / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(BuildError, match="differs from the lock in: model.safetensors"):
        relink(lock, lambda h: {hex_hash(n): p for n, p in paths.items()}[h], other, tmp_path / "ckpt", progress=False)
    assert verify_outputs(lock, tmp_path / "ckpt") == []


def test_streamed_shard_is_byte_for_byte_what_safetensors_writes(tmp_path):
    """The streaming writer lays a file out as the safetensors package does (order, header, padding)."""
    from traitgraph.linker.shard_writer import ShardWriter

    g = torch.Generator().manual_seed(0)
    tensors = {
        "model.norm.weight": torch.randn(7, generator=g).to(torch.bfloat16),
        "lm_head.weight": torch.randn(5, 3, generator=g),
        "position_ids": torch.arange(6, dtype=torch.int64).reshape(1, 6),
        "scale": torch.tensor(2.5, dtype=torch.float16),
        "a.weight": torch.randn(4, 2, generator=g).to(torch.float16),
    }
    save_file(tensors, tmp_path / "reference.safetensors", metadata={"format": "pt"})
    writer = ShardWriter(tmp_path / "streamed.safetensors", {n: (t.dtype, tuple(t.shape)) for n, t in tensors.items()})
    for name in writer.order:
        writer.begin(name)
        for piece in tensors[name].reshape(-1).split(2):  # in chunks, as the linker writes
            writer.write(piece)
        writer.end()
    digest = writer.close()
    streamed = (tmp_path / "streamed.safetensors").read_bytes()
    assert streamed == (tmp_path / "reference.safetensors").read_bytes()
    assert digest == hashlib.sha256(streamed).hexdigest()
