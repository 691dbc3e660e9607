"""The run configuration: the resolved settings of a training run, and how they are assembled.

Sections: ``algo`` (a method, chosen by name), ``model`` (a preset plus fields),
``data``, ``trainer``, ``sample`` and ``run_dir``. Sources are merged in order:
defaults, a YAML file, then ``key=value`` overrides; the result is validated once.
The YAML written to a run directory round-trips through :func:`build_config`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from .utils.typed_config import ConfigError, from_dict, load_yaml, merge, parse_overrides, to_dict
from .data.config import DataConfig
from .methods import get_method_spec
from .models import MODEL_PRESETS, ModelConfig
from .recipes import check_recipe_algo, recipe_update
from .samplers import SamplingConfig


# What Lightning's ModelParallelStrategy (under trainer.strategy=fsdp) accepts.
FSDP_PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "bf16-true", "16-true")


ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu")
PRECISIONS = ("auto", "32-true", "32", "64-true", "64", "16-mixed", "16", "bf16-mixed", "bf16", "16-true",
              "bf16-true", "transformer-engine", "transformer-engine-float16")
_DEVICES_RANGE = "'auto', -1 (all), an integer >= 1, or a list of device indices >= 0"


def _check_devices(devices: Any) -> None:
    """What Lightning accepts for ``devices``, checked before it is given them."""
    bad = ConfigError(f"trainer.devices={devices!r} is out of range; valid: {_DEVICES_RANGE}")
    if isinstance(devices, bool):
        raise bad
    if isinstance(devices, str):
        text = devices.strip()
        if text == "auto" or text == "-1":
            return
        parts = [p for p in text.split(",") if p.strip()]
        if not parts or not all(p.strip().isdigit() for p in parts):
            raise bad
        if len(parts) == 1 and "," not in text and int(parts[0]) < 1:
            raise bad
        return
    if isinstance(devices, int):
        if devices == -1 or devices >= 1:
            return
        raise bad
    if isinstance(devices, (list, tuple)):
        if devices and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices) \
                and len(set(devices)) == len(devices):
            return
        raise bad
    raise bad


@dataclass
class TrainerConfig:
    """Optimisation, precision, parallelism, logging and checkpointing."""

    # The defaults are the CPU first run's (benchmarks/first_run.py); recipes set the papers'.
    max_steps: int = 1440
    batch_size: int = 16  # global: sequences per optimiser step over all devices
    micro_batch_size: int | None = None  # per device; None = as large as batch_size allows
    lr: float = 1e-3
    warmup_steps: int = 50
    lr_schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    beta1: float = 0.9
    # 0.95: a short run's second moments must forget its first, large gradients (0.999
    # kept the bound of the first run at ~370 against ~240; the papers' 0.999 is for 1M steps)
    beta2: float = 0.95
    grad_clip: float = 1.0
    ema: float = 0.999  # 0 disables; the papers use 0.9999 over 1M steps
    val_every: int = 1000
    val_batches: int = 8
    # Times (t, z_t) drawn per validation sequence, stratified over all of them. The NELBO
    # estimate is heavy-tailed near t = 0 (rare noised tokens carry huge weights): one draw
    # per sequence of a small set moves the bound by +-30%. None = enough passes for
    # duo.evaluation.perplexity.MIN_DRAWS draws over the rows one validation reads
    # (val_batches x micro-batch x devices, or fewer if the set is smaller; 1 from 1,024 rows).
    val_passes: int | None = None
    ckpt_every: int = 500
    log_every: int = 10
    precision: str = "auto"  # auto = bf16-mixed on CUDA, 32-true on CPU
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # ddp, fsdp (FSDP2, one shard per block), ddp_spawn, ... (Lightning's)
    seed: int = 0
    loggers: list[str] = field(default_factory=lambda: ["csv", "tensorboard"])
    compile: bool = False
    # Logits elements per chunk of the output layer + loss (memory vs speed); None = 2^24
    # on CPU; on accelerators 2^32 for Duo's fused NELBO, else 2^27 (duo.losses.LOSS_KINDS).
    loss_chunk_elements: int | None = None
    resume: bool = True  # continue from run_dir/checkpoints/last.ckpt when present
    progress_bar: bool = True

    def validate(self) -> "TrainerConfig":
        for name in ("max_steps", "batch_size", "val_every", "val_batches", "ckpt_every",
                     "log_every", "num_nodes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"trainer.{name}={getattr(self, name)} must be >= 1")
        if self.loss_chunk_elements is not None and self.loss_chunk_elements < 1:
            raise ConfigError(f"trainer.loss_chunk_elements={self.loss_chunk_elements} must be >= 1 "
                              "(or null: chosen by device)")
        if self.val_passes is not None and self.val_passes < 1:
            raise ConfigError(f"trainer.val_passes={self.val_passes} must be >= 1 (or null: chosen by the "
                              "validation set's size)")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ConfigError(f"trainer.micro_batch_size={self.micro_batch_size} must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"trainer.lr={self.lr} must be > 0")
        if self.warmup_steps < 0:
            raise ConfigError(f"trainer.warmup_steps={self.warmup_steps} must be >= 0")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"trainer.ema={self.ema} must lie in [0, 1) (0 disables EMA)")
        if "fsdp" in str(self.strategy).lower() and self.strategy != "fsdp" and self.ema > 0:
            raise ConfigError(f"trainer.strategy={self.strategy!r} flattens the weights, which the EMA "
                              "(trainer.ema) cannot average; use trainer.strategy=fsdp (FSDP2) or add trainer.ema=0")
        if self.strategy == "fsdp" and self.precision not in FSDP_PRECISIONS:
            raise ConfigError(f"trainer.precision={self.precision!r} is not supported with trainer.strategy=fsdp; "
                              f"use one of: {', '.join(FSDP_PRECISIONS)}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"trainer.min_lr_ratio={self.min_lr_ratio} must lie in [0, 1]")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"trainer.{name}={getattr(self, name)} must lie in [0, 1)")
        for name in ("weight_decay", "grad_clip", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"trainer.{name}={getattr(self, name)} must be >= 0")
        if str(self.accelerator).lower() not in ACCELERATORS:
            raise ConfigError(f"trainer.accelerator={self.accelerator!r} is not one of {', '.join(ACCELERATORS)}")
        if str(self.precision) not in PRECISIONS:
            raise ConfigError(f"trainer.precision={self.precision!r} is not one of {', '.join(PRECISIONS)}")
        _check_devices(self.devices)
        bad = sorted(set(self.loggers) - {"csv", "tensorboard", "wandb"})
        if bad:
            raise ConfigError(f"trainer.loggers has unknown {bad[0]!r}; valid: csv, tensorboard, wandb")
        return self


@dataclass
class TrainConfig:
    algo: str
    algo_cfg: Any
    model_preset: str
    model: ModelConfig
    data: DataConfig
    trainer: TrainerConfig
    sample: SamplingConfig  # the samples decoded at the end of training
    run_dir: str
    recipe: str | None = None  # the duo.recipes entry applied under the overrides, if any

    def to_dict(self) -> dict[str, Any]:
        """Plain data; feeding it back to :func:`build_config` gives the same config."""
        out = {
            "algo": {"_name": self.algo, **to_dict(self.algo_cfg)},
            "model": {"_name": self.model_preset, **to_dict(self.model)},
            "data": to_dict(self.data),
            "trainer": to_dict(self.trainer),
            "sample": to_dict(self.sample),
            "run_dir": self.run_dir,
        }
        return {"recipe": self.recipe, **out} if self.recipe else out


SECTIONS = ("algo", "model", "data", "trainer", "sample", "run_dir", "config", "recipe")


def _normalise(data: dict[str, Any]) -> dict[str, Any]:
    """Accept ``algo: duo`` and ``model: small`` (selections) as well as mappings;
    ``data: <name or path>`` selects the corpus."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in SECTIONS:
            raise ConfigError(f"unknown key {key!r}; valid top-level keys: {', '.join(SECTIONS)}")
        if key in ("algo", "model") and not isinstance(value, dict):
            value = {"_name": value}
        elif key == "data" and not isinstance(value, dict):
            value = {"corpus": value}
        elif key == "data" and "_name" in value:
            value = {**{k: v for k, v in value.items() if k != "_name"}, "corpus": value["_name"]}
        out[key] = value
    return out


