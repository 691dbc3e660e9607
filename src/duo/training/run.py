"""``train(cfg)``: build data, model and a Lightning Trainer; fit; report.

The run directory holds ``config.yaml`` (resolved), ``tokenizer/``,
``checkpoints/{last,step_N}.ckpt`` (atomic writes), ``metrics.jsonl`` plus CSV and
TensorBoard logs, ``plots/training.png`` and ``samples/``.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from ..checkpoints import find_resumable
from ..data.build import check_seq_len
from ..utils.io import RunDirLock, remove_stale_temp_files
from ..utils.typed_config import ConfigError, save_yaml
from ..config import TrainConfig
from ..evaluation.perplexity import validation_passes
from ..methods import get_method_spec
from ..models import count_parameters
from .callbacks import FinalCheckpoint, MetricsHistory, ProgressBar
from .checkpoint_io import AtomicCheckpointIO
from .datamodule import TextDataModule
from .module import DiffusionLM, validation_rows
from .sharding import FSDPStrategy

log = logging.getLogger("duo")
# The fast tokenizers' thread pool and forked loader workers do not mix.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    val_nelbo: float | None
    val_ppl: float | None
    samples: list[str]
    is_global_zero: bool = True  # False in the other processes of a multi-process run
    val_ppl_bound: bool = True  # val_ppl is an upper bound (diffusion); False: exact (autoregressive)


def resolve_world(cfg: TrainConfig) -> tuple[str, int]:
    """Accelerator name and number of processes, known before the Trainer exists so the
    gradient-accumulation factor can be derived from the global batch size."""
    tc = cfg.trainer
    accel = tc.accelerator
    if accel == "auto":
        accel = "gpu" if torch.cuda.is_available() else "cpu"
    devices = tc.devices
    if isinstance(devices, str) and "," in devices:  # "0,1" (the CLI's form of a list): those indices
        devices = [p for p in devices.split(",") if p.strip()]
    if isinstance(devices, (list, tuple)):
        n = len(devices)
    elif devices in ("auto", -1, "-1"):
        n = torch.cuda.device_count() if accel in ("gpu", "cuda") else 1
    else:
        try:
            n = int(devices)
        except (TypeError, ValueError):
            raise ConfigError(f"trainer.devices={devices!r} must be 'auto', an int or a list") from None
    return accel, max(n, 1) * tc.num_nodes


def batch_plan(cfg: TrainConfig, world: int) -> tuple[int, int]:
    """(micro batch per device, accumulation steps) that make up ``trainer.batch_size``."""
    tc = cfg.trainer
    micro = tc.micro_batch_size or max(tc.batch_size // world, 1)
    if tc.batch_size % (micro * world):
        raise ConfigError(
            f"trainer.batch_size={tc.batch_size} is not a multiple of micro_batch_size={micro} "
            f"x {world} devices; pick sizes that divide evenly"
        )
    return micro, tc.batch_size // (micro * world)


def _precision(cfg: TrainConfig, accel: str) -> str:
    if cfg.trainer.precision != "auto":
        return cfg.trainer.precision
    return "bf16-mixed" if accel in ("gpu", "cuda") else "32-true"


def _curriculum_end(cfg: TrainConfig, method) -> int | None:
    """Optimiser steps in the method's curriculum phase, when it ends within the run."""
    steps = int(getattr(method, "curriculum_steps", 0) or 0)
    return steps if 0 < steps < cfg.trainer.max_steps else None


def _count(n: float) -> str:
    """1234567 -> '1.23M'."""
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def _split_summary(name: str, dataset) -> str:
    rows = len(dataset)
    tokens = (dataset.meta.get("stats") or {}).get("kept_tokens", rows * dataset.seq_len)
    return f"{name} {rows:,} rows ({_count(tokens)} tokens)"


def summary_lines(cfg: TrainConfig, module, data, trainer: pl.Trainer, micro: int, accumulate: int,
                  accel: str) -> list[str]:
    """What the run is, in three lines: the model, the data, the optimisation plan."""
    mc = module.backbone.config
    tok = data.tokenizer
    bundle = data.bundle
    world = trainer.world_size
    lines = [
        f"model: {cfg.model_preset} {cfg.algo}, {_count(count_parameters(module.backbone))} parameters "
        f"({mc.n_blocks} layers x {mc.hidden_size} wide, {mc.n_heads} heads, vocab {mc.vocab_size:,})",
        f"data: {cfg.data.corpus}, tokenizer {tok.name} ({tok.vocab_size:,} ids), seq_len {cfg.data.seq_len} "
        f"({cfg.data.packing}): {_split_summary('train', bundle.train)}, "
        f"{_split_summary('validation', bundle.validation)}",
    ]
    plan = (f"training: {cfg.trainer.max_steps:,} steps of batch {cfg.trainer.batch_size} "
            f"({micro} x {world} device{'s' if world > 1 else ''}"
            f"{f' x {accumulate} accumulated' if accumulate > 1 else ''}) on {accel}, "
            f"{trainer.precision}; validation every {cfg.trainer.val_every:,} steps")
    if module.method.process.diffusion:
        passes = validation_passes(validation_rows(len(bundle.validation), cfg.trainer.val_batches, micro, world),
                                   cfg.trainer.val_passes)
        plan += f" ({passes} time{'s' if passes > 1 else ''} drawn per sequence)"
    end = _curriculum_end(cfg, module.method)
    if end is not None:
        plan += f"; curriculum until step {end:,}"
    lines.append(plan)
    lines.append(f"checkpoints: {Path(cfg.run_dir) / 'checkpoints'} (every {cfg.trainer.ckpt_every:,} steps and last.ckpt)")
    return lines


