"""The CI recipe in docs/ci.md, run step by step on the pico model, and `traitgraph verify`.

The workflow's YAML is read from the doc itself, so the doc and the test cannot
drift: every `run:` step runs through bash in the order written (the install
step excepted: the test already runs inside the installed environment), and
the `uses:` steps GitHub provides are played by small stand-ins (a directory
as the remote cache, an existence check for the upload).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from traitgraph.cli import main

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def workflow() -> dict:
    text = (REPO / "docs" / "ci.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    return yaml.safe_load(block)


class Runner:
    """Plays one GitHub Actions job in ``workspace`` against a remote cache directory."""

    def __init__(self, workspace: Path, remote_cache: Path):
        self.workspace, self.remote = workspace, remote_cache
        self.outputs: dict[str, dict[str, str]] = {}
        self.log: list[str] = []

    def expand(self, text: str) -> str:
        def one(m: re.Match) -> str:
            expr = m.group(1).strip()
            if expr == "github.workspace":
                return str(self.workspace)
            if expr == "runner.os":
                return "Linux"
            step, name = re.fullmatch(r"steps\.(\w+)\.outputs\.([\w-]+)", expr).groups()
            return self.outputs.get(step, {}).get(name, "")

        return re.sub(r"\$\{\{(.*?)\}\}", one, text)

    def env(self, job_env: dict) -> dict[str, str]:
        env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
        env.update({k: self.expand(str(v)) for k, v in job_env.items()})
        return env

    def run_step(self, step: dict, env: dict[str, str]) -> int:
        out_file = self.workspace / ".github_output"
        out_file.write_text("")
        proc = subprocess.run(
            ["bash", "-e", "-c", self.expand(step["run"])],
            cwd=self.workspace,
            env={**env, "GITHUB_OUTPUT": str(out_file)},
            capture_output=True,
            text=True,
        )
        self.log.append(f"$ {step['run']}\n{proc.stdout}{proc.stderr}")
        lines = [ln.split("=", 1) for ln in out_file.read_text().splitlines() if "=" in ln]
        self.outputs[step.get("id", "")] = dict(lines)
        return proc.returncode

    def cache_paths(self, step: dict) -> list[str]:
        return [p for p in self.expand(step["with"]["path"]).split() if p]

    def restore(self, step: dict) -> None:
        key = self.expand(step["with"]["key"])
        hit = (self.remote / key).is_dir()
        prefix = self.expand(step["with"].get("restore-keys", key))
        match = self.remote / key if hit else next(iter(sorted(self.remote.glob(prefix + "*"))), None)
        if match is not None:
            for rel in self.cache_paths(step):
                if (match / rel).exists():
                    shutil.copytree(match / rel, self.workspace / rel, dirs_exist_ok=True)
        self.outputs[step.get("id", "")] = {"cache-hit": "true" if hit else "false"}

    def save(self, step: dict) -> None:
        target = self.remote / self.expand(step["with"]["key"])
        for rel in self.cache_paths(step):
            if (self.workspace / rel).exists():
                shutil.copytree(self.workspace / rel, target / rel, dirs_exist_ok=True)

    def run_job(self, job: dict) -> dict[str, int]:
        env, status, failed = self.env(job.get("env", {})), {}, False
        for step in job["steps"]:
            name = step.get("name") or step["uses"]
            cond = step.get("if", "")
            if failed and "always()" not in cond:
                continue
            if "cache-hit != 'true'" in cond and self.outputs.get("restore", {}).get("cache-hit") == "true":
                continue
            uses = step.get("uses", "")
            if name == "install" or uses.startswith(("actions/checkout", "actions/setup-python")):
                continue
            if uses.startswith("actions/cache/restore"):
                self.restore(step)
            elif uses.startswith("actions/cache/save"):
                self.save(step)
            elif uses.startswith("actions/upload-artifact"):
                status[name] = 0 if all((self.workspace / p).exists() for p in step["with"]["path"].split()) else 1
            else:
                status[name] = self.run_step(step, env)
                failed = failed or status[name] != 0
        return status


def _fresh_workspace(root: Path, specs: Path) -> Path:
    root.mkdir()
    shutil.copytree(specs, root / "specs")
    return root


def test_ci_recipe_runs_its_steps_in_order_and_reuses_the_cache(tmp_path, tiny_specs):
    specs = tiny_specs(root=tmp_path / "src")
    job = workflow()["jobs"]["build"]
    remote = tmp_path / "remote-cache"
    remote.mkdir()

    first = Runner(_fresh_workspace(tmp_path / "run1", specs), remote)
    status = first.run_job(job)
    assert status == {"cache key": 0, "check": 0, "build": 0, "verify": 0, "upload report and lock": 0}, first.log
    key = first.outputs["key"]["key"]
    assert re.fullmatch(r"tv-[0-9a-f]{40}", key)
    assert len(list(remote.glob("traitgraph-Linux-tv-*/.traitgraph-cache/vectors/*.safetensors"))) == 1
    first_events = [json.loads(line) for line in (first.workspace / "out" / "build.log").read_text().splitlines()]
    assert [e.get("node") for e in first_events if e["task"] == "train"] == ["pirate"]

    second = Runner(_fresh_workspace(tmp_path / "run2", specs), remote)
    assert second.run_job(job) == status, second.log
    assert second.outputs["restore"]["cache-hit"] == "true"
    events = [json.loads(line)["task"] for line in (second.workspace / "out" / "build.log").read_text().splitlines()]
    assert "train" not in events  # the restored cache made training a no-op
    assert (second.workspace / "out" / "traitgraph.lock").read_bytes() == (
        first.workspace / "out" / "traitgraph.lock"
    ).read_bytes()


def test_ci_recipe_fails_the_job_on_a_gate_and_still_uploads(tmp_path, tiny_specs):
    specs = tiny_specs(root=tmp_path / "src")
    personality = specs / "personality.yaml"
    data = yaml.safe_load(personality.read_text())
    data["eval"] = {"min_behaviour_gain": 1000.0}  # unreachable
    personality.write_text(yaml.safe_dump(data))
    runner = Runner(_fresh_workspace(tmp_path / "run", specs), tmp_path / "remote")
    (tmp_path / "remote").mkdir()
    status = runner.run_job(workflow()["jobs"]["build"])
    assert status["build"] != 0
    assert "verify" not in status  # skipped after the failure
    assert (runner.workspace / "out" / "report.json").is_file()
    assert list((tmp_path / "remote").glob("*/.traitgraph-cache/vectors/*.safetensors"))  # vectors saved anyway


@pytest.fixture
def built(tmp_path, tiny_specs):
    specs = tiny_specs()
    out = tmp_path / "out"
    assert main(["build", str(specs), "-o", str(out), "--", "link"]) == 0
    return specs, out


def test_verify_passes_on_an_untouched_build(built, capsys):
    specs, out = built
    assert main(["verify", str(out), "--specs", str(specs)]) == 0
    assert "match the lock" in capsys.readouterr().out


@pytest.mark.parametrize("tamper", ["edit_weights", "edit_config", "delete_tokenizer", "add_file"])
def test_verify_names_the_tampered_file(built, capsys, tamper):
    specs, out = built
    ckpt = out / "checkpoint"
    if tamper == "edit_weights":
        data = bytearray((ckpt / "model.safetensors").read_bytes())
        data[-1] ^= 0x01  # one bit of the last weight
        (ckpt / "model.safetensors").write_bytes(bytes(data))
        name = "model.safetensors"
    elif tamper == "edit_config":
        cfg = json.loads((ckpt / "config.json").read_text())
        cfg["rms_norm_eps"] = 1e-6
        (ckpt / "config.json").write_text(json.dumps(cfg))
        name = "config.json"
    elif tamper == "delete_tokenizer":
        (ckpt / "tokenizer.json").unlink()
        name = "tokenizer.json"
    else:
        (ckpt / "modeling_evil.py").write_text("import os\n")
        name = "modeling_evil.py"
    assert main(["verify", str(out), "--specs", str(specs)]) == 2
    err = capsys.readouterr().err
    assert name in err and "Traceback" not in err


def test_verify_fails_when_a_locked_vector_was_modified(built, capsys):
    from safetensors.torch import load_file, save_file

    from traitgraph.builder.cache import VectorCache
    from traitgraph.linker.lock import read_lock

    specs, out = built
    node = read_lock(out / "traitgraph.lock").nodes[0]
    path = VectorCache().vector_path(node.training_hash)
    tensors = load_file(path)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] * 2
    save_file(tensors, path)
    assert main(["verify", str(out), "--specs", str(specs)]) == 2
    err = capsys.readouterr().err
    assert f"node '{node.id}'" in err and "modified or replaced" in err


def test_verify_without_a_lock_is_a_user_error(tmp_path, capsys):
    assert main(["verify", str(tmp_path)]) == 2
    assert "lock file not found" in capsys.readouterr().err


def test_cache_key_follows_the_training_hashes_only(tmp_path, tiny_specs, capsys):
    from conftest import pirate_node

    def key(**changes) -> str:
        specs = tiny_specs(nodes={"pirate": pirate_node(**changes)}, root=tmp_path / str(len(keys)))
        assert main(["cache", "key", "--specs", str(specs)]) == 0
        return capsys.readouterr().out.strip()

    keys: list[str] = []
    keys.append(key())
    keys.append(key(weight=0.3, description="Another text."))  # link and eval inputs only
    node = pirate_node()
    keys.append(key(eval=node["eval"][:1]))
    keys.append(key(examples=node["examples"][:-1]))  # a training input
    assert keys[0] == keys[1] == keys[2] != keys[3]
    assert all(re.fullmatch(r"tv-[0-9a-f]{40}", k) for k in keys)
