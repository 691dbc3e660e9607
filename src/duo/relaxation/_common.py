"""Shared pieces of :mod:`duo.relaxation`: the return type, input checks, and exact
samplers for the largest wrong coordinates and their tokens."""

from __future__ import annotations

import math
from typing import NamedTuple, Union

import torch
from torch import Tensor

from ..duality import alpha_tilde, sigma_tilde

ModelInput = Union[Tensor, tuple[Tensor, Tensor]]


class Relaxed(NamedTuple):
    """What the denoiser sees and the discrete latent the loss is evaluated at.

    ``model_input``: logits (B, L, K) for :func:`full_relaxation` (the DiT applies
    softmax over K); ``(indices, weights)``, each (B, L, k + 1), for
    :func:`topk_relaxation` (the DiT takes ``sum_j weights_j E[indices_j]``).
    ``z_t``: (B, L) int64, ``argmax w``.
    """

    model_input: ModelInput
    z_t: Tensor


# ----------------------------------------------------------------------------
# Sampling helpers


def top_normal_order_statistics(
    shape: tuple[int, ...], n: int, k: int, generator: torch.Generator | None, device
) -> Tensor:
    """The k largest of n i.i.d. standard normals, (*shape, k) float64, decreasing.

    Top uniform order statistics by the Renyi recursion in log space,
    ``log U_j = log U_{j-1} + log V_j / (n - j + 1)`` with ``-log V_j ~ Exp(1)``. For
    large n the ``U_j`` sit within ~1/n of 1, so ``ndtri(U)`` would lose every digit to
    rounding; the upper-tail form ``-ndtri(1 - U)`` with ``1 - U = -expm1(log U)`` keeps
    full relative precision (K = 262,144 included). The lower tail (small n) uses
    ``ndtri(exp(log U))`` directly.
    """
    e = torch.empty((*shape, k), dtype=torch.float64, device=device)
    # Exp(1) draws may be exactly 0 (probability 2^-53), which would give U = 1 and +inf.
    e.exponential_(generator=generator).clamp_min_(torch.finfo(torch.float64).tiny)
    remaining = n - torch.arange(k, dtype=torch.float64, device=device)
    log_u = torch.cumsum(-e / remaining, dim=-1)
    upper = -torch.special.ndtri(-torch.expm1(log_u))
    lower = torch.special.ndtri(torch.exp(log_u))
    return torch.where(log_u > -math.log(2.0), upper, lower)


def random_wrong_tokens(
    x: Tensor, k: int, vocab_size: int, generator: torch.Generator | None
) -> Tensor:
    """k distinct tokens != x per position, a uniformly random ordered k-subset. (B, L, k).

    Floyd's algorithm draws a uniform k-subset of [0, K - 1) with k vectorised steps of
    O(B L k) work (no O(K) randperm per token); a random-key shuffle then makes the
    order uniform, since Floyd's insertion order is not. Ids >= x shift up by one to skip x.
    """
    n = vocab_size - 1
    picks = torch.empty((*x.shape, k), dtype=torch.int64, device=x.device)
    for i, j in enumerate(range(n - k, n)):
        t = torch.randint(0, j + 1, x.shape, generator=generator, device=x.device)
        if i:
            taken = (picks[..., :i] == t[..., None]).any(-1)
            t = torch.where(taken, torch.full_like(t, j), t)
        picks[..., i] = t
    if k > 1:
        keys = torch.rand(picks.shape, generator=generator, device=x.device)
        picks = picks.gather(-1, keys.argsort(dim=-1))
    return picks + (picks >= x[..., None].long()).long()


def max_wrong(x: Tensor, vocab_size: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Largest of the K - 1 wrong standard normal coordinates (B, L) float64 and its token."""
    top = top_normal_order_statistics(x.shape, vocab_size - 1, 1, generator, x.device)[..., 0]
    token = random_wrong_tokens(x, 1, vocab_size, generator)[..., 0]
    return top, token


def noise_to_latents(noise: Tensor, x: Tensor, g: Tensor) -> Tensor:
    """In place: ``noise`` (B, L, K) becomes ``alpha_tilde e_x + sigma_tilde noise``."""
    noise.mul_(sigma_tilde(g).to(noise.dtype)[..., None])
    return noise.scatter_add_(-1, x[..., None].long(), alpha_tilde(g).to(noise.dtype)[..., None])
