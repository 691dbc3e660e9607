"""``distill(...)``: Discrete Consistency Distillation of a trained Duo checkpoint.

The teacher lives in :class:`TeacherRefresh`, a callback that copies the student into it
at every round boundary and stores ``(round, teacher weights)`` in each checkpoint, so a
run resumed mid-round has the same teacher and step size ``delta``.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch

from ..checkpoints import load_checkpoint
from ..evaluation.report import run_dir_of
from ..utils.typed_config import ConfigError
from ..config import build_config, replace_section
from ..methods import round_and_delta
from ..models import build_model
from .run import TrainResult, train
from .sharding import copy_gathered


class TeacherRefresh(pl.Callback):
    def __init__(self) -> None:
        self.teacher_round: int | None = None
        self.teacher: torch.nn.Module | None = None
        self._pending: dict | None = None
        self.refreshes: list[int] = []  # optimiser steps at which the teacher changed

    def _attach(self, pl_module) -> None:
        if self.teacher is None:
            # A fresh, whole model: the student may be sharded (FSDP) or compiled.
            self.teacher = build_model(pl_module.backbone.config).requires_grad_(False).eval()
            copy_gathered(self.teacher, pl_module.backbone)
            if self._pending is not None:
                self.teacher.load_state_dict(self._pending)
                self._pending = None
        self.teacher.to(pl_module.device)
        pl_module.method.teacher = self.teacher

    def on_fit_start(self, trainer, pl_module) -> None:
        self._attach(pl_module)
        if self.teacher_round is None:
            self.teacher_round = round_and_delta(trainer.global_step, pl_module.method.dcfg)[0]

    @torch.no_grad()
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        n = round_and_delta(step, pl_module.method.dcfg)[0]
        if n == self.teacher_round:
            return
        # A new round: the teacher becomes the student's current (or EMA) weights.
        use_ema = pl_module.method.dcfg.teacher == "ema" and pl_module.ema is not None
        if use_ema:
            with pl_module.ema.swapped_in(pl_module.backbone):
                copy_gathered(self.teacher, pl_module.backbone)
        else:
            copy_gathered(self.teacher, pl_module.backbone)
        self.teacher_round = n
        self.refreshes.append(step)

    def state_dict(self) -> dict:
        return {"round": self.teacher_round,
                "teacher": {k: v.detach().cpu() for k, v in self.teacher.state_dict().items()}
                if self.teacher is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.teacher_round = state["round"]
        if state.get("teacher") is not None:
            if self.teacher is not None:
                self.teacher.load_state_dict(state["teacher"])
            else:
                self._pending = state["teacher"]


def distill_config(checkpoint: str | Path, overrides: list[str]):
    """The student's run config and the loaded teacher: the teacher's model and data,
    ``algo=distill`` with the ``distill.*`` overrides, and ``trainer.max_steps =
    rounds x steps_per_round`` unless set."""
    loaded = load_checkpoint(checkpoint)
    if loaded.cfg.algo not in ("duo", "distill"):
        raise ValueError(
            f"distillation needs a duo checkpoint, but {str(loaded.path)!r} is {loaded.cfg.algo!r}; "
            "train one with algo=duo"
        )
    rewritten = [("algo." + o[len("distill."):]) if o.startswith("distill.") else o for o in overrides]
    if any(o.startswith("algo=") for o in rewritten):
        raise ConfigError("duo distill sets algo=distill itself; use distill.<field>=value")
    base = loaded.cfg.to_dict()
    base["algo"] = {"_name": "distill", "schedule": base["algo"].get("schedule", "loglinear"),
                    "eps": base["algo"].get("eps", 1e-3)}
    # Next to the run given (not the run_dir recorded inside it): <run>-distilled, unless run_dir=.
    run = run_dir_of(loaded.path)
    base["run_dir"] = str(run.with_name(run.name + "-distilled"))
    cfg = build_config(rewritten, base=base)
    if not any(o.startswith("trainer.max_steps=") for o in rewritten):
        cfg = replace_section(cfg, "trainer", max_steps=cfg.algo_cfg.total_steps)
    return cfg, loaded


class RestoreEMA(pl.Callback):
    """``distill.student_init=raw``: the student's EMA continues the checkpoint's. Set at
    ``setup``, so a resumed run's own EMA (restored after setup) replaces it."""

    def __init__(self, state: dict) -> None:
        self.state = state

    def setup(self, trainer, pl_module, stage: str) -> None:
        if pl_module.ema is not None:
            pl_module.ema.load_state_dict(self.state)


def checkpoint_ema_state(loaded, decay: float) -> dict:
    """The EMA state of a loaded checkpoint in duo's layout: the shadows are the parameters
    of its EMA-loaded backbone (any published layout), ``decay`` / ``num_updates`` those
    the file recorded (``loaded.metadata["ema"]``; ``decay`` and 0 when it records none,
    e.g. a Hugging Face folder)."""
    saved = loaded.metadata.get("ema") or {}
    return {"decay": float(saved.get("decay") or decay), "num_updates": int(saved.get("num_updates") or 0),
            "shadow_params": [p.detach().float().cpu().clone() for p in loaded.backbone.parameters()]}


def distill(checkpoint: str | Path, overrides: list[str] | tuple = (), callbacks: list | None = None) -> TrainResult:
    """Distil ``checkpoint`` (a Duo run or .ckpt) into a few-step student."""
    cfg, loaded = distill_config(checkpoint, list(overrides))
    extra: list = []
    if cfg.algo_cfg.student_init == "raw":
        # The official start: the trained weights, the EMA carried on from the checkpoint.
        raw = load_checkpoint(checkpoint, use_ema=False)
        init = {k: v.detach().clone() for k, v in raw.backbone.state_dict().items()}
        extra.append(RestoreEMA(checkpoint_ema_state(loaded, cfg.trainer.ema)))
    else:
        # The student starts from the weights the teacher run samples with (its EMA).
        init = {k: v.detach().clone() for k, v in loaded.backbone.state_dict().items()}
    return train(cfg, callbacks=[TeacherRefresh(), *extra, *(callbacks or [])], init_weights=init,
                 metadata={"sampler": cfg.algo_cfg.sample_sampler, "steps": cfg.algo_cfg.sample_steps,
                           "distilled_from": str(loaded.path)})
