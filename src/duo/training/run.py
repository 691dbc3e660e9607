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
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar

from ..utils.typed_config import ConfigError, save_yaml
from ..config import TrainConfig
from .callbacks import MetricsHistory
from .checkpoint_io import AtomicCheckpointIO
from .datamodule import TextDataModule
from .module import DiffusionLM
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


def resolve_world(cfg: TrainConfig) -> tuple[str, int]:
    """Accelerator name and number of processes, known before the Trainer exists so the
    gradient-accumulation factor can be derived from the global batch size."""
    tc = cfg.trainer
    accel = tc.accelerator
    if accel == "auto":
        accel = "gpu" if torch.cuda.is_available() else "cpu"
    devices = tc.devices
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


def make_trainer(cfg: TrainConfig, run_dir: Path, accumulate: int, accel: str,
                 extra_callbacks: list | None = None) -> pl.Trainer:
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
        ),
        MetricsHistory(run_dir, tc.log_every),
        *(extra_callbacks or []),
    ]
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if tc.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, tc.log_every // 2)))
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
    run_dir.mkdir(parents=True, exist_ok=True)
    accel, world = resolve_world(cfg)
    micro, accumulate = batch_plan(cfg, world)
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

    trainer = make_trainer(cfg, run_dir, accumulate, accel, callbacks)
    if trainer.is_global_zero:
        save_yaml(cfg.to_dict(), run_dir / "config.yaml")
        tokenizer.save(run_dir / "tokenizer")
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt_path = str(last) if cfg.trainer.resume and last.is_file() else None
    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
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
    )

