"""Duo: uniform-state diffusion, with the Gaussian-relaxation curriculum (MATH.md 2, 4, 5)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .. import relaxation
from ..duality import DualitySchedule, PolynomialSchedule, diffusion_transform
from ..losses import token_loss, usdm_nelbo_from_logits
from ..processes import UNIFORM, uniform
from ..schedules import Schedule, get_schedule, sigma_from_alpha
from .base import LossOutput, attention_mask, reduce_tokens
from .config import DuoConfig


def tau_at(step: int, cfg: DuoConfig) -> float:
    """Relaxation temperature at an optimiser step: constant, or log10-linear between
    ``tau_anneal_start`` and ``tau_anneal_end``."""
    if cfg.tau_end is None or cfg.tau_anneal_end is None:
        return cfg.tau
    span = max(cfg.tau_anneal_end - cfg.tau_anneal_start, 1)
    frac = min(max((step - cfg.tau_anneal_start) / span, 0.0), 1.0)
    log_tau = (1 - frac) * math.log10(cfg.tau) + frac * math.log10(cfg.tau_end)
    return 10.0**log_tau


def curriculum_length(cfg: DuoConfig, max_steps: int) -> int:
    """Optimiser steps spent in the curriculum phase."""
    if cfg.curriculum == "none":
        return 0
    if cfg.curriculum_steps is not None:
        return cfg.curriculum_steps
    fraction = 0.5 if cfg.curriculum_fraction is None else cfg.curriculum_fraction
    return int(round(fraction * max_steps))


class DuoMethod:
    """Uniform-state diffusion LM: process + schedule + NELBO + backbone."""

    name = "duo"
    process = UNIFORM

    def __init__(self, cfg: DuoConfig, backbone: nn.Module, vocab_size: int, max_steps: int = 0,
                 loss_chunk_elements: int | None = None):
        # logits elements per loss chunk (None: chosen by device, see duo.losses.token_loss)
        self.loss_chunk_elements = loss_chunk_elements
        self.cfg = cfg.validate()
        self.backbone = backbone
        self.vocab_size = vocab_size
        self.schedule: Schedule = get_schedule(cfg.schedule, eps=cfg.eps)
        self.curriculum_steps = curriculum_length(cfg, max_steps)
        self._gaussian: DualitySchedule | None = None
        self._fit: PolynomialSchedule | None = None

    @staticmethod
    def model_vocab_size(tokenizer_vocab_size: int) -> int:
        return tokenizer_vocab_size

    @property
    def gaussian_schedule(self) -> DualitySchedule:
        """The curriculum's gamma path, derived from K and the target alpha interval."""
        if self._gaussian is None:
            c = self.cfg
            if c.gamma_min is not None:
                self._gaussian = DualitySchedule(self.vocab_size, c.gamma_min, c.gamma_max)
            else:
                self._gaussian = DualitySchedule.from_alpha_interval(
                    self.vocab_size, c.alpha_min, c.alpha_max
                )
        return self._gaussian

    @property
    def alpha_fit(self) -> "PolynomialSchedule | None":
        """Optional polynomial fit of alpha(t) over the curriculum range (Chapter II)."""
        if self.cfg.poly_fit_degree is None:
            return None
        if self._fit is None:
            self._fit = PolynomialSchedule.fit(self.gaussian_schedule, self.cfg.poly_fit_degree)
        return self._fit

    def phase(self, step: int) -> str:
        return "curriculum" if step < self.curriculum_steps else "discrete"

    # ------------------------------------------------------------------ losses
    def log_probs(self, model_input, alpha_t: Tensor) -> Tensor:
        """Denoiser log-probabilities (B, L, K) in float32, conditioned on -log alpha_t."""
        logits = self.backbone(model_input, sigma_from_alpha(alpha_t.float()))
        return logits.float().log_softmax(-1)

    def nelbo(self, model_input, z_t: Tensor, x: Tensor, alpha: Tensor, dalpha: Tensor) -> Tensor:
        """Per-token NELBO (B, L) of the denoiser on ``model_input`` (chunked over tokens
        for large vocabularies, see :func:`token_loss`)."""
        sigma = sigma_from_alpha(alpha[:, 0].float())
        alpha, dalpha = alpha.expand(x.shape), dalpha.expand(x.shape)
        return token_loss(_nelbo_from_logits, self.backbone, model_input, sigma, z_t, x, alpha, dalpha,
                          max_elements=self.loss_chunk_elements, kind="fused-nelbo")

    def denoiser(self, z: Tensor, alpha_t: Tensor) -> Tensor:
        """Sampler contract: ids (B, L) and alpha (B,) -> log-probs (B, L, K)."""
        return self.log_probs(z, alpha_t.reshape(-1))

    def discrete_loss(self, batch: dict[str, Tensor], t: Tensor, generator=None) -> LossOutput:
        x = batch["input_ids"]
        alpha = self.schedule.alpha(t)[:, None]
        dalpha = self.schedule.dalpha(t)[:, None]
        z_t = uniform.sample_zt(x, alpha, self.vocab_size, generator=generator)
        return reduce_tokens(self.nelbo(z_t, z_t, x, alpha, dalpha), attention_mask(batch))

    def curriculum_loss(
        self, batch: dict[str, Tensor], t: Tensor, step: int, generator=None
    ) -> LossOutput:
        """NELBO at ``z_t = argmax w_t`` with the relaxed input, ``alpha = T(gamma)``."""
        x = batch["input_ids"]
        sched = self.gaussian_schedule
        t64 = t.double()
        gamma = sched.gamma(t64)
        if self.alpha_fit is not None:
            alpha64, dalpha64 = self.alpha_fit.alpha(t64), self.alpha_fit.dalpha(t64)
        else:
            alpha64, dalpha_dgamma = diffusion_transform(gamma, sched.vocab_size)
            dalpha64 = dalpha_dgamma * (sched.gamma_max - sched.gamma_min)
        alpha, dalpha = alpha64.float()[:, None], dalpha64.float()[:, None]
        tau = tau_at(step, self.cfg)
        g = gamma.float()[:, None]
        if self.cfg.curriculum == "topk":
            relaxed = relaxation.topk_relaxation(
                x, g, self.vocab_size, tau, self.cfg.curriculum_k, generator=generator
            )
        else:
            relaxed = relaxation.full_relaxation(x, g, self.vocab_size, tau, generator=generator)
        per_token = self.nelbo(relaxed.model_input, relaxed.z_t, x, alpha, dalpha)
        out = reduce_tokens(per_token, attention_mask(batch))
        out.metrics["tau"] = tau
        return out

    def training_loss(
        self, batch: dict[str, Tensor], t: Tensor, *, step: int = 0, generator=None
    ) -> LossOutput:
        if self.phase(step) == "curriculum":
            return self.curriculum_loss(batch, t, step, generator)
        return self.discrete_loss(batch, t, generator)

    def eval_loss(self, batch: dict[str, Tensor], t: Tensor, *, generator=None) -> LossOutput:
        """Validation NELBO per token: the diffusion term plus the prior KL at t = 1."""
        out = self.discrete_loss(batch, t, generator)
        prior = uniform.prior_kl(self.schedule.alpha(torch.tensor(1.0)), self.vocab_size)
        prior_sum = prior.to(out.nelbo_sum) * out.num_tokens
        out.nelbo_sum = out.nelbo_sum + prior_sum
        out.metrics["prior_kl_per_token"] = float(prior)
        return out



def _nelbo_from_logits(logits: Tensor, z_t: Tensor, x: Tensor, alpha: Tensor, dalpha: Tensor,
                       vocab_size: int | None = None) -> Tensor:
    # The ids come from the method's own noising: no range check (a device sync per chunk).
    return usdm_nelbo_from_logits(logits, z_t, x, alpha, dalpha, check_ids=False,
                                  vocab_size=vocab_size)
