"""Gaussian latents of one-hot tokens: relaxed curriculum inputs and coupled pairs.

MATH.md sections 3-6. Every token ``x`` gets a Gaussian latent
``w = alpha_tilde e_x + sigma_tilde eps`` (``eps ~ N(0, I_K)``, ``gamma = -log SNR``);
``argmax w`` is a uniform-state latent with ``alpha = T(gamma)`` (``duo.duality``).

- :func:`full_relaxation` (Duo, section 4) materialises ``w`` (B, L, K) and gives the
  denoiser the logits ``w / tau``.
- :func:`topk_relaxation` (Duo++, section 5) never builds ``w``: it samples the correct
  coordinate, the ``k`` largest of the ``K - 1`` wrong ones (exact top order statistics)
  and their identities, in O(B L k) time and memory.
- :func:`coupled_pair` / :func:`sample_zt_gaussian` (section 6) need only the correct
  coordinate and the largest wrong one, so they cost O(B L) for any K.

All functions are pure: temperature and gamma come in as arguments, randomness from an
optional ``torch.Generator`` (on ``x``'s device), and outputs live on ``x``'s device.
"""

from ._common import ModelInput, Relaxed
from .coupled import CoupledPair, coupled_pair, coupled_pair_full, sample_zt_gaussian
from .full import ONE_HOT_LOGIT_GAP, full_relaxation, gaussian_latents
from .topk import (
    TopkLatents,
    log_truncated_exp_moment,
    topk_latents,
    topk_relaxation,
    topk_weights,
)

__all__ = [
    "ModelInput",
    "ONE_HOT_LOGIT_GAP",
    "Relaxed",
    "TopkLatents",
    "CoupledPair",
    "gaussian_latents",
    "full_relaxation",
    "topk_latents",
    "topk_weights",
    "topk_relaxation",
    "log_truncated_exp_moment",
    "sample_zt_gaussian",
    "coupled_pair",
    "coupled_pair_full",
]
