"""Honest measures: the trim eval scores is the one the linker applies, the forgetting gate,
and the report's first lines in words."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from traitgraph.evaluate.honest import trimmed_vector
from traitgraph.evaluate.kept_words import lost_in_words
from traitgraph.evaluate.report import PromptResult, Retention, check_gates
from traitgraph.graph.schema import EvalSettings, MergeSettings
from traitgraph.linker.link import LinkInput, link_checkpoint
from traitgraph.linker.merging import MergeOptions

from conftest import save_vector


@pytest.fixture(scope="module")
def one_vector(tiny_base_dir, tmp_path_factory):
    base = load_file(tiny_base_dir / "model.safetensors")
    g = torch.Generator().manual_seed(3)
    tau = {k: torch.randn(v.shape, generator=g) * 0.01 for k, v in base.items()}
    path = tmp_path_factory.mktemp("honest") / "pirate.safetensors"
    save_vector(path, tau, "pirate")
    return base, tau, path


@pytest.mark.parametrize("method", ["ties", "dare_ties", "dare_linear", "della", "breadcrumbs", "breadcrumbs_ties"])
def test_the_trim_eval_scores_is_entry_for_entry_the_linkers(method, one_vector, tiny_base_dir, tmp_path):
    """A lone node's linked delta is w · (its trimmed τ): the linker and eval trim alike."""
    base, tau, path = one_vector
    settings = MergeSettings(method=method, density=0.3, seed=5)
    link_checkpoint(tiny_base_dir, [LinkInput("pirate", path, 0.7)], settings, tmp_path / "out", progress=False)
    linked = load_file(tmp_path / "out" / "model.safetensors")
    trimmed = trimmed_vector(path, MergeOptions.from_settings(settings), "pirate", n_nodes=1)
    changed = 0
    for name, w0 in base.items():
        assert torch.allclose(linked[name] - w0, 0.7 * trimmed[name], rtol=0, atol=1e-6), name
        changed += int((trimmed[name] != tau[name]).any())
    assert changed == len(base)  # every tensor was sparsified


def test_tsv_m_keeps_a_rank_share_and_iso_keeps_everything(one_vector):
    _, tau, path = one_vector
    name = next(n for n, t in tau.items() if t.dim() == 2)
    tsv = trimmed_vector(path, MergeOptions("tsv_m"), "pirate", n_nodes=4)[name]
    assert torch.linalg.matrix_rank(tsv) == min(tau[name].shape) // 4
    iso = trimmed_vector(path, MergeOptions("iso_cts"), "pirate", n_nodes=4)
    assert all(torch.equal(iso[n], tau[n]) for n in tau)


def _prompts(ok_pairs):
    return [
        PromptResult(prompt=f"q{i}", answer=f"a{i}", base_output="", built_output="", base_ok=b, built_ok=c)
        for i, (b, c) in enumerate(ok_pairs)
    ]


def test_losing_a_general_prompt_fails_the_default_gate_and_names_it():
    retention = Retention(
        text_source="shipped",
        lines=3,
        tokens=30,
        base_loss=2.0,
        linked_loss=2.01,
        prompts=_prompts([(True, True), (True, False), (False, False), (False, True)]),
    )
    gates = {g.name: g for g in check_gates(EvalSettings(), [], retention)}
    assert gates["retention"].passed  # +0.5% is inside the default 1% budget
    assert not gates["prompts"].passed
    assert gates["prompts"].message == "retention: lost 1 general prompt(s) the base answers > budget 0 (q1 -> a1)"
    assert {g.name: g.passed for g in check_gates(EvalSettings(max_general_prompts_lost=1), [], retention)}["prompts"]
    assert lost_in_words(retention) == (
        '**Lost: 1 of 2 general prompts** the base answers: "q1" (expected a1). General-text loss rose 0.50%.'
    )


def test_default_budget_fails_a_build_that_forgets_two_percent():
    retention = Retention(text_source="shipped", lines=3, tokens=30, base_loss=2.0, linked_loss=2.04)
    (gate,) = check_gates(EvalSettings(), [], retention)
    assert not gate.passed and "2.0% > budget 1.0%" in gate.message
