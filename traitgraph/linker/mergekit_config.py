"""``traitgraph merge``: the task-arithmetic subset of mergekit's YAML, run by our linker.

Supported (everything else is an error naming the key; mergekit silently
drops keys it does not know)::

    merge_method: ties            # ties | task_arithmetic | dare_ties | dare_linear
                                  # | della | breadcrumbs | breadcrumbs_ties
    base_model: ./base            # a local Hugging Face directory (safetensors)
    models:
      - model: ./fine-tuned-a     # a local HF directory (τ = its weights − base),
        parameters:               # or a traitgraph task vector (.safetensors file)
          weight: 0.7
          density: 0.3            # per model; default 1.0, as in mergekit
          gamma: 0.01             # breadcrumbs: fraction of largest entries dropped
          epsilon: 0.15           # della: keep probability spread (density ± epsilon)
      - model: ./base             # the base itself may be listed; it is skipped
    parameters:                   # weight and density here apply to every model
      normalize: true             # default: true for ties, false otherwise
      lambda: 1.0
      int8_mask: false            # accepted; only changes mergekit's memory use
      rescale: true               # della only (L1 norm kept after the drop); default true
    dtype: float32                # output dtype; default: the base's

Paths are resolved from the current directory, as mergekit does; hub ids are
not supported (download first). With the same YAML and local models the
output equals ``mergekit-yaml``'s to float32 rounding for ``ties`` and
``task_arithmetic``, ``breadcrumbs`` and ``breadcrumbs_ties`` (mergekit breaks
ties among equal magnitudes with its own sort; we keep the first in flat
order). ``gamma`` and ``epsilon`` may be given per model but must then be
equal for every model (one value per merge here). Differences, on purpose:

* We always compute in float32 and cast at the end; mergekit computes in
  ``dtype``, so for bfloat16/float16 our result is the more exact one.
* mergekit's ``normalize`` divides by the *signed* sum of agreeing weights
  (:mod:`traitgraph.linker.merging.ties`, ``signed_weights``): a lone model
  with a negative weight is added, not subtracted. We reproduce it, and warn.
* DARE's drop mask is ours (seeded with ``--seed``) and rescales by
  1/density as in the paper; mergekit's mask is unseeded and it rescales to
  keep the L1 norm. DARE merges therefore differ from mergekit's.
* DELLA's drop mask is ours too (seeded; the keep probabilities and the L1
  rescale are mergekit's), so DELLA merges differ from mergekit's in which
  entries are dropped, not in the formula.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from traitgraph.errors import UserError, field_path, validation_message
from traitgraph.graph.schema import MAX_SCALE
from traitgraph.linker.link import LinkInput, link
from traitgraph.linker.merging import MergeOptions

SUPPORTED_METHODS = ("ties", "task_arithmetic", "dare_ties", "dare_linear", "della", "breadcrumbs", "breadcrumbs_ties")
#: mergekit's default for ``normalize`` per method (its registry's ``default_normalize``).
DEFAULT_NORMALIZE = {
    "ties": True,
    "task_arithmetic": False,
    "dare_ties": False,
    "dare_linear": False,
    "della": True,
    "breadcrumbs": False,
    "breadcrumbs_ties": False,
}
#: The methods each per-model option belongs to (mergekit accepts it only for them).
OPTION_METHODS = {"gamma": ("breadcrumbs", "breadcrumbs_ties"), "epsilon": ("della",), "rescale": ("della",)}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)


class ModelParameters(_Strict):
    """``models[i].parameters``."""

    weight: float | None = Field(
        default=None, ge=-MAX_SCALE, le=MAX_SCALE, description="The model's weight w_i (may be negative)."
    )
    density: float | None = Field(default=None, gt=0.0, le=1.0, description="Fraction of its τ kept.")
    gamma: float | None = Field(default=None, ge=0.0, lt=1.0, description="Breadcrumbs: largest fraction dropped.")
    epsilon: float | None = Field(default=None, gt=0.0, lt=0.5, description="DELLA: keep-probability spread.")


class ModelEntry(_Strict):
    """One ``models`` entry."""

    model: str = Field(min_length=1, description="Local HF directory or traitgraph τ file.")
    parameters: ModelParameters | None = None


class GlobalParameters(_Strict):
    """Top-level ``parameters``."""

    normalize: bool | None = Field(default=None, description="Divide by the agreeing weights' sum.")
    lambda_: float = Field(default=1.0, alias="lambda", gt=0.0, le=MAX_SCALE, description="Scale of the merged delta.")
    int8_mask: bool = Field(default=False, description="mergekit memory option; no effect here.")
    weight: float | None = Field(
        default=None, ge=-MAX_SCALE, le=MAX_SCALE, description="Default weight of every model."
    )
    density: float | None = Field(default=None, gt=0.0, le=1.0, description="Default density of every model.")
    gamma: float | None = Field(default=None, ge=0.0, lt=1.0, description="Breadcrumbs: largest fraction dropped.")
    epsilon: float | None = Field(default=None, gt=0.0, lt=0.5, description="DELLA: keep-probability spread.")
    rescale: bool | None = Field(default=None, description="DELLA: keep each pruned τ's L1 norm.")


class MergekitConfig(_Strict):
    """A mergekit YAML config, restricted to what ``traitgraph merge`` computes."""

    merge_method: str = Field(description="One of: " + ", ".join(SUPPORTED_METHODS) + ".")
    base_model: str = Field(min_length=1, description="Local HF directory of the base.")
    models: list[ModelEntry] = Field(min_length=1, description="The models to merge.")
    parameters: GlobalParameters = Field(default_factory=GlobalParameters)
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(default=None, description="Output dtype.")


def load_mergekit_config(path: str | os.PathLike) -> MergekitConfig:
    """Read and check a mergekit YAML; a :class:`UserError` naming the file and key otherwise."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: config not found") from None
    except RecursionError:
        raise UserError(f"{path}: not readable YAML (nested too deeply)") from None
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: not readable YAML ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping with merge_method, base_model and models")
    try:
        config = MergekitConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = field_path(err["loc"]) or "<top level>"
            if err["type"] == "extra_forbidden":
                problems.append(f"key '{where}' is not supported by traitgraph merge (remove it, or use mergekit-yaml)")
            else:
                problems.append(f"'{where}': {validation_message(err)}")
        raise UserError(f"{path}:\n  - " + "\n  - ".join(problems)) from None
    if config.merge_method not in SUPPORTED_METHODS:
        raise UserError(
            f"{path}: merge_method '{config.merge_method}' is not supported by traitgraph merge; "
            f"supported: {', '.join(SUPPORTED_METHODS)}"
        )
    _check_method_options(config, str(path))
    return config