def make_trainer(cfg: TrainConfig, run_dir: Path, accumulate: int, accel: str,
                 extra_callbacks: list | None = None, curriculum_end: int | None = None) -> pl.Trainer:
    tc = cfg.trainer
    loggers = []
    if "csv" in tc.loggers:
        loggers.append(pl.loggers.CSVLogger(run_dir / "logs", name="csv"))
    if "tensorboard" in tc.loggers:
        loggers.append(pl.loggers.TensorBoardLogger(run_dir / "logs", name="tensorboard"))
    if "wandb" in tc.loggers:
        loggers.append(pl.loggers.WandbLogger(save_dir=run_dir, project="duo"))
    # Each launch logs to a new version folder, so a resumed run never overwrites old logs.
    callbacks = [
        ModelCheckpoint(
            dirpath=run_dir / "checkpoints", filename="step_{step}", auto_insert_metric_name=False,
            every_n_train_steps=tc.ckpt_every, save_top_k=-1, save_last=True,
            # One writer per run directory (the lock): last.ckpt is always replaced, never
            # versioned as last-v1.ckpt (e.g. after the run directory was moved).
            enable_version_counter=False,
        ),
        FinalCheckpoint(run_dir / "checkpoints", tc.ckpt_every),
        MetricsHistory(run_dir, tc.log_every, curriculum_end, bound=not get_method_spec(cfg.algo).causal),
        *(extra_callbacks or []),
    ]
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if tc.progress_bar:
        callbacks.append(ProgressBar(refresh_rate=max(1, tc.log_every // 2)))
    return pl.Trainer(
        default_root_dir=run_dir,
        accelerator=accel,
        devices=tc.devices,
        num_nodes=tc.num_nodes,
        strategy=FSDPStrategy() if tc.strategy == "fsdp" else tc.strategy,
        precision=_precision(cfg, accel),
        max_steps=tc.max_steps,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=tc.grad_clip if tc.grad_clip > 0 else None,
        val_check_interval=tc.val_every * accumulate,
        check_val_every_n_epoch=None,
        limit_val_batches=tc.val_batches,
        num_sanity_val_steps=0,
        log_every_n_steps=tc.log_every,
        logger=loggers or False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=tc.progress_bar,
        enable_model_summary=False,
        use_distributed_sampler=False,  # the resumable sampler shards by rank itself
    )


def train(cfg: TrainConfig, callbacks: list | None = None, init_weights: dict | None = None,
          metadata: dict | None = None) -> TrainResult:
    """Train (or resume) the run described by ``cfg``; returns where it went.

    ``callbacks`` are extra Lightning callbacks (e.g. custom logging); ``init_weights``
    a backbone state dict to start from (fine-tuning, distillation); ``metadata`` plain
    data saved in every checkpoint (e.g. a distilled model's sampling defaults).
    """
    run_dir = Path(cfg.run_dir)
    # Cheap checks first: nothing is built or written for a config that cannot run.
    check_seq_len(cfg.data.seq_len, cfg.model.max_seq_len)
    accel, world = resolve_world(cfg)
    micro, accumulate = batch_plan(cfg, world)
    run_dir.mkdir(parents=True, exist_ok=True)
    # One lock per run, held by its first process: the others of a launched run have
    # RANK / LOCAL_RANK set, and the other nodes of a multi-node run NODE_RANK > 0 (a node's
    # first process sees RANK unset until Lightning sets it up, so rank_zero_only alone
    # would let every node take the lock).
    first = rank_zero_only.rank == 0 and int(os.environ.get("NODE_RANK", "0") or 0) == 0
    lock = RunDirLock(run_dir) if first else None
    if lock is not None:
        lock.acquire()
    try:
        return _train_locked(cfg, run_dir, lock, accel, micro, accumulate, callbacks, init_weights, metadata)
    finally:
        if lock is not None:
            lock.release()


def _resume_point(cfg: TrainConfig, run_dir: Path) -> tuple[Path | None, dict | None]:
    """The newest checkpoint of the run that loads and verifies, or (None, None) for a
    fresh start. Damaged newer files are named and skipped; when checkpoints exist but
    none is usable, stop rather than start again from step 0 over them."""
    if not cfg.trainer.resume:
        return None, None
    path, ckpt, skipped = find_resumable(run_dir / "checkpoints")
    if path is None and skipped:
        raise ValueError(f"no usable checkpoint to resume in {str(run_dir / 'checkpoints')!r}: {skipped[0]}; "
                         "move the damaged files away, or add trainer.resume=false to start again from step 0")
    for reason in skipped:
        log.warning("skipping a damaged checkpoint: %s", reason)
    return path, ckpt


def check_resumable(cfg: TrainConfig, module, path: Path, ckpt: dict) -> None:
    """One-line errors when ``ckpt`` cannot continue this run (another algo or model size)."""
    saved = ((ckpt.get("duo") or {}).get("config") or {})
    saved_algo = (saved.get("algo") or {}).get("_name") if isinstance(saved.get("algo"), dict) else saved.get("algo")
    if saved_algo and saved_algo != cfg.algo:
        raise ConfigError(f"run directory {str(cfg.run_dir)!r} holds a {saved_algo} run ({path.name}) but this "
                          f"config trains {cfg.algo}; pick another run_dir= or keep algo={saved_algo}")
    ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    bad = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    if bad:
        k = bad[0]
        raise ConfigError(f"checkpoint {str(path)!r} holds a model of another size ({k}: {theirs.get(k)} in the "
                          f"checkpoint, {ours.get(k)} in this config); keep the run's model settings "
                          f"(see {str(Path(cfg.run_dir) / 'config.yaml')!r}) or pick another run_dir=")


def _train_locked(cfg: TrainConfig, run_dir: Path, lock, accel: str, micro: int, accumulate: int,
                  callbacks, init_weights, metadata) -> TrainResult:
    if lock is not None:
        log.info("run directory: %s", run_dir)
        if lock.took_over:
            log.warning("took over a stale lock of %s (that process is gone)", lock.took_over)
        for p in remove_stale_temp_files(run_dir):
            log.info("removed %s, left by an interrupted write", p)
    resume_path, resume_ckpt = _resume_point(cfg, run_dir)
    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*Checkpoint directory.*exists and is not empty.*")
    # Validation sums are reduced over ranks by the module itself (exact token counts).
    warnings.filterwarnings("ignore", ".*recommended to use `self.log\\('val/.*sync_dist=True.*")

    data = TextDataModule(cfg, micro)
    data.prepare_data()
    tokenizer = data.tokenizer
    module = DiffusionLM(cfg, tokenizer.vocab_size, tokenizer_files=data.tokenizer_files(),
                         init_weights=init_weights, metadata=metadata)
    data.check_model(module.backbone)
    if resume_ckpt is not None:
        check_resumable(cfg, module, resume_path, resume_ckpt)

    trainer = make_trainer(cfg, run_dir, accumulate, accel, callbacks, _curriculum_end(cfg, module.method))
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt_path = str(resume_path) if resume_path is not None else None
    if resume_ckpt is not None and isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO):
        trainer.strategy.checkpoint_io.preloaded = (resume_path, resume_ckpt)
    resume_step = int(resume_ckpt.get("global_step", 0) or 0) if resume_ckpt is not None else 0
    del resume_ckpt
    if trainer.is_global_zero:
        # Only now, with the checkpoint and config accepted, does the run's config change.
        save_yaml(cfg.to_dict(), run_dir / "config.yaml")
        tokenizer.save(run_dir / "tokenizer")
        for line in summary_lines(cfg, module, data, trainer, micro, accumulate, accel):
            log.info(line)
        if ckpt_path:
            log.info("resuming from %s (step %d)", ckpt_path, resume_step)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)

    val = trainer.validate(module, datamodule=data, verbose=False)  # every rank: it is collective
    nelbo = float(val[0]["val/nelbo"]) if val and "val/nelbo" in val[0] else None
    samples: list[str] = []
    # Sharded weights are gathered collectively: then every rank samples (identically).
    sharded = isinstance(trainer.strategy, FSDPStrategy)
    if cfg.sample.num_samples > 0 and (trainer.is_global_zero or sharded):
        from .sampling import sample_texts

        samples = sample_texts(module, tokenizer, cfg.sample, run_dir if trainer.is_global_zero else None)
    return TrainResult(
        run_dir=run_dir,
        checkpoint=last,
        val_nelbo=nelbo,
        val_ppl=math.exp(min(nelbo, 50.0)) if nelbo is not None else None,
        samples=samples,
        is_global_zero=trainer.is_global_zero,
        val_ppl_bound=not get_method_spec(cfg.algo).causal,
    )

