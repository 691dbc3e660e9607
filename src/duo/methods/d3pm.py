"""D3PM with the masked (absorbing) transition in discrete time (Austin et al. 2021).

``T`` steps at ``t_i = i/T`` of the run's schedule; training draws ``i`` uniformly from
``{1..T}`` (from the antithetic ``t`` in ``[eps, 1]``, so the batch stays stratified) and
minimises ``T`` times that step's KL (:func:`duo.losses.d3pm_elbo`), an unbiased estimate
of the discrete-time ELBO, whose first step (``a_s = 1``) is the reconstruction term. The
denoiser never puts mass on the mask and copies unmasked tokens (the official
``subs_masking=True``), conditioned on ``sigma = -log alpha_t``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..losses import d3pm_elbo, token_loss
from ..processes import absorbing
from ..processes.kinds import ABSORBING_DISCRETE
from ..schedules import sigma_from_alpha
from .base import LossOutput, MaskedMethod, attention_mask, reduce_tokens
from .config import D3pmConfig


def grid_steps(t: Tensor, T: int, eps: float) -> Tensor:
    """Step indices (B,) in ``{1..T}`` from times in ``[eps, 1]``, uniform when t is."""
    u = ((t.double() - eps) / (1.0 - eps)).clamp(0.0, 1.0)
    return (torch.floor(u * T).long() + 1).clamp(1, T)


class D3pmMethod(MaskedMethod):
    """Discrete-time masked diffusion; the mask is the last id of the model's vocabulary."""

    cfg: D3pmConfig

    name = "d3pm"
    process = ABSORBING_DISCRETE
    bound_includes_reconstruction = True  # step 1 of the T is the reconstruction term

    def sampler_options(self, sampler: str) -> dict:
        return {"T": self.cfg.T} if sampler == "d3pm" else {}

    def denoiser(self, z: Tensor, alpha_t: Tensor) -> Tensor:
        """Sampler contract: ids (B, L) and alpha (B,) -> SUBS log-probs (B, L, K)."""
        logits = self.backbone(z, sigma_from_alpha(alpha_t.reshape(-1).float()))
        return absorbing.subs_log_probs(logits, z, self.mask_id)

    def _loss(self, batch: dict[str, Tensor], t: Tensor, generator, hybrid: float) -> LossOutput:
        x = batch["input_ids"]
        T = self.cfg.T
        i = grid_steps(t, T, self.cfg.eps).to(x.device)
        t_i, s_i = (i.double() / T), ((i - 1).double() / T)
        alpha_t = self.schedule.alpha(t_i)[:, None]
        alpha_s = self.schedule.alpha(s_i)[:, None]
        z_t = absorbing.sample_zt(x, alpha_t.float(), self.mask_id, generator=generator)
        sigma = sigma_from_alpha(alpha_t[:, 0].float())

        def fn(logits, z, xx, a_s, a_t):
            log_p = absorbing.subs_log_probs(logits, z, self.mask_id)
            out = d3pm_elbo(log_p, z, xx, a_s, a_t, self.mask_id, T)
            if hybrid > 0:
                ce = -log_p.gather(-1, xx[..., None]).squeeze(-1)
                out = out + hybrid * torch.where(z == self.mask_id, ce, torch.zeros_like(ce))
            return out

        per_token = token_loss(fn, self.backbone, z_t, sigma, z_t, x, alpha_s.expand(x.shape),
                               alpha_t.expand(x.shape), max_elements=self.loss_chunk_elements)
        return reduce_tokens(per_token, attention_mask(batch))

    def training_loss(
        self, batch: dict[str, Tensor], t: Tensor, *, step: int = 0, generator=None
    ) -> LossOutput:
        return self._loss(batch, t, generator, self.cfg.hybrid_lambda)

    def eval_loss(self, batch: dict[str, Tensor], t: Tensor, *, generator=None) -> LossOutput:
        """The discrete-time ELBO alone (no hybrid term): a bound comparable with the others."""
        return self._loss(batch, t, generator, 0.0)
