"""Masked (absorbing-state) diffusion for the MDLM baseline, MATH.md section 8.

``q_t(z_t | x) = alpha_t e_x + (1 - alpha_t) e_mask``. The mask is one id inside the
model's vocabulary (by convention the last one); the denoiser never predicts it and
copies unmasked tokens (SUBS parameterisation, :func:`subs_log_probs`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..utils.checks import as_alpha, check_ids, check_probs


def _check_mask(mask_id: int, vocab_size: int) -> None:
    if not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id={mask_id} must be an id in [0, {vocab_size})")


def prior_sample(
    shape: tuple[int, ...], mask_id: int, *, device: torch.device | str | None = None
) -> Tensor:
    """``z_1``: every position masked. Returns int64 ids of ``shape``."""
    return torch.full(shape, mask_id, dtype=torch.long, device=device)


def sample_zt(
    x: Tensor,
    alpha_t: Tensor | float,
    mask_id: int,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Keep each token with probability ``alpha_t``, else replace it by the mask."""
    alpha = as_alpha(alpha_t, x, "alpha_t")
    u = torch.rand(x.shape, generator=generator, device=x.device)
    return torch.where(u < alpha, x, torch.full_like(x, mask_id))


def subs_log_probs(logits: Tensor, z_t: Tensor, mask_id: int) -> Tensor:
    """SUBS parameterisation: log-probabilities (B, L, K) that never put mass on the mask
    and are the one-hot of ``z_t`` wherever ``z_t`` is not masked."""
    logits = logits.float().clone()
    logits[..., mask_id] = float("-inf")
    log_probs = logits.log_softmax(-1)
    unmasked = z_t != mask_id
    copy = torch.full_like(log_probs, float("-inf")).scatter(-1, z_t[..., None], 0.0)
    return torch.where(unmasked[..., None], copy, log_probs)


def posterior(
    x_probs: Tensor,
    z_t: Tensor,
    alpha_s: Tensor | float,
    alpha_t: Tensor | float,
    mask_id: int,
    *,
    validate: bool = True,
) -> Tensor:
    """``q(z_s | z_t, x)``: a masked token unmasks to ``j`` with probability
    ``(alpha_s - alpha_t) / (1 - alpha_t) x_j`` and stays masked with
    ``(1 - alpha_s) / (1 - alpha_t)``; an unmasked token never changes.

    Args:
        x_probs: (B, L, K) probabilities with zero mass on ``mask_id``.
        z_t: (B, L) ids.
    Returns:
        (B, L, K) probabilities in ``x_probs``'s dtype.
    """
    K = x_probs.shape[-1]
    _check_mask(mask_id, K)
    check_ids(z_t, K, "z_t")
    if validate:
        check_probs(x_probs, "x_probs")
    dtype = x_probs.dtype
    a_s = as_alpha(alpha_s, z_t, "alpha_s").to(dtype).broadcast_to(z_t.shape)[..., None]
    a_t = as_alpha(alpha_t, z_t, "alpha_t").to(dtype).broadcast_to(z_t.shape)[..., None]
    unmask = (a_s - a_t) / (1.0 - a_t)
    probs = unmask * x_probs
    probs[..., mask_id] = ((1.0 - a_s) / (1.0 - a_t)).squeeze(-1)
    keep = torch.zeros_like(probs).scatter(-1, z_t[..., None], 1.0)
    return torch.where((z_t == mask_id)[..., None], probs, keep)
