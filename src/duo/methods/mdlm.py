"""MDLM: masked diffusion with the SUBS parameterisation (MATH.md section 8)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..losses import mdlm_nelbo
from ..processes import ABSORBING, absorbing
from ..schedules import sigma_from_alpha
from .base import LossOutput, MaskedMethod
from .config import MdlmConfig


class MdlmMethod(MaskedMethod):
    """Masked diffusion LM; the mask is the last id of the model's vocabulary."""

    cfg: MdlmConfig

    name = "mdlm"
    process = ABSORBING

    def log_probs(self, z: Tensor, alpha_t: Tensor) -> Tensor:
        logits = self.backbone(z, self.conditioning(alpha_t))
        return absorbing.subs_log_probs(logits, z, self.mask_id)

    def denoiser(self, z: Tensor, alpha_t: Tensor) -> Tensor:
        return self.log_probs(z, alpha_t.reshape(-1))

    def conditioning(self, alpha: Tensor) -> Tensor:
        sigma = sigma_from_alpha(alpha.float())
        return sigma if self.cfg.time_conditioning else torch.zeros_like(sigma)

    def training_loss(
        self, batch: dict[str, Tensor], t: Tensor, *, step: int = 0, generator=None
    ) -> LossOutput:
        return self.continuous_loss(batch, t, generator)

    def _nelbo_from_logits(self, logits, z_t, x, alpha, dalpha) -> Tensor:
        log_p = absorbing.subs_log_probs(logits, z_t, self.mask_id)
        return mdlm_nelbo(log_p, z_t, x, alpha, dalpha, self.mask_id)

    integrand = _nelbo_from_logits

    def eval_loss(self, batch: dict[str, Tensor], t: Tensor, *, generator=None) -> LossOutput:
        return self.training_loss(batch, t, generator=generator)
