"""Uniform-state discrete diffusion (USDM), MATH.md section 1.

Forward marginal ``q_t(z_t | x) = Cat(alpha_t e_x + (1 - alpha_t) / K)``; the prior at
t = 1 is uniform. The posterior ``q(z_s | z_t, x)`` also serves as the reverse model
with ``x`` replaced by the denoiser's probabilities (mean parameterisation).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..utils.checks import as_alpha, check_ids, check_probs


def prior_sample(
    shape: tuple[int, ...],
    vocab_size: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw ``z_1`` from the uniform prior. Returns int64 ids of ``shape``."""
    if vocab_size < 2:
        raise ValueError(f"vocab_size={vocab_size} must be >= 2")
    return torch.randint(0, vocab_size, shape, generator=generator, device=device)


def marginal(x_probs: Tensor, alpha_t: Tensor | float) -> Tensor:
    """``alpha_t x + (1 - alpha_t) / K``. ``x_probs`` (B, L, K), alpha (B, 1) or (B, L)."""
    alpha = as_alpha(alpha_t, x_probs, "alpha_t").to(x_probs.dtype)
    if alpha.dim() > 0:
        alpha = alpha[..., None]
    return alpha * x_probs + (1.0 - alpha) / x_probs.shape[-1]


def sample_zt(
    x: Tensor,
    alpha_t: Tensor | float,
    vocab_size: int,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sample ``z_t ~ q_t(. | x)`` for ids ``x`` (B, L): with probability ``1 - alpha_t``
    replace a token by a uniform draw over all K tokens (which may equal x)."""
    check_ids(x, vocab_size, "x")
    alpha = as_alpha(alpha_t, x, "alpha_t")
    u = torch.rand(x.shape, generator=generator, device=x.device)
    noise = torch.randint(0, vocab_size, x.shape, generator=generator, device=x.device)
    return torch.where(u < alpha, x, noise)


def posterior(
    x_probs: Tensor,
    z_t: Tensor,
    alpha_s: Tensor | float,
    alpha_t: Tensor | float,
    *,
    validate: bool = True,
) -> Tensor:
    """``q(z_s | z_t, x)`` for ``s < t`` with ``x`` a probability vector (MATH.md section 1).

    numerator = K a_t (z_t * x) + (a_ts - a_t) z_t + (a_s - a_t) x + (1 - a_ts)(1 - a_s)/K
    denominator = K a_t <z_t, x> + 1 - a_t,   a_ts = a_t / a_s.

    Args:
        x_probs: (B, L, K) probabilities (the clean token's one-hot, or the denoiser's output).
        z_t: (B, L) int64 ids of the current state.
        alpha_s, alpha_t: scalars, (B, 1) or (B, L); ``alpha_s >= alpha_t``.
        validate: check that ``x_probs`` sums to one (skip in hot loops).
    Returns:
        (B, L, K) probabilities in ``x_probs``'s dtype (use float64 when sampling with
        many steps: float32 rounding visibly degrades samples).
    """
    K = x_probs.shape[-1]
    check_ids(z_t, K, "z_t")
    if x_probs.shape[:2] != z_t.shape:
        raise ValueError(
            f"x_probs has shape {tuple(x_probs.shape)} but z_t has {tuple(z_t.shape)}; "
            "expected (B, L, K) and (B, L)"
        )
    if validate:
        check_probs(x_probs, "x_probs")
    dtype = x_probs.dtype
    a_s = as_alpha(alpha_s, z_t, "alpha_s").to(dtype).broadcast_to(z_t.shape)
    a_t = as_alpha(alpha_t, z_t, "alpha_t").to(dtype).broadcast_to(z_t.shape)
    a_ts = a_t / a_s
    x_at_z = x_probs.gather(-1, z_t[..., None]).squeeze(-1)  # (B, L)
    const = (1.0 - a_ts) * (1.0 - a_s) / K
    out = (a_s - a_t)[..., None] * x_probs + const[..., None]
    at_z = K * a_t * x_at_z + (a_ts - a_t)
    out = out.scatter_add(-1, z_t[..., None], at_z[..., None])
    denom = K * a_t * x_at_z + 1.0 - a_t
    return out / denom[..., None]


def prior_kl(alpha_1: Tensor | float, vocab_size: int) -> Tensor:
    """``KL(q_1(. | x) || uniform)`` per token (the same for every x). Returns a tensor."""
    a = torch.as_tensor(alpha_1, dtype=torch.float64)
    K = float(vocab_size)
    p_hit = a + (1 - a) / K
    p_miss = (1 - a) / K
    return p_hit * torch.log(p_hit * K) + (K - 1) * torch.where(
        p_miss > 0, p_miss * torch.log(p_miss * K), torch.zeros_like(p_miss)
    )
