"""The full Gaussian relaxation (MATH.md section 4): materialise w (B, L, K)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..utils.checks import check_gamma, check_ids, check_tau, check_vocab
from ._common import Relaxed, noise_to_latents

# Logit gap that makes softmax an exact one-hot (exp(-1e4) == 0 in fp16/bf16/fp32/fp64)
# while staying finite: -inf would turn ``x - max`` into NaN if a row were all -inf, and
# fp16 cannot hold finfo(float32).min.
ONE_HOT_LOGIT_GAP = 1e4


def gaussian_latents(
    x: Tensor,
    gamma: Tensor | float,
    vocab_size: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``w = alpha_tilde e_x + sigma_tilde eps``, (B, L, K) in ``dtype``.

    Args:
        x: (B, L) clean ids.
        gamma: log-SNR, scalar, (B, 1) or (B, L).
    One (B, L, K) buffer is allocated and updated in place. Low-precision dtypes
    (bf16) coarsen the values enough to create argmax ties at large K; keep float32.
    """
    vocab_size = check_vocab(vocab_size)
    check_ids(x, vocab_size)
    g = check_gamma(gamma, x)
    noise = torch.randn((*x.shape, vocab_size), generator=generator, device=x.device, dtype=dtype)
    return noise_to_latents(noise, x, g)


def full_relaxation(
    x: Tensor,
    gamma: Tensor | float,
    vocab_size: int,
    tau: float,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Relaxed:
    """The Gaussian relaxation of MATH.md section 4.

    Args:
        x: (B, L) clean ids; gamma: scalar, (B, 1) or (B, L); tau >= 0.
    Returns:
        ``Relaxed(model_input, z_t)``: ``model_input`` (B, L, K) are the logits ``w / tau``
        (``softmax(model_input)`` is the relaxed one-hot); ``z_t = argmax w`` (B, L).
        With ``tau = 0`` the logits are 0 at ``z_t`` and ``-1e4`` elsewhere, so their
        softmax is exactly ``one_hot(z_t)`` in any float dtype.
    Peak memory is a single (B, L, K) buffer (w is divided by tau in place).
    """
    tau = check_tau(tau)
    w = gaussian_latents(x, gamma, vocab_size, generator=generator, dtype=dtype)
    z_t = w.argmax(dim=-1)
    if tau == 0.0:
        w.fill_(-ONE_HOT_LOGIT_GAP).scatter_(-1, z_t[..., None], 0.0)
    else:
        w.div_(tau)
    return Relaxed(w, z_t)


