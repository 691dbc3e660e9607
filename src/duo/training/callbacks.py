"""Run-directory side effects (metrics as JSONL, PNG plots of the curves) and the console's
progress bar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar


def _scalar(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


class MetricsHistory(pl.Callback):
    """Keeps train/val metrics in memory, appends them to ``metrics.jsonl`` and redraws
    ``plots/training.png`` after every validation (rank 0 only)."""

    def __init__(self, run_dir: str | Path, log_every: int, curriculum_end: int | None = None,
                 bound: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.log_every = log_every
        self.curriculum_end = curriculum_end  # optimiser steps in the curriculum phase, if any
        self.bound = bound  # the validation perplexity is an upper bound (diffusion), not exact (AR)
        self.train: list[dict[str, float]] = []
        self.val: list[dict[str, float]] = []

    def _plot(self) -> None:
        plot_history(self.train, self.val, self.run_dir / "plots" / "training.png", self.curriculum_end, self.bound)

    def _append(self, record: dict[str, Any]) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def on_train_start(self, trainer, pl_module) -> None:
        """Keep the records up to the step training starts from (the resumed checkpoint's)
        and drop later ones, which the resumed run writes again: no step appears twice."""
        if not trainer.is_global_zero:
            return
        path = self.run_dir / "metrics.jsonl"
        start = trainer.global_step
        kept: list[str] = []
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
                if isinstance(rec, dict) and int(rec.get("step", 0)) <= start:
                    kept.append(line)
                    (self.val if rec.get("split") == "val" else self.train).append(rec)
            from ..utils.io import atomic_write_text

            atomic_write_text(path, "".join(f"{line}\n" for line in kept))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.is_global_zero or (batch_idx + 1) % trainer.accumulate_grad_batches:
            return
        step = trainer.global_step
        if step % self.log_every:
            return
        metrics = trainer.callback_metrics
        record = {"step": step, "split": "train"}
        for key, value in metrics.items():
            if key.startswith("train/") and (value := _scalar(value)) is not None:
                record[key.split("/", 1)[1]] = value
        record["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        self.train.append(record)
        self._append(record)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        record = {"step": trainer.global_step, "split": "val"}
        for key in ("val/nelbo", "val/ppl", "val/passes"):
            if key in metrics:
                record[key.split("/", 1)[1]] = _scalar(metrics[key])
        self.val.append(record)
        self._append(record)
        self._plot()

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self._plot()
            if any("round" in r for r in self.train):
                plot_rounds(self.train, self.run_dir / "plots" / "distill_loss.png")


class FinalCheckpoint(pl.Callback):
    """``step_N.ckpt`` and ``last.ckpt`` at ``max_steps`` when it is not a multiple of
    ``ckpt_every``: Lightning's ModelCheckpoint saves only at the multiples, so the last
    steps would be lost and last.ckpt would hold an older model than the one validated
    and sampled. Saved inside the loop, at the hook the periodic checkpoints use, so a run
    extended from it (a larger max_steps) resumes with the same data order."""

    def __init__(self, dirpath: Path, every: int) -> None:
        self.dirpath, self.every = Path(dirpath), every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # global_step reaches max_steps once, at the batch that ends training (the same on
        # every rank); a resumed finished run trains no batch.
        step = trainer.global_step
        if step != trainer.max_steps or step % self.every == 0:
            return
        trainer.save_checkpoint(self.dirpath / f"step_{step}.ckpt")  # every rank: collective
        trainer.save_checkpoint(self.dirpath / "last.ckpt")


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bar with short metric names and without the logger's version
    number: ``loss=2.31, tau=0.001, val_ppl=612`` instead of ``v_num=0, train/loss=...``."""

    RENAME = {"train/phase_curriculum": "curriculum", "train/tok_per_s": "tok/s"}

    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return {self.RENAME.get(k, k.removeprefix("train/").replace("/", "_")): v for k, v in items.items()}


def read_history(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """Train and validation records from a run directory's ``metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    train, val = [], []
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                (val if rec.get("split") == "val" else train).append(rec)
    return train, val


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: plots are files in the run directory
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Write a figure atomically, so a crash never leaves a truncated PNG."""
    from ..utils.io import atomic_path

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    _pyplot().close(fig)


def curriculum_end_of(train: list[dict]) -> int | None:
    """The first logged step after the curriculum phase, from the records'
    ``phase_curriculum`` flags (None when the run had no curriculum or has not left it)."""
    seen = False
    for r in train:
        if "phase_curriculum" not in r:
            continue
        if r["phase_curriculum"] >= 0.5:
            seen = True
        elif seen:
            return int(r["step"])
    return None


def draw_history(train: list[dict], val: list[dict], curriculum_end: int | None = None, bound: bool = True):
    """The figure of :func:`plot_history`: training loss and validation perplexity bound
    against steps. ``curriculum_end`` (optimiser steps in the curriculum phase; None =
    read from the records) is marked by a vertical line on both panels: the curriculum's
    loss is on another scale, so the jump there is a change of phase, not a divergence.
    ``bound=False`` labels the curves as exact likelihoods (autoregressive models)."""
    if curriculum_end is None:
        curriculum_end = curriculum_end_of(train)
    fig, axes = _pyplot().subplots(1, 2, figsize=(10, 3.8))
    if train:
        axes[0].plot([r["step"] for r in train if "loss" in r], [r["loss"] for r in train if "loss" in r], lw=1)
    axes[0].set(xlabel="step", ylabel=f"training loss ({'NELBO' if bound else 'NLL'} / token)", title="training")
    if val:
        axes[1].plot([r["step"] for r in val], [r.get("ppl") for r in val], marker="o")
    axes[1].set(xlabel="step", ylabel="validation perplexity" + (" (upper bound)" if bound else ""),
                title="validation", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
        if curriculum_end:
            ax.axvline(curriculum_end, color="tab:red", ls="--", lw=1, label=f"end of curriculum (step {curriculum_end})")
    if curriculum_end:
        axes[0].legend(fontsize=8, loc="upper right")
    return fig


def plot_history(train: list[dict], val: list[dict], path: Path, curriculum_end: int | None = None,
                 bound: bool = True) -> None:
    """Write :func:`draw_history`'s figure to ``path``."""
    _save(draw_history(train, val, curriculum_end, bound), path)


def plot_rounds(train: list[dict], path: Path) -> None:
    """Distillation loss against steps, one colour per round (with its delta)."""
    fig, ax = _pyplot().subplots(figsize=(6.5, 3.8))
    for n in sorted({int(r["round"]) for r in train if "round" in r}):
        sel = [r for r in train if int(r.get("round", -1)) == n and "loss" in r]
        if sel:
            ax.plot([r["step"] for r in sel], [r["loss"] for r in sel], lw=1,
                    label=f"round {n}, delta = {sel[0].get('delta', float('nan')):.4g}")
    ax.set(xlabel="step", ylabel="distillation KL per token", yscale="log", title="distillation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
