"""SEDD: score-entropy discrete diffusion with the masked process (Lou et al. 2024).

The DiT's outputs become log score ratios ``log s_y ~ log p_t(z with y) / p_t(z)`` for the
non-mask tokens ``y`` of a masked position (the official parameterisation):

    log s_y = logits_y - log(e^sigma - 1) - log(K - 1),   sigma = -log alpha_t,

and ``log s_z = 0`` at the position's own id. The exact score is ``alpha/(1 - alpha) *
p(x = y | z)``, so ``q_y = exp(logits_y)/(K - 1)`` plays the part of an unnormalised
denoiser (uniform at initialisation, where the output layer is zero). Trained with the
denoising score entropy (:func:`duo.losses.sedd_dse`), an ELBO: on masked positions it
equals ``-alpha'/(1 - alpha) * (-log q_x + sum_y q_y - 1)``, MDLM's integrand plus a
non-negative penalty on the normaliser, so its perplexity bound compares with MDLM's.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..losses import sedd_dse
from ..processes import absorbing
from ..processes.kinds import ABSORBING_SCORE
from ..schedules import sigma_from_alpha
from .base import LossOutput, MaskedMethod
from .config import SeddConfig


def score_log_ratios(logits: Tensor, z: Tensor, alpha_t: Tensor, mask_id: int,
                     log_states: float | None = None) -> Tensor:
    """Log score ratios (B, L, K) float32: ``logits - log((1 - alpha) / alpha) - log_states``
    with 0 at ``z``. ``log_states`` defaults to ``log(K - 1)`` (SEDD's score network); a
    masked denoiser's log-probabilities take 0 (its ratios are ``x_theta alpha / (1 - alpha)``).

    ``alpha_t`` broadcasts to ``z`` (B, L) (shape (B, 1), (B, L) or (B,) -> (B, 1)).
    """
    K = logits.shape[-1]
    a = alpha_t.double()
    if a.dim() == 1:
        a = a[:, None]
    log_expm1_sigma = torch.log1p(-a) - torch.log(a)  # log((1 - alpha) / alpha) = log(e^sigma - 1)
    offset = (log_expm1_sigma + (math.log(K - 1) if log_states is None else log_states)).float()
    out = logits.float() - offset.broadcast_to(z.shape)[..., None]
    return out.scatter_(-1, z[..., None], 0.0)  # a fresh tensor: in place


class SeddMethod(MaskedMethod):
    """SEDD on the masked process; the mask is the last id of the model's vocabulary."""

    cfg: SeddConfig

    name = "sedd"
    process = ABSORBING_SCORE

    def _logits(self, z: Tensor, alpha_t: Tensor) -> Tensor:
        return self.backbone(z, sigma_from_alpha(alpha_t.reshape(-1).float())).float()

    def score(self, z: Tensor, alpha_t: Tensor) -> Tensor:
        """Score contract: ids (B, L) and alpha (B,) -> log score ratios (B, L, K)."""
        return score_log_ratios(self._logits(z, alpha_t), z, alpha_t.reshape(-1), self.mask_id)

    def denoiser(self, z: Tensor, alpha_t: Tensor) -> Tensor:
        """The normalised score as a SUBS denoiser (B, L, K): ``softmax`` of the non-mask
        logits on masked positions, a copy elsewhere (the reconstruction term uses it)."""
        return absorbing.subs_log_probs(self._logits(z, alpha_t), z, self.mask_id)

    def _dse_from_logits(self, logits: Tensor, z_t: Tensor, x: Tensor, alpha: Tensor, dalpha: Tensor) -> Tensor:
        return sedd_dse(score_log_ratios(logits, z_t, alpha, self.mask_id), z_t, x, alpha, dalpha, self.mask_id)

    integrand = _dse_from_logits

    def training_loss(
        self, batch: dict[str, Tensor], t: Tensor, *, step: int = 0, generator=None
    ) -> LossOutput:
        return self.continuous_loss(batch, t, generator)

    def eval_loss(self, batch: dict[str, Tensor], t: Tensor, *, generator=None) -> LossOutput:
        # As MDLM: no prior term (alpha_1 = eps > 0 against the all-mask prior).
        return self.training_loss(batch, t, generator=generator)