def default_run_dir(algo: str) -> str:
    return str(Path("runs") / f"{algo}-{time.strftime('%Y%m%d-%H%M%S')}")


def build_config(
    overrides: Sequence[str] | dict[str, Any] = (),
    config_file: str | Path | None = None,
    base: dict[str, Any] | None = None,
) -> TrainConfig:
    """Defaults (or ``base``, e.g. a saved run's config), then the recipe (``recipe=NAME``
    among the overrides or in the file, :mod:`duo.recipes`), then ``config_file`` (or
    ``config=<path>`` among the overrides), then overrides. Raises ``ConfigError`` (a
    ``ValueError``) naming any bad key or value."""
    update = parse_overrides(overrides) if not isinstance(overrides, dict) else overrides
    update = _normalise(update)
    file_path = update.pop("config", None) or config_file
    file_data = _normalise(load_yaml(file_path)) if file_path is not None else {}
    recipe = update.pop("recipe", None) or file_data.pop("recipe", None)
    file_data.pop("recipe", None)
    merged: dict[str, Any] = {"algo": {"_name": "duo"}, "model": {"_name": "tiny"}}
    if base is not None:
        # A resolved config: its own recipe is already in its values and is not carried over.
        merged = merge(merged, {k: v for k, v in _normalise(base).items() if k != "recipe"})
    below = merged["algo"].get("_name", "duo")
    if recipe is not None:
        merged = merge(merged, _normalise(recipe_update(str(recipe))))
    merged = merge(merge(merged, file_data), update)
    if recipe is not None:
        check_recipe_algo(str(recipe), merged["algo"].get("_name", "duo"), below)
    cfg = _assemble(merged)
    return dataclasses.replace(cfg, recipe=str(recipe)) if recipe is not None else cfg


