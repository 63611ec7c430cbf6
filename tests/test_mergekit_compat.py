"""``traitgraph merge``: mergekit's YAML, our linker, mergekit-yaml's answer.

The end-to-end test runs the real ``mergekit-yaml`` CLI (CPU) and our
command on the same YAML and the same pico models, and compares every tensor.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from traitgraph.cli import main
from traitgraph.errors import UserError
from traitgraph.linker.mergekit_config import load_mergekit_config, plan_merge

from conftest import require_reference


def tensors(directory: Path) -> dict[str, torch.Tensor]:
    from traitgraph.linker.link import checkpoint_files

    out: dict[str, torch.Tensor] = {}
    for f in checkpoint_files(directory):
        out.update(load_file(f))
    return out


@pytest.fixture(scope="module")
def models(tiny_base_dir, tmp_path_factory) -> Path:
    """A work dir holding ``base`` and three fine-tuned copies ``ft0``..``ft2``."""
    work = tmp_path_factory.mktemp("mergekit")
    shutil.copytree(tiny_base_dir, work / "base")
    base = load_file(tiny_base_dir / "model.safetensors")
    for i in range(3):
        g = torch.Generator().manual_seed(100 + i)
        shutil.copytree(tiny_base_dir, work / f"ft{i}")
        tuned = {k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in base.items()}
        save_file(tuned, work / f"ft{i}" / "model.safetensors", metadata={"format": "pt"})
    return work


CONFIGS = {
    "ties": """
merge_method: ties
base_model: ./base
models:
  - model: ./base
  - model: ./ft0
    parameters: {weight: 0.7, density: 0.3}
  - model: ./ft1
    parameters: {weight: -0.4, density: 0.6}
  - model: ./ft2
    parameters: {weight: 1.1}
parameters: {normalize: true, lambda: 0.9, density: 0.5, int8_mask: true}
dtype: float32
""",
    "task_arithmetic": """
merge_method: task_arithmetic
base_model: ./base
models:
  - model: ./ft0
    parameters: {weight: 0.5}
  - model: ./ft1
    parameters: {weight: -0.3}
dtype: float32
""",
    "breadcrumbs": """
merge_method: breadcrumbs
base_model: ./base
models:
  - model: ./ft0
    parameters: {weight: 0.6, density: 0.5, gamma: 0.05}
  - model: ./ft1
    parameters: {weight: -0.3, density: 0.8, gamma: 0.05}
parameters: {lambda: 1.1}
dtype: float32
""",
    "breadcrumbs_ties": """
merge_method: breadcrumbs_ties
base_model: ./base
models:
  - model: ./ft0
    parameters: {weight: 0.7, density: 0.4}
  - model: ./ft1
    parameters: {weight: 0.5, density: 0.6}
  - model: ./ft2
    parameters: {weight: 1.2}
