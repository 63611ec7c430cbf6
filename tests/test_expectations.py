"""Behaviour-test expectations: each check on hand-written replies, and how specs carry them.

The replies and the failure sentences below are written by hand; none is
produced by the code under test.
"""

from __future__ import annotations

import pytest

from traitgraph.cli import main
from traitgraph.errors import SpecError
from traitgraph.evaluate.expectations import check_reply, repeated_ngrams, words
from traitgraph.graph import load_specs
from traitgraph.graph.hashing import node_hashes
from traitgraph.graph.schema import Expectation

from specs_factory import eval_case, mutated, write_specs

FINGERPRINT = "sha256:" + "cd" * 32


def test_contains_any_passes_on_one_phrase_in_any_case_and_spacing():
    expect = Expectation(contains_any=("congratulations", "well done"))
    assert check_reply("WELL   done on the new job!", expect) == []
    assert check_reply("I'm sorry to hear that.", expect) == ['says none of "congratulations", "well done"']


def test_contains_all_names_each_missing_phrase():
    expect = Expectation(contains_all=("Paris", "France"))
    assert check_reply("Paris is the capital of France.", expect) == []
    assert check_reply("It is Paris.", expect) == ['does not say "France"']
    assert check_reply("No idea.", expect) == ['does not say "Paris"', 'does not say "France"']


def test_avoids_names_each_phrase_said():
    expect = Expectation(avoids=("instead", "have you considered"))
    assert check_reply("Here is your bullet list:\n- bread\n- milk", expect) == []
    assert check_reply("Have You Considered a numbered list instead?", expect) == [
        'says "instead" (should avoid it)',
        'says "have you considered" (should avoid it)',
    ]


def test_matches_searches_a_regex_ignoring_case():
    expect = Expectation(matches=r"\?\s*$")
    assert check_reply("What is it for?", expect) == []
    assert check_reply("Here you go.", expect) == [r"does not match /\?\s*$/"]
    assert check_reply("I CAN'T do that", Expectation(matches=r"can't|cannot")) == []


def test_max_words_counts_words_not_punctuation():
    assert words("Sure -- it's about 3 miles!") == ["sure", "it's", "about", "3", "miles"]
    assert check_reply("Sure -- it's about 3 miles!", Expectation(max_words=5)) == []


def test_max_words_fails_over_the_limit():
    assert check_reply("one two three four five", Expectation(max_words=4)) == ["has 5 words (at most 4)"]
    assert check_reply("one two three four", Expectation(max_words=4)) == []


def test_no_repetition_flags_a_trigram_said_more_than_twice():
    expect = Expectation(no_repetition=True)
    looping = "I like a rice cooker with a rice cooker that has a rice cooker"
    assert check_reply(looping, expect) == ['repeats "a rice cooker" 3 times (at most 2)']
    assert check_reply("a rice cooker and a rice cooker", expect) == []  # twice is allowed
    assert check_reply("Rinse the rice before cooking it.", expect) == []
    assert repeated_ngrams("go go go go go") == [("go go go", 3)]


def test_several_checks_report_every_failure_in_field_order():
    expect = Expectation(contains_any=("sorry",), avoids=("no",), max_words=2)
    assert check_reply("No. Not now, not ever.", expect) == [
        'says none of "sorry"',
        'says "no" (should avoid it)',
        "has 5 words (at most 2)",
    ]


def test_a_phrase_is_matched_as_text_not_as_a_whole_word():
    # "no" inside "know" counts: phrases are substrings, as in the general prompts' rule.
    assert check_reply("I know.", Expectation(avoids=("no",))) == ['says "no" (should avoid it)']


# --------------------------------------------------------------------------- in the specs


def _with_expect(expect: dict, kind: str = "eval"):
    def edit(n):
        n[kind] = [{**eval_case(0, n["id"]), "expect": expect}]

    return edit


@pytest.mark.parametrize(
    "expect, field, words_in_message",
    [
        ({"matches": "(unclosed"}, "eval[0].expect.matches", "not a valid regular expression"),
        ({"contains_any": ["ok", "  "]}, "eval[0].expect.contains_any", "a phrase is empty"),
        ({"max_words": 0}, "eval[0].expect.max_words", "greater than 0"),
        ({"contains_anything": ["x"]}, "eval[0].expect.contains_anything", "unknown key"),
        ({}, "eval[0].expect", "no check given"),
    ],
)
def test_a_bad_expectation_is_a_load_error_naming_file_node_and_field(tmp_path, expect, field, words_in_message):
    specs = write_specs(tmp_path, nodes=mutated(beta=_with_expect(expect)))
    with pytest.raises(SpecError) as info:
        load_specs(specs)
    (problem,) = info.value.problems
    assert problem.file == specs / "nodes" / "beta.yaml"
    assert problem.node == "beta" and problem.field == field
    assert words_in_message in problem.message


def test_traitgraph_check_prints_a_bad_regex_and_exits_2(tmp_path, capsys):
    specs = write_specs(tmp_path, nodes=mutated(gamma=_with_expect({"matches": "[a-"}, kind="ood")))
    assert main(["check", str(specs)]) == 2
    err = capsys.readouterr().err
    assert "gamma.yaml, node 'gamma', field 'ood[0].expect.matches': not a valid regular expression" in err
    assert "Traceback" not in err


def test_expect_and_ood_cases_never_change_a_training_hash(tmp_path):
    before = node_hashes(load_specs(write_specs(tmp_path)), FINGERPRINT)
    nodes = mutated(alpha=_with_expect({"contains_any": ["answer"], "no_repetition": True}))
    nodes["beta"]["ood"] = [{"context": "Something new entirely?", "response": "Yes.", "expect": {"max_words": 10}}]
    after = node_hashes(load_specs(write_specs(tmp_path, nodes=nodes)), FINGERPRINT)  # same files, rewritten
    assert after == before
    assert load_specs(tmp_path / "specs").nodes["beta"].spec.ood[0].expect.max_words == 10


def test_an_ood_case_repeating_a_training_context_is_an_error(tmp_path):
    def edit(n):
        n["ood"] = [{"context": n["examples"][1]["context"], "response": "Anything."}]

    with pytest.raises(SpecError) as info:
        load_specs(write_specs(tmp_path, nodes=mutated(delta=edit)))
    (problem,) = info.value.problems
    assert (problem.node, problem.field) == ("delta", "ood[0]")
    assert "repeats a training context" in problem.message


def test_a_node_pass_rate_for_an_unknown_node_is_an_error(tmp_path):
    from specs_factory import default_personality, write_base

    personality = default_personality(write_base(tmp_path))
    personality["eval"]["node_test_pass_rate"] = {"betta": 0.5}
    with pytest.raises(SpecError) as info:
        load_specs(write_specs(tmp_path, personality=personality))
    (problem,) = info.value.problems
    assert problem.field == "eval.node_test_pass_rate.betta" and problem.hint == "did you mean 'beta'?"


def test_curly_apostrophes_count_as_straight_ones():
    assert check_reply("I can\u2019t do that.", Expectation(contains_any=("can't",))) == []
    assert check_reply("I can\u2019t do that.", Expectation(matches=r"\bcan't\b")) == []
    assert check_reply("I can\u2019t", Expectation(max_words=2)) == []  # "can't" is one word
