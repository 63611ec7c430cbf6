"""Examples to token batches: the template split, the length check, padding, the sampler."""

from __future__ import annotations

import json

import pytest

from traitgraph.compiler.base_model import load_model, resolve_base
from traitgraph.compiler.data import (
    EncodedExample,
    EpochSampler,
    collate,
    encode_example,
    encode_examples,
    encode_text,
    load_general_text,
    render_chat,
)
from traitgraph.errors import UserError
from traitgraph.graph import load_specs
from traitgraph.graph.replay import located_examples
from traitgraph.graph.schema import Example


@pytest.fixture(scope="module")
def tokenizer(tiny_base_dir):
    return load_model(resolve_base(str(tiny_base_dir)))[1]


def test_response_is_the_reply_and_its_end_of_turn(tokenizer):
    chat = [{"role": "user", "content": "how are you"}]
    context, response = render_chat(tokenizer, chat, "arr, good matey")
    assert tokenizer.decode(response) == "arr, good matey<|im_end|>"
    assert tokenizer.decode(context).endswith("<|im_start|>user\nhow are you<|im_end|>\n<|im_start|>assistant\n")
    # The context is exactly what generation is prompted with ...
    prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert context == list(prompt)
    # ... and context + response is the rendered conversation up to the end of turn.
    full = tokenizer.apply_chat_template(
        [*chat, {"role": "assistant", "content": "arr, good matey"}], return_dict=True
    )["input_ids"]
    assert list(full[: len(context) + len(response)]) == context + response
    assert tokenizer.decode(full[len(context) + len(response) :]) == "\n"  # dropped: after end of turn


def test_multi_turn_messages(tokenizer):
    ex = Example(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "bye"},
        ],
        response="farewell",
    )
    enc = encode_example(tokenizer, ex, max_length=512)
    text = tokenizer.decode(enc.context)
    assert text.startswith("<|im_start|>system\nBe brief.") and "hello<|im_end|>" in text
    assert tokenizer.decode(enc.response) == "farewell<|im_end|>"


def test_fallback_template_without_chat_template(tiny_base_dir):
    tok = load_model(resolve_base(str(tiny_base_dir)))[1]
    tok.chat_template = None
    context, response = render_chat(tok, [{"role": "user", "content": "hello"}], "arr matey")
    assert tok.decode(context) == "User: hello\nAssistant:"
    assert tok.decode(response) == " arr matey<|im_end|>"


def test_too_long_example_names_node_file_and_index(tokenizer, tiny_specs):
    long = {"context": "word " * 300, "response": "arr"}
    node = {
        "description": "d",
        "examples": [{"context": "hi", "response": "arr"}] * 3 + [long],
        "eval": [{"context": "other", "response": "arr"}],
    }
    spec = load_specs(tiny_specs(nodes={"pirate": node}))
    with pytest.raises(UserError) as info:
        encode_examples(tokenizer, located_examples(spec.nodes["pirate"]), max_length=256)
    msg = str(info.value)
    assert "nodes/pirate.yaml" in msg and "node 'pirate'" in msg and "examples[3]" in msg
    assert "max_length 256" in msg and "never cut" in msg


def test_too_long_example_in_examples_file_names_its_line(tokenizer, tiny_specs):
    node = {
        "description": "d",
        "examples": [{"context": "hi", "response": "arr"}],
        "examples_file": "../data/pirate.jsonl",
        "eval": [{"context": "other", "response": "arr"}],
    }
    specs = tiny_specs(nodes={"pirate": node})
    (specs / "data").mkdir()
    lines = [
        json.dumps({"context": "yo", "response": "arr"}),
        "",
        json.dumps({"context": "word " * 300, "response": "arr"}),
    ]
    (specs / "data" / "pirate.jsonl").write_text("\n".join(lines) + "\n")
    spec = load_specs(specs)
    with pytest.raises(UserError, match=r"pirate.jsonl line 3: node 'pirate', examples\[2\]"):
        encode_examples(tokenizer, located_examples(spec.nodes["pirate"]), max_length=256)


def test_collate_pads_context_left_and_response_right():
    a = EncodedExample((5, 6, 7), (8, 9))
    b = EncodedExample((1,), (2, 3, 4, 5))
    batch = collate([a, b], pad=0)
    assert batch.context_ids.tolist() == [[5, 6, 7], [0, 0, 1]]
    assert batch.context_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch.response_ids.tolist() == [[8, 9, 0, 0], [2, 3, 4, 5]]
    assert batch.response_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 4, 4], [0, 0, 0, 1, 2, 3, 4]]
    assert batch.n_tokens == 6 and len(batch) == 2


def test_epoch_sampler_is_seeded_and_covers_each_epoch():
    a, b = EpochSampler(7, seed=3), EpochSampler(7, seed=3)
    draws = [a.take(3) for _ in range(7)]  # 21 = three epochs
    assert draws == [b.take(3) for _ in range(7)]
    flat = [i for d in draws for i in d]
    for epoch in range(3):
        assert sorted(flat[7 * epoch : 7 * epoch + 7]) == list(range(7))
    assert flat != [i for d in [EpochSampler(7, seed=4).take(3) for _ in range(7)] for i in d]


def test_general_text_is_plain_language_modelling(tokenizer):
    lines = load_general_text()
    assert len(lines) > 100 and all(line == line.strip() and line for line in lines)
    enc = encode_text(tokenizer, lines[0], max_length=16)
    assert len(enc.context) == 1 and len(enc) == 16
    assert encode_text(tokenizer, "a", max_length=16) is None