def plan_merge(
    config: MergekitConfig, where: str = "config", seed: int = 0
) -> tuple[Path, list[LinkInput], MergeOptions, list[str]]:
    """The base directory, link inputs and merge options a config means, and warnings to show."""
    base = Path(config.base_model)
    if not base.is_dir():
        raise UserError(
            f"{where}: base_model '{config.base_model}' is not a local directory "
            "(paths are resolved from the current directory; hub ids are not supported, download first)"
        )
    g = config.parameters
    inputs, warnings = [], []
    for i, entry in enumerate(config.models):
        path = Path(entry.model)
        if path.resolve() == base.resolve():
            continue  # mergekit lets the base appear among the models; it is the base
        if not path.exists():
            raise UserError(
                f"{where}: models[{i}].model '{entry.model}' not found (a local directory or .safetensors file)"
            )
        p = entry.parameters or ModelParameters()
        weight = p.weight if p.weight is not None else g.weight
        if weight is None:
            raise UserError(f"{where}: models[{i}] ('{entry.model}') has no weight (give parameters.weight)")
        density = p.density if p.density is not None else (g.density if g.density is not None else 1.0)
        inputs.append(LinkInput(name=entry.model, path=path, weight=weight, density=density))
    if not inputs:
        raise UserError(f"{where}: no model to merge besides the base")
    normalize = DEFAULT_NORMALIZE[config.merge_method] if g.normalize is None else g.normalize
    consensus = config.merge_method in ("ties", "dare_ties")
    if normalize and any(i.weight < 0 for i in inputs):
        where_ = (
            "wherever a negatively weighted model is alone on the elected side, its change is added, not subtracted"
            if consensus
            else "a negative sum of weights flips the whole merge"
        )
        warnings.append(
            f"normalize divides by the signed sum of the weights, as mergekit does: {where_}. "
            "traitgraph merge reproduces this for compatibility; set `normalize: false` to subtract"
        )
    if config.merge_method.startswith("dare"):
        warnings.append(
            "DARE's drop mask is traitgraph's own (seeded, rescaled by 1/density); the result differs from mergekit's"
        )
    if config.merge_method == "della":
        warnings.append(
            "DELLA's drop mask is traitgraph's own (seeded); which entries are dropped differs from mergekit's"
        )
    options = MergeOptions(
        method=config.merge_method,
        density=1.0,
        lambda_=g.lambda_,
        sign_vote="weighted",
        normalize="signed_weights" if normalize else "none",
        seed=seed,
        **_method_options(config),
    )
    return base, inputs, options, warnings


def _check_method_options(config: MergekitConfig, where: str) -> None:
    """gamma, epsilon and rescale only where mergekit accepts them; each one value for all models."""
    for key, methods in OPTION_METHODS.items():
        places = [("parameters", getattr(config.parameters, key))]
        places += [(f"models[{i}].parameters", getattr(e.parameters, key, None)) for i, e in enumerate(config.models)]
        given = [(place, value) for place, value in places if value is not None]
        if given and config.merge_method not in methods:
            raise UserError(
                f"{where}: key '{given[0][0]}.{key}' is not supported by traitgraph merge for merge_method "
                f"'{config.merge_method}' (only {', '.join(methods)})"
            )
        if len({value for _, value in given}) > 1:
            raise UserError(
                f"{where}: '{key}' differs between models ({', '.join(f'{p}.{key}={v}' for p, v in given)}); "
                "traitgraph merge uses one value for all models"
            )


def _method_options(config: MergekitConfig) -> dict:
    """gamma, epsilon and rescale as given (checked by :func:`_check_method_options`), or mergekit's defaults."""
    options = {"gamma": 0.01, "epsilon": 0.15, "rescale": True}
    for key in options:
        values = [getattr(config.parameters, key)] + [getattr(e.parameters, key, None) for e in config.models]
        options[key] = next((v for v in values if v is not None), options[key])
    return options


def run_merge(
    config_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    max_shard_size: str = "2GB",
    progress: bool = True,
    warn=print,
) -> dict[str, str]:
    """Merge what a mergekit YAML describes into ``out_dir``; return output file -> sha256."""
    config = load_mergekit_config(config_path)
    base, inputs, options, warnings = plan_merge(config, str(config_path), seed)
    for text in warnings:
        warn(f"note: {text}")
    return link(
        base, inputs, options, out_dir, dtype=config.dtype or "auto", max_shard_size=max_shard_size, progress=progress
    )
