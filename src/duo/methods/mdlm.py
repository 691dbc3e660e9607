"""MDLM: masked diffusion with the SUBS parameterisation (MATH.md section 8)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..losses import mdlm_nelbo, token_loss
from ..processes import ABSORBING, absorbing
from ..schedules import sigma_from_alpha
from .base import LossOutput, MaskedMethod, attention_mask, reduce_tokens
from .config import MdlmConfig


class MdlmMethod(MaskedMethod):
    """Masked diffusion LM; the mask is the last id of the model's vocabulary."""

    cfg: MdlmConfig

    name = "mdlm"
    process = ABSORBING

    def log_probs(self, z: Tensor, alpha_t: Tensor) -> Tensor:
        sigma = sigma_from_alpha(alpha_t.float())
        if not self.cfg.time_conditioning:
            sigma = torch.zeros_like(sigma)
        logits = self.backbone(z, sigma)
        return absorbing.subs_log_probs(logits, z, self.mask_id)

    def denoiser(self, z: Tensor, alpha_t: Tensor) -> Tensor:
        return self.log_probs(z, alpha_t.reshape(-1))

    def training_loss(
        self, batch: dict[str, Tensor], t: Tensor, *, step: int = 0, generator=None
    ) -> LossOutput:
        x = batch["input_ids"]
        alpha = self.schedule.alpha(t)[:, None]
        dalpha = self.schedule.dalpha(t)[:, None]
        z_t = absorbing.sample_zt(x, alpha, self.mask_id, generator=generator)
        sigma = sigma_from_alpha(alpha[:, 0].float())
        sigma = sigma if self.cfg.time_conditioning else torch.zeros_like(sigma)
        per_token = token_loss(self._nelbo_from_logits, self.backbone, z_t, sigma, z_t, x,
                               alpha.expand(x.shape), dalpha.expand(x.shape),
                               max_elements=self.loss_chunk_elements)
        return reduce_tokens(per_token, attention_mask(batch))

    def _nelbo_from_logits(self, logits, z_t, x, alpha, dalpha) -> Tensor:
        log_p = absorbing.subs_log_probs(logits, z_t, self.mask_id)
        return mdlm_nelbo(log_p, z_t, x, alpha, dalpha, self.mask_id)

    def eval_loss(self, batch: dict[str, Tensor], t: Tensor, *, generator=None) -> LossOutput:
        return self.training_loss(batch, t, generator=generator)
