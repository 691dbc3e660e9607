"""Discrete Consistency Distillation (DCD): a Duo student matches a frozen teacher one
step ``delta`` further along the same deterministic Gaussian trajectory (MATH.md 6)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..duality import DualitySchedule, diffusion_transform
from ..losses import distillation_kl_from_logits, token_loss
from ..relaxation import coupled_pair
from ..schedules import sigma_from_alpha
from .base import LossOutput, attention_mask, reduce_tokens
from .config import DistillConfig, DuoConfig
from .duo import DuoMethod


def round_and_delta(step: int, cfg: DistillConfig) -> tuple[int, float]:
    """The distillation round of an optimiser step and its step size ``2^n / T0``."""
    n = min(step // cfg.steps_per_round, cfg.rounds - 1)
    return n, 2.0**n / cfg.T0


def distill_times(t: Tensor, delta: float, cfg: DistillConfig) -> Tensor:
    """The later time ``t`` of each pair (float64, ``(B,)``); the earlier one is ``t - delta``.

    ``t`` is the training's stratified draw on ``[eps, 1]``. ``"ours"`` maps it onto
    ``[delta, 1]``, so ``t`` is uniform there. ``"paper"`` (the official code) shifts it
    and clips, ``min(t + delta, 1)``: uniform on ``[eps + delta, 1)`` plus an atom of mass
    ``delta / (1 - eps)`` at ``t = 1``, the pure-noise end.
    """
    if cfg.time_draw == "paper":
        return (t.double() + delta).clamp(max=1.0)
    u = (t.double() - cfg.eps) / (1.0 - cfg.eps)
    return delta + (1.0 - delta) * u


class DistillMethod(DuoMethod):
    """A Duo model being distilled; samples like any Duo model.

    ``teacher`` (a frozen copy of the backbone) is attached by the training loop, which
    also decides when it is refreshed.
    """

    name = "distill"

    def __init__(self, cfg: DistillConfig, backbone: nn.Module, vocab_size: int, max_steps: int = 0,
                 loss_chunk_elements: int | None = None):
        self.dcfg = cfg.validate()
        super().__init__(DuoConfig(schedule=cfg.schedule, eps=cfg.eps, curriculum="none"), backbone, vocab_size,
                         max_steps, loss_chunk_elements)
        self.path = DualitySchedule(vocab_size, cfg.gamma_min, cfg.gamma_max)
        self.teacher: nn.Module | None = None

    def phase(self, step: int) -> str:
        return f"round {round_and_delta(step, self.dcfg)[0]}"

    def _kl(self, student_logits: Tensor, teacher_h: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
        # The teacher's logits are projected per chunk too: a (B, L, K) teacher tensor
        # would undo the memory saving of the chunked student loss.
        with torch.no_grad():
            teacher_logits = self.teacher.output_layer.project(teacher_h, shift, scale)
        return distillation_kl_from_logits(student_logits, teacher_logits.float().log_softmax(-1),
                                           self.dcfg.loss)

    def training_loss(self, batch: dict[str, Tensor], t: Tensor, *, step: int = 0,
                      generator=None) -> LossOutput:
        if self.teacher is None:
            raise RuntimeError("distillation needs a teacher; the training loop attaches one")
        x = batch["input_ids"]
        n, delta = round_and_delta(step, self.dcfg)
        t_hi = distill_times(t, delta, self.dcfg)
        t_lo = t_hi - delta
        g_t, g_s = self.path.gamma(t_hi), self.path.gamma(t_lo)
        alpha_t = diffusion_transform(g_t, self.vocab_size).alpha.float()
        alpha_s = diffusion_transform(g_s, self.vocab_size).alpha.float()
        pair = coupled_pair(x, g_t.float()[:, None], g_s.float()[:, None], self.vocab_size,
                            generator=generator)
        with torch.no_grad():
            teacher_h, teacher_c = self.teacher.hidden(pair.z_s, sigma_from_alpha(alpha_s))
            shift, scale = self.teacher.output_layer.modulation(teacher_c)
            shape = teacher_h.shape
            shift, scale = shift.expand(shape), scale.expand(shape)
        per_token = token_loss(self._kl, self.backbone, pair.z_t, sigma_from_alpha(alpha_t),
                               teacher_h, shift, scale,
                               max_elements=self.loss_chunk_elements, kind="fused-kl")
        out = reduce_tokens(per_token, attention_mask(batch))
        out.metrics.update({"round": float(n), "delta": delta})
        return out
