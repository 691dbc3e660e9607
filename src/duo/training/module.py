"""The LightningModule: a thin shell that feeds batches to a method.

Randomness is a pure function of (seed, optimiser step, rank, micro-batch): the forward
noise and dropout of a step never depend on what ran before, so a resumed run repeats
exactly the steps an uninterrupted one would take.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning.pytorch as pl
import torch

from ..config import TrainConfig
from ..methods import build_method
from ..models import compile_backbone
from ..models.dit import trusted_inputs
from ..models.flops import peak_tflops, training_flops
from ..evaluation.perplexity import stratified_pass_times, validation_passes
from ..schedules import antithetic_times
from ..utils.seeding import derive_seed
from .ema import EMA
from .sharding import FSDPStrategy, shard_backbone

CHECKPOINT_FORMAT = 1


def step_seed(seed: int, step: int, rank: int, micro: int, stream: int = 0) -> int:
    """The seed of one (step, rank, micro-batch, stream) of a run."""
    return derive_seed(seed, step, rank, micro, stream)


def fused_adamw(params: list[torch.nn.Parameter], precision: str) -> bool | None:
    """One kernel for the whole AdamW update on CUDA (else PyTorch's default, foreach),
    except under float16 precision, where Lightning unscales the gradient scaler's
    gradients itself and refuses to clip gradients for fused optimisers."""
    return True if all(p.is_cuda for p in params) and not precision.startswith("16") else None


def validation_rows(dataset_rows: int, val_batches: int, micro: int, world: int) -> int:
    """Sequences one validation reads over all ranks: the set, capped at ``val_batches``
    micro-batches per rank (Lightning's ``limit_val_batches``)."""
    return min(dataset_rows, val_batches * micro * world)


class DiffusionLM(pl.LightningModule):
    def __init__(self, cfg: TrainConfig, tokenizer_vocab_size: int, tokenizer_files: dict | None = None,
                 init_weights: dict | None = None, metadata: dict | None = None):
        super().__init__()
        self.cfg = cfg
        self.tokenizer_vocab_size = tokenizer_vocab_size
        self.tokenizer_files = tokenizer_files or {}
        self.metadata = dict(metadata or {})
        self.backbone, self.method = build_method(cfg, tokenizer_vocab_size)
        if init_weights is not None:
            self.backbone.load_state_dict(init_weights)
        self.ema = EMA(self.backbone, cfg.trainer.ema) if cfg.trainer.ema > 0 else None
        self._val_sum = self._val_count = None
        self._val_passes = 1
        self._last_time: float | None = None

    def configure_model(self) -> None:
        """Shard (``trainer.strategy=fsdp``), then compile; Lightning calls this at every
        ``fit``/``validate``, so it acts once."""
        if getattr(self, "_configured", False):
            return
        self._configured = True
        if self._trainer is not None and isinstance(self.trainer.strategy, FSDPStrategy):
            shard_backbone(self.backbone, self.device_mesh["data_parallel"])
        if self.cfg.trainer.compile:
            compile_backbone(self.backbone)

    # ------------------------------------------------------------- helpers
    @property
    def accumulate(self) -> int:
        return self.trainer.accumulate_grad_batches if self._trainer is not None else 1

    def _times(self, batch_size: int, step: int, micro: int) -> torch.Tensor:
        """Antithetic times stratified over the whole global batch of this step."""
        world = self.trainer.world_size
        total = batch_size * world * self.accumulate
        offset = (self.global_rank * self.accumulate + micro) * batch_size
        u_gen = torch.Generator().manual_seed(step_seed(self.cfg.trainer.seed, step, 0, 0, 1))
        u = torch.rand((), generator=u_gen, dtype=torch.float64)
        return antithetic_times(
            batch_size, eps=getattr(self.cfg.algo_cfg, "eps", 1e-3), offset=offset,
            total=total, u=u, device=self.device,
        )

    def _generator(self, step: int, micro: int, stream: int) -> torch.Generator:
        seed = step_seed(self.cfg.trainer.seed, step, self.global_rank, micro, stream)
        torch.manual_seed(seed)  # dropout
        return torch.Generator(device=self.device).manual_seed(seed)

    # ------------------------------------------------------------- training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        step = self.global_step
        micro = batch_idx % self.accumulate
        x = batch["input_ids"]
        gen = self._generator(step, micro, 2)
        t = self._times(x.shape[0], step, micro)
        # The batches are the tokenizer's ids, checked against the model's vocabulary when the
        # run starts (check_fits_model): no range check, a device sync, per step.
        with trusted_inputs(self.backbone):
            out = self.method.training_loss(batch, t, step=step, generator=gen)
        self.log("train/loss", out.loss.detach(), prog_bar=True)
        self.log("train/phase_curriculum", float(self.method.phase(step) == "curriculum"),
                 prog_bar=self.method.phase(0) == "curriculum")
        for k, v in out.metrics.items():
            self.log(f"train/{k}", v, prog_bar=k in ("tau", "round", "delta"))
        now = time.perf_counter()
        if self._last_time is not None and micro == 0:
            world, seconds = self.trainer.world_size, max(now - self._last_time, 1e-9)
            tokens = x.numel() * world * self.accumulate
            self.log("train/tok_per_s", tokens / seconds, prog_bar=True)
            # Model FLOPs counted strictly (duo.models.flops), per device.
            key = (x.shape[0] * self.accumulate, x.shape[1])
            if getattr(self, "_step_flops", (None,))[0] != key:  # counted once per shape
                self._step_flops = (key, training_flops(self.backbone.config, *key),
                                    peak_tflops(self.device, str(self.trainer.precision)))
            _, flops, peak = self._step_flops
            self.log("train/tflops_per_device", flops / seconds / 1e12)
            if peak is not None:
                self.log("train/mfu", flops / seconds / 1e12 / peak)
        if micro == 0:
            self._last_time = now
        return out.loss

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # Here rather than in on_train_batch_end: callbacks (the checkpoint writer) run
        # before the module's on_train_batch_end, so a checkpoint saved at step N would
        # miss step N's update and a resumed run's EMA would drift from the original.
        if self.ema is not None:
            self.ema.update(self.backbone)

    def on_fit_start(self) -> None:
        if self.ema is not None:
            self.ema.align(self.backbone)  # after the strategy has placed (and sharded) the model

    # ------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._val_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val_count = torch.zeros((), dtype=torch.float64, device=self.device)
        # An autoregressive model's NLL has no time to draw: one pass.
        loader = self.trainer.val_dataloaders
        rows = validation_rows(len(loader.dataset), self.cfg.trainer.val_batches, loader.batch_size,
                               self.trainer.world_size)
        self._val_passes = (validation_passes(rows, self.cfg.trainer.val_passes)
                            if self.method.process.diffusion else 1)
        self._ema_ctx = None
        if self.ema is not None:
            self.ema.align(self.backbone)  # also when validate() runs without fit()
            self._ema_ctx = self.ema.swapped_in(self.backbone)
            self._ema_ctx.__enter__()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        x = batch["input_ids"]
        # Fixed noise per validation batch: curves compare like with like.
        gen = torch.Generator(device=self.device).manual_seed(
            step_seed(self.cfg.trainer.seed, 0, self.global_rank, batch_idx, 3)
        )
        u = torch.rand((), generator=gen, dtype=torch.float64, device=self.device)
        rows, passes = x.shape[0], self._val_passes
        with trusted_inputs(self.backbone):
            for p in range(passes):
                t = stratified_pass_times(rows, p, passes, u, eps=getattr(self.cfg.algo_cfg, "eps", 1e-3),
                                          device=self.device)
                out = self.method.eval_loss(batch, t, generator=gen)
                self._val_sum += out.nelbo_sum.double()
                self._val_count += out.num_tokens.double()

    def on_validation_epoch_end(self) -> None:
        if self._ema_ctx is not None:
            self._ema_ctx.__exit__(None, None, None)
            self._ema_ctx = None
        total = self.trainer.strategy.reduce(self._val_sum, reduce_op="sum")
        count = self.trainer.strategy.reduce(self._val_count, reduce_op="sum")
        nelbo = float(total / count.clamp_min(1))
        self.log("val/nelbo", nelbo, prog_bar=False, sync_dist=False)
        self.log("val/ppl", math.exp(min(nelbo, 50.0)), prog_bar=True, sync_dist=False)
        self.log("val/passes", float(self._val_passes), prog_bar=False, sync_dist=False)

    # ------------------------------------------------------------- optimisation
    def configure_optimizers(self):
        tc = self.cfg.trainer
        params = list(self.backbone.parameters())
        opt = torch.optim.AdamW(
            params, lr=tc.lr, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay,
            fused=fused_adamw(params, str(self.trainer.precision)),
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tc))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None) -> None:
        # Lightning's mixed-precision plugin refuses to clip for a fused optimizer, which
        # would unscale float16 gradients inside its step. Fused AdamW is only chosen
        # without a gradient scaler (fused_adamw), so its gradients are clipped here.
        if gradient_clip_val and optimizer.defaults.get("fused"):
            grads = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            if gradient_clip_algorithm in (None, "norm"):
                torch.nn.utils.clip_grad_norm_(grads, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_value_(grads, gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()
        checkpoint["duo"] = {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "tokenizer_vocab_size": self.tokenizer_vocab_size,
            "tokenizer_files": self.tokenizer_files,
            "metadata": self.metadata,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None and "ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema"])


def lr_lambda(tc):
    """Linear warm-up, then constant or cosine decay to ``min_lr_ratio``."""

    def f(step: int) -> float:
        if step < tc.warmup_steps:
            return (step + 1) / tc.warmup_steps
        if tc.lr_schedule == "constant":
            return 1.0
        span = max(tc.max_steps - tc.warmup_steps, 1)
        progress = min((step - tc.warmup_steps) / span, 1.0)
        return tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f
