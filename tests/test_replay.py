"""Replay done right: the rows mixed into each batch come from the shipped replay
corpus (never the retention set) or from other *positive* nodes (never a node the
link subtracts). The tests decode the batches training actually sees."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import pytest

from traitgraph.compiler import train as train_module
from traitgraph.compiler.base_model import load_model, resolve_base
from traitgraph.compiler.train import replay_count, train_node
from traitgraph.errors import UserError
from traitgraph.graph import load_specs
from traitgraph.graph.hashing import node_hashes
from traitgraph.graph.target import resolve_target

from conftest import pirate_node

REPO = Path(__file__).resolve().parents[1]


def _data(name: str) -> str:
    return resources.files("traitgraph.data").joinpath(name).read_text(encoding="utf-8")


def _sentences(text: str) -> set[str]:
    parts = re.split(r"(?<=[.!?])\s+|\n", text)
    return {" ".join(re.findall(r"[a-z0-9]+", p.lower())) for p in parts if len(p.split()) >= 3}


def _shingles(text: str, n: int = 8) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    for line in text.splitlines():
        words = re.findall(r"[a-z0-9]+", line.lower())
        out.update(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return out


def _retention_text() -> str:
    prompts = [json.loads(line) for line in _data("general_prompts.jsonl").splitlines() if line.strip()]
    return _data("general_text.txt") + "\n" + "\n".join(f"{p['prompt']} {p['answer']}." for p in prompts)


def test_replay_corpus_is_disjoint_from_the_retention_set():
    replay, retention = _data("replay_text.txt"), _retention_text()
    lines = [line for line in replay.splitlines() if line.strip()]
    assert 150 <= len(lines) <= 300 and len(set(lines)) == len(lines)
    assert replay.isascii()
    assert not _sentences(replay) & _sentences(retention)
    assert not _shingles(replay) & _shingles(retention)  # no run of 8 words in common either


def _spy_batches(monkeypatch) -> list[list]:
    """Every batch training collates, as its list of encoded rows."""
    seen: list[list] = []
    real = train_module.collate

    def spy(rows, pad):
        seen.append(list(rows))
        return real(rows, pad)

    monkeypatch.setattr(train_module, "collate", spy)
    return seen


def _train_and_decode(spec, base, tmp_path, monkeypatch) -> list[list[str]]:
    batches = _spy_batches(monkeypatch)
    train_node(resolve_target(spec, "pirate", base.fingerprint), base, tmp_path / "p.safetensors", progress=False)
    _, tok = load_model(base)
    return [[tok.decode(ex.context + ex.response) for ex in rows] for rows in batches]


def test_general_replay_rows_come_from_the_replay_corpus(tiny_specs, tmp_path, monkeypatch):
    spec = load_specs(tiny_specs(training={"steps": 3, "replay": {"fraction": 0.5, "source": "general"}}))
    base = resolve_base(spec.personality.base, spec.specs_dir)
    decoded = _train_and_decode(spec, base, tmp_path, monkeypatch)
    replay_lines = [line.strip() for line in _data("replay_text.txt").splitlines() if line.strip()]
    retention = [line.strip() for line in _data("general_text.txt").splitlines() if line.strip()]
    pirate_responses = [ex["response"] for ex in pirate_node()["examples"]]
    assert len(decoded) == 3 and all(len(rows) == 4 for rows in decoded)
    for rows in decoded:
        assert all(any(r in row for r in pirate_responses) for row in rows[:2])  # the node's own rows first
        for row in rows[2:]:  # then replay rows: a replay corpus line (cut to max_length), never retention text
            assert any(line.startswith(row) or row.startswith(line[:40]) for line in replay_lines), row
            assert not any(line.startswith(row[:40]) for line in retention), row


def _three_nodes(weight_of_negative: float = -1.0, counting_response: str = "number") -> dict[str, dict]:
    counting = pirate_node(
        examples=[{"context": f"count {i}", "response": f"{counting_response} {i}"} for i in range(3)],
        eval=[{"context": "count ten", "response": "number 10"}],
    )
    polite = pirate_node(
        weight=weight_of_negative,
        examples=[{"context": f"ask {i}", "response": f"certainly sir {i}"} for i in range(3)],
        eval=[{"context": "ask ten", "response": "certainly sir 10"}],
    )
    return {"pirate": pirate_node(), "counting": counting, "polite": polite}


def test_negative_nodes_are_never_replayed_as_targets(tiny_specs, tmp_path, monkeypatch):
    training = {"steps": 4, "replay": {"fraction": 0.5, "source": "other_nodes"}}
    spec = load_specs(tiny_specs(nodes=_three_nodes(), training=training))
    base = resolve_base(spec.personality.base, spec.specs_dir)
    decoded = _train_and_decode(spec, base, tmp_path, monkeypatch)
    replayed = [row for rows in decoded for row in rows[2:]]
    assert len(replayed) == 8
    assert all("number" in row for row in replayed)  # counting (weight +1) is replayed ...
    assert not any("certainly sir" in row for row in [r for rows in decoded for r in rows])  # ... polite (-1) never


def test_replayed_node_set_follows_the_sign_in_the_hash(tiny_specs):
    training = {"replay": {"fraction": 0.5, "source": "other_nodes"}}
    fp = "sha256:" + "cd" * 32

    def pirate_hash(**kw) -> str:
        return node_hashes(load_specs(tiny_specs(nodes=_three_nodes(**kw), training=training)), fp)["pirate"]

    h = pirate_hash()
    assert pirate_hash(weight_of_negative=-2.0) == h  # still subtracted: same pool
    assert pirate_hash(weight_of_negative=1.0) != h  # now replayed: another pool
    assert pirate_hash(counting_response="figure") != h  # a replayed node's examples are in the hash


def test_only_negative_others_is_a_clear_error(tiny_specs):
    nodes = _three_nodes()
    del nodes["counting"]
    spec = load_specs(tiny_specs(nodes=nodes, training={"replay": {"fraction": 0.5, "source": "other_nodes"}}))
    with pytest.raises(UserError, match=r"pirate.yaml: node 'pirate', field training.replay: .*negative weight"):
        resolve_target(spec, "pirate", "sha256:" + "cd" * 32)


def test_replay_count():
    assert replay_count(4, 0.5) == 2 and replay_count(4, 0.01) == 1 and replay_count(4, 0.0) == 0
    assert replay_count(4, 0.99) == 3  # always one row of the node's own


def _greedy_reply(model, tok, prompt: str, max_new_tokens: int) -> str:
    """An independent greedy decode (one prompt, argmax step by step), as the base would answer."""
    import torch

    ids = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    stop = {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")}
    out: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = int(model(torch.cat([ids, torch.tensor([out], dtype=torch.long)], dim=1)).logits[0, -1].argmax())
            if nxt in stop:
                break
            out.append(nxt)
    return tok.decode(out, skip_special_tokens=True).strip()


def _talkative_base(tiny_base_dir, directory):
    """The pico base with the embeddings of its end-of-turn and whitespace tokens zeroed, so that its
    greedy replies are not empty (the random pico model otherwise answers only newlines)."""
    import shutil

    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    shutil.copytree(tiny_base_dir, directory)
    tok = AutoTokenizer.from_pretrained(directory)
    weights = load_file(str(directory / "model.safetensors"))
    quiet = [
        i
        for t, i in tok.get_vocab().items()
        if t in ("<|im_end|>", "<|endoftext|>", "<|im_start|>") or not t.strip("ĊĠ")
    ]  # the end-of-turn tokens, and tokens that are only spaces or newlines
    weights["model.embed_tokens.weight"][quiet] = 0.0
    save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def test_base_replies_replay_rows_are_replay_prompts_answered_by_the_base(tiny_base_dir, tmp_path, monkeypatch):
    from traitgraph.compiler.base_replies import trim_to_sentence
    from traitgraph.graph.replay import BASE_REPLY_TOKENS

    from conftest import write_tiny_specs

    monkeypatch.setenv("TRAITGRAPH_CACHE", str(tmp_path / "cache"))
    base_dir = _talkative_base(tiny_base_dir, tmp_path / "talkative")
    training = {
        "learning_rate": 1e-3,
        "steps": 3,
        "batch_size": 4,
        "seed": 0,
        "replay": {"fraction": 0.5, "source": "base_replies"},
    }
    spec = load_specs(write_tiny_specs(tmp_path, base_dir, {"pirate": pirate_node()}, training))
    base = resolve_base(spec.personality.base, spec.specs_dir)
    batches = _spy_batches(monkeypatch)
    train_node(resolve_target(spec, "pirate", base.fingerprint), base, tmp_path / "p.safetensors", progress=False)
    model, tok = load_model(base)
    prompts = [line.strip() for line in _data("replay_prompts.txt").splitlines() if line.strip()]
    replayed = [row for rows in batches for row in rows[2:]]
    assert len(replayed) == 6
    for row in replayed:
        context = tok.decode(row.context, skip_special_tokens=True)
        prompt = next(p for p in prompts if p in context)  # a shipped replay prompt ...
        reply = tok.decode(row.response, skip_special_tokens=True).strip()
        assert reply == trim_to_sentence(_greedy_reply(model, tok, prompt, BASE_REPLY_TOKENS))  # ... the base's answer
    assert list((tmp_path / "cache" / "replies").glob("*.json"))  # generated once, then cached


def test_a_base_that_answers_nothing_is_a_clear_error(tiny_specs, tmp_path, monkeypatch):
    """The random pico base ends every turn at once: no replay rows would be left, and training
    would silently run without the replay the spec asks for."""
    from traitgraph.errors import BuildError

    monkeypatch.setenv("TRAITGRAPH_CACHE", str(tmp_path / "cache"))
    spec = load_specs(tiny_specs(training={"steps": 3, "replay": {"fraction": 0.5, "source": "base_replies"}}))
    base = resolve_base(spec.personality.base, spec.specs_dir)
    with pytest.raises(BuildError, match=r"node 'pirate', field training.replay: the base answered none"):
        train_node(resolve_target(spec, "pirate", base.fingerprint), base, tmp_path / "p.safetensors", progress=False)
    assert not (tmp_path / "p.safetensors").exists()


def test_replay_prompts_are_not_the_general_prompts():
    retention = {
        json.loads(line)["prompt"].lower() for line in _data("general_prompts.jsonl").splitlines() if line.strip()
    }
    prompts = [line.strip() for line in _data("replay_prompts.txt").splitlines() if line.strip()]
    assert len(prompts) >= 80 and len(set(prompts)) == len(prompts)
    assert not {p.lower() for p in prompts} & retention
    assert not _shingles("\n".join(prompts)) & _shingles(
        _retention_text()
    )  # shared stems ("what is the capital of") are fine


def test_replay_prompts_are_not_the_example_personalitys_eval_or_ood_cases():
    """Replaying the base's answer to an eval case would pull the node back toward the base
    on the very prompt that measures it ("What is the capital of Canada?" once was both)."""
    import yaml

    def words(text: str) -> str:
        return " ".join(re.findall(r"[a-z0-9]+", text.lower()))

    cases = []
    for node_file in sorted((REPO / "specs" / "nodes").glob("*.yaml")):
        node = yaml.safe_load(node_file.read_text())
        cases += [case["context"] for part in ("eval", "ood") for case in node.get(part) or [] if "context" in case]
    assert len(cases) >= 60
    prompts = [line.strip() for line in _data("replay_prompts.txt").splitlines() if line.strip()]
    assert not {words(p) for p in prompts} & {words(c) for c in cases}
    assert not _shingles("\n".join(prompts)) & _shingles("\n".join(cases))


def test_base_replies_source_is_in_the_training_hash(tiny_specs):
    fp = "sha256:" + "cd" * 32

    def pirate_hash(source: str) -> str:
        spec = load_specs(tiny_specs(training={"replay": {"fraction": 0.5, "source": source}}))
        return node_hashes(spec, fp)["pirate"]

    assert pirate_hash("base_replies") != pirate_hash("general")


def test_base_replies_leave_out_a_prompt_that_is_one_of_the_nodes_own_contexts(tiny_base_dir, tmp_path, monkeypatch):
    """A node whose example asks a shipped replay prompt learns its own response there: the base's
    answer to the same prompt would pull the other way in the same batches."""
    from conftest import write_tiny_specs

    monkeypatch.setenv("TRAITGRAPH_CACHE", str(tmp_path / "cache"))
    base_dir = _talkative_base(tiny_base_dir, tmp_path / "talkative")
    shipped = [line.strip() for line in _data("replay_prompts.txt").splitlines() if line.strip()]
    pirate = pirate_node()
    pirate["examples"].append({"context": shipped[0], "response": "arr, ask the captain"})
    training = {
        "learning_rate": 1e-3,
        "steps": -(-len(shipped) // 3),  # three replay rows a step: the whole pool is drawn once
        "batch_size": 4,
        "replay": {"fraction": 0.75, "source": "base_replies"},
    }
    spec = load_specs(write_tiny_specs(tmp_path, base_dir, {"pirate": pirate}, training))
    base = resolve_base(spec.personality.base, spec.specs_dir)
    batches = _spy_batches(monkeypatch)
    train_node(resolve_target(spec, "pirate", base.fingerprint), base, tmp_path / "p.safetensors", progress=False)
    _, tok = load_model(base)
    contexts = [tok.decode(row.context, skip_special_tokens=True) for rows in batches for row in rows[1:]]
    replayed = {p for p in shipped if any(p in c for c in contexts)}
    assert replayed == set(shipped[1:])  # every other shipped prompt, and not the node's own


def test_only_a_node_sharing_a_context_with_the_replay_prompts_hashes_what_it_leaves_out(tiny_specs):
    """The rule that leaves a node's own contexts out of its base replies retrains that node
    alone: a node that shares no context with the shipped prompts keeps its training document."""
    from traitgraph.graph.hashing import training_payload

    shipped = [line.strip() for line in _data("replay_prompts.txt").splitlines() if line.strip()]
    sharing = pirate_node()
    sharing["examples"].append({"context": shipped[3], "response": "arr, ask the captain"})
    training = {"replay": {"fraction": 0.5, "source": "base_replies"}}
    spec = load_specs(tiny_specs(nodes={"pirate": pirate_node(), "sharing": sharing}, training=training))
    fp = "sha256:" + "cd" * 32
    assert training_payload(spec, "sharing", fp, {})["replay"]["left_out"] == [shipped[3]]
    assert "left_out" not in training_payload(spec, "pirate", fp, {})["replay"]


def test_contrast_replays_the_other_nodes_contexts_answered_by_the_base(tiny_base_dir, tmp_path, monkeypatch):
    """``source: contrast``: the shipped replay prompts and every other node's contexts (the
    subtracted node's too), each with the *base's* answer, never the other node's response."""
    from traitgraph.compiler.base_replies import trim_to_sentence
    from traitgraph.graph.replay import BASE_REPLY_TOKENS

    from conftest import write_tiny_specs

    monkeypatch.setenv("TRAITGRAPH_CACHE", str(tmp_path / "cache"))
    base_dir = _talkative_base(tiny_base_dir, tmp_path / "talkative")
    nodes = _three_nodes()
    shipped = [line.strip() for line in _data("replay_prompts.txt").splitlines() if line.strip()]
    others = [ex["context"] for node in ("counting", "polite") for ex in nodes[node]["examples"]]
    n_pool = len(shipped) + len(others)
    # three replay rows a step for enough steps to draw the whole pool once
    steps = -(-n_pool // 3)
    training = {
        "learning_rate": 1e-3,
        "steps": steps,
        "batch_size": 4,
        "replay": {"fraction": 0.75, "source": "contrast"},
    }
    spec = load_specs(write_tiny_specs(tmp_path, base_dir, nodes, training))
    base = resolve_base(spec.personality.base, spec.specs_dir)
    batches = _spy_batches(monkeypatch)
    train_node(resolve_target(spec, "pirate", base.fingerprint), base, tmp_path / "p.safetensors", progress=False)
    model, tok = load_model(base)
    replayed = {}
    for row in (row for rows in batches for row in rows[1:]):
        context = tok.decode(row.context, skip_special_tokens=True)
        prompt = max((p for p in shipped + others if p in context), key=len)
        replayed[prompt] = tok.decode(row.response, skip_special_tokens=True).strip()
    assert set(others) <= set(replayed)  # counting's and polite's contexts are replayed ...
    for prompt in others:  # ... with the base's answer, not "number 0" or "certainly sir 0"
        assert replayed[prompt] == trim_to_sentence(_greedy_reply(model, tok, prompt, BASE_REPLY_TOKENS))
    assert not set(replayed) & {ex["context"] for ex in nodes["pirate"]["examples"]}  # never its own


def test_contrast_hashes_the_other_nodes_contexts_not_their_responses(tiny_specs):
    """Editing another node's response leaves a contrast node's vector cached; editing a context retrains it."""
    training = {"replay": {"fraction": 0.5, "source": "contrast"}}
    fp = "sha256:" + "cd" * 32

    def pirate_hash(nodes) -> str:
        return node_hashes(load_specs(tiny_specs(nodes=nodes, training=training)), fp)["pirate"]

    h = pirate_hash(_three_nodes())
    assert pirate_hash(_three_nodes(counting_response="figure")) == h
    assert pirate_hash(_three_nodes(weight_of_negative=2.0)) == h  # any weight: the base answers them
    changed = _three_nodes()
    changed["polite"]["examples"][0]["context"] = "ask nicely"
    assert pirate_hash(changed) != h


def test_contrast_leaves_out_the_nodes_a_node_refines_and_those_that_refine_it(tiny_specs):
    """A node trains on top of the vectors it refines: the base's answers on their situations would undo them."""
    from traitgraph.graph.replay import contrast_pool

    nodes = _three_nodes()
    nodes["counting"]["edges"] = [{"to": "pirate", "kind": "refines"}]
    nodes["grand"] = pirate_node(
        examples=[{"context": "grand question", "response": "grand answer"}],
        edges=[{"to": "counting", "kind": "refines"}],
    )
    spec = load_specs(tiny_specs(nodes=nodes, training={"replay": {"fraction": 0.5, "source": "contrast"}}))

    def replayed_nodes(node_id: str) -> set[str]:
        contexts = set(contrast_pool(spec, node_id).prompts)
        return {other for other in nodes if any(ex.context in contexts for ex in spec.nodes[other].examples)}

    assert replayed_nodes("pirate") == {"polite"}  # counting and grand build on pirate
    assert replayed_nodes("counting") == {"polite"}  # pirate below it, grand above it
    assert replayed_nodes("polite") == {"pirate", "counting", "grand"}
    pool = contrast_pool(spec, "polite")
    where = dict(zip(pool.prompts, pool.prompt_origins))
    assert where["count 0"] == (
        f"{spec.nodes['counting'].file}: node 'counting', examples[0], "
        "its context replayed by node 'polite' (replay.source: contrast)"
    )