def _assemble(d: dict[str, Any]) -> TrainConfig:
    algo_d = dict(d.get("algo", {}))
    algo = algo_d.pop("_name", "duo")
    spec = get_method_spec(algo)
    algo_cfg = from_dict(spec.config_cls, algo_d, prefix="algo.").validate()

    model_d = dict(d.get("model", {}))
    preset = model_d.pop("_name", "tiny")
    if preset not in MODEL_PRESETS:
        raise ConfigError(
            f"unknown model preset {preset!r}; valid presets: {', '.join(sorted(MODEL_PRESETS))}"
        )
    base = to_dict(MODEL_PRESETS[preset])
    model = from_dict(ModelConfig, {**base, **model_d}, prefix="model.")
    model.validate()

    data = from_dict(DataConfig, dict(d.get("data", {})), prefix="data.")
    data.validate()
    trainer = from_dict(TrainerConfig, dict(d.get("trainer", {})), prefix="trainer.").validate()
    # End-of-training samples; unset fields take the method's defaults when used
    # (end_sample_config), so a saved config carries no other method's choices.
    sample = from_dict(SamplingConfig, dict(d.get("sample", {})), prefix="sample.")
    try:
        end_sample_config(algo, sample).validate()
    except ValueError as err:
        raise ConfigError(f"sample.{err}") from None
    run_dir = d.get("run_dir") or default_run_dir(algo)
    if not isinstance(run_dir, (str, Path)):
        raise ConfigError(f"run_dir={run_dir!r} must be a path")
    return TrainConfig(algo, algo_cfg, preset, model, data, trainer, sample, str(run_dir))


def end_sample_config(algo: str, sample: SamplingConfig) -> SamplingConfig:
    """``sample`` with its unset (None) fields filled from the method's end-of-training
    defaults (``MethodSpec.end_samples``: Duo's Psi, 256 steps, top-p 0.6; 128 steps for the
    others). A sample.sampler other than the default's takes only its step count."""
    defaults = dict(get_method_spec(algo).end_samples)
    if sample.sampler not in (None, defaults.get("sampler")):
        defaults = {"steps": defaults["steps"]}
    unset = {k: v for k, v in defaults.items() if getattr(sample, k) is None}
    return dataclasses.replace(sample, **unset)


def replace_section(cfg: TrainConfig, section: str, **fields: Any) -> TrainConfig:
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **fields)})