parameters: {normalize: true, density: 0.5, gamma: 0.02}
dtype: float32
""",
}


def run_mergekit(models: Path, method: str, cli: bool) -> None:
    """``mergekit-yaml`` on CONFIGS[method]: the real CLI, or the function it calls (no start-up cost)."""
    require_reference("mergekit")
    (models / f"{method}.yaml").write_text(CONFIGS[method])
    if cli:
        exe = shutil.which("mergekit-yaml") or str(Path(sys.executable).with_name("mergekit-yaml"))
        subprocess.run(
            [exe, f"{method}.yaml", f"mk-{method}", "--no-cuda", "--no-write-model-card", "--quiet"],
            cwd=models,
            check=True,
            capture_output=True,
        )
        return
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    config = MergeConfiguration.model_validate(yaml.safe_load(CONFIGS[method]))
    run_merge(config, f"mk-{method}", options=MergeOptions(device="cpu", quiet=True, write_model_card=False))


@pytest.mark.filterwarnings("ignore:numpy.core is deprecated:DeprecationWarning")
@pytest.mark.parametrize(
    "method, cli", [("ties", True), ("task_arithmetic", False), ("breadcrumbs", False), ("breadcrumbs_ties", False)]
)
def test_equals_mergekit_yaml_end_to_end(models, method, cli, monkeypatch, capsys):
    monkeypatch.chdir(models)
    run_mergekit(models, method, cli)
    assert main(["merge", f"{method}.yaml", f"ours-{method}", "--no-progress"]) == 0
    ours, theirs = tensors(models / f"ours-{method}"), tensors(models / f"mk-{method}")
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert ours[name].dtype == theirs[name].dtype == torch.float32
        assert torch.allclose(ours[name], theirs[name], rtol=0, atol=1e-5), name
    if method == "ties":
        assert "signed sum" in capsys.readouterr().err  # the negative weight is flagged


def test_per_model_density_and_base_entry_are_read(models, monkeypatch):
    monkeypatch.chdir(models)
    config = load_mergekit_config(_write(models, "d.yaml", CONFIGS["ties"]))
    base, inputs, options, warnings = plan_merge(config)
    assert [(i.name, i.weight, i.density) for i in inputs] == [
        ("./ft0", 0.7, 0.3),
        ("./ft1", -0.4, 0.6),
        ("./ft2", 1.1, 0.5),
    ]
    assert (options.method, options.normalize, options.lambda_) == ("ties", "signed_weights", 0.9)


@pytest.mark.parametrize(
    "text, message",
    [
        ("parameters: {rescale: true}", r"key 'parameters.rescale' is not supported"),
        ("tokenizer_source: base", r"key 'tokenizer_source' is not supported"),
        ("slices: []", r"key 'slices' is not supported"),
        ("merge_method: slerp", r"merge_method 'slerp' is not supported"),
    ],
)
def test_unsupported_mergekit_options_are_errors_naming_the_key(models, text, message):
    body = CONFIGS["task_arithmetic"]
    if text.startswith("merge_method"):
        body = body.replace("merge_method: task_arithmetic", text)
    else:
        body += text + "\n"
    with pytest.raises(UserError, match=message):
        load_mergekit_config(_write(models, "bad.yaml", body))


def test_unsupported_model_parameter_names_its_path(models):
    body = CONFIGS["task_arithmetic"].replace("{weight: 0.5}", "{weight: 0.5, gamma: 0.01}")
    with pytest.raises(UserError, match=r"key 'models\[0\].parameters.gamma' is not supported"):
        load_mergekit_config(_write(models, "bad.yaml", body))


def test_missing_weight_and_missing_model_are_user_errors(models, monkeypatch, capsys):
    monkeypatch.chdir(models)
    body = CONFIGS["task_arithmetic"].replace("    parameters: {weight: 0.5}\n", "")
    with pytest.raises(UserError, match=r"models\[0\] \('./ft0'\) has no weight"):
        plan_merge(load_mergekit_config(_write(models, "w.yaml", body)))
    body = CONFIGS["task_arithmetic"].replace("./ft1", "./ft9")
    assert main(["merge", str(_write(models, "m.yaml", body)), "out-missing"]) == 2
    assert "'./ft9' not found" in capsys.readouterr().err


def _write(directory: Path, name: str, text: str) -> Path:
    (directory / name).write_text(text)
    return directory / name


DELLA = """
merge_method: della
base_model: ./base
models:
  - model: ./ft0
    parameters: {weight: 0.7, density: 0.4, epsilon: 0.1}
  - model: ./ft1
    parameters: {weight: 0.5, density: 0.6, epsilon: 0.1}
parameters: {lambda: 1.2, rescale: false}
dtype: float32
"""


def test_della_options_are_read_and_its_own_mask_is_announced(models, monkeypatch, capsys):
    monkeypatch.chdir(models)
    _, inputs, options, warnings = plan_merge(load_mergekit_config(_write(models, "della.yaml", DELLA)))
    assert (options.method, options.epsilon, options.rescale, options.lambda_) == ("della", 0.1, False, 1.2)
    assert options.normalize == "signed_weights"  # mergekit's della normalizes by default
    assert [i.density for i in inputs] == [0.4, 0.6]
    assert main(["merge", "della.yaml", "ours-della", "--no-progress"]) == 0
    assert "DELLA's drop mask is traitgraph's own" in capsys.readouterr().err


@pytest.mark.parametrize(
    "old, new, message",
    [
        (
            "parameters: {lambda: 1.2, rescale: false}",
            "parameters: {gamma: 0.1}",
            r"key 'parameters.gamma' is not supported by traitgraph merge for merge_method 'della'",
        ),
        ("density: 0.6, epsilon: 0.1", "density: 0.6, epsilon: 0.2", r"'epsilon' differs between models"),
    ],
)
def test_della_option_mistakes_name_the_key(models, old, new, message):
    with pytest.raises(UserError, match=message):
        load_mergekit_config(_write(models, "bad-della.yaml", DELLA.replace(old, new)))
