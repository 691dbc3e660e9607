"""The memory-efficient top-k relaxation (MATH.md section 5): O(B L k), never O(B L K)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ..duality import alpha_tilde, sigma_tilde
from ..utils.checks import check_gamma, check_ids, check_tau, check_vocab
from ._common import Relaxed, random_wrong_tokens, top_normal_order_statistics


class TopkLatents(NamedTuple):
    """The kept coordinates of ``w`` for the top-k curriculum, all (B, L, ...) float64.

    ``indices`` (B, L, k + 1) int64: position 0 is the clean token ``x``, positions
    1..k the wrong tokens with the largest coordinates, in decreasing order of value.
    ``values`` (B, L, k + 1): ``w`` at those tokens.
    ``threshold`` (B, L): the k-th largest wrong coordinate in units of sigma_tilde (a
    standard normal order statistic); the ``K - 1 - k`` unsampled ones lie below it.
    ``sigma`` (B, L): sigma_tilde.
    """

    indices: Tensor
    values: Tensor
    threshold: Tensor
    sigma: Tensor


def _check_k(k: int, vocab_size: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= vocab_size - 1:
        raise ValueError(
            f"k={k!r} must be an integer in [1, vocab_size - 1 = {vocab_size - 1}] "
            "(the number of wrong tokens kept)"
        )
    return k


def topk_latents(
    x: Tensor,
    gamma: Tensor | float,
    vocab_size: int,
    k: int,
    *,
    generator: torch.Generator | None = None,
) -> TopkLatents:
    """Sample the correct coordinate and the k largest wrong coordinates of ``w``.

    Exact in law: the values are the top-k order statistics of K - 1 normals scaled by
    sigma_tilde, their tokens a uniformly random ordered k-subset of the wrong tokens.
    O(B L k) time and memory. Returns :class:`TopkLatents` (float64 values).
    """
    vocab_size = check_vocab(vocab_size)
    k = _check_k(k, vocab_size)
    check_ids(x, vocab_size)
    g = check_gamma(gamma, x)
    a, s = alpha_tilde(g), sigma_tilde(g)
    eps_x = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float64)
    top = top_normal_order_statistics(x.shape, vocab_size - 1, k, generator, x.device)
    wrong = random_wrong_tokens(x, k, vocab_size, generator)
    indices = torch.cat([x[..., None].long(), wrong], dim=-1)
    values = torch.cat([(a + s * eps_x)[..., None], s[..., None] * top], dim=-1)
    return TopkLatents(indices, values, top[..., -1], s.contiguous())


def log_truncated_exp_moment(threshold: Tensor, scale: Tensor) -> Tensor:
    """``log E[exp(s Z) | Z < a]`` for standard normal Z, elementwise, float64.

    ``= s^2/2 + log Phi(a - s) - log Phi(a)``. For ``s`` in the hundreds (tau = 1e-3)
    or thousands (tau = 1e-4) the first two terms are ~1e7 of opposite sign; when
    ``s > a`` they are combined analytically through the scaled complementary error
    function, ``s^2/2 + log Phi(a - s) = a s - a^2/2 + log(erfcx((s - a)/sqrt 2) / 2)``,
    so nothing cancels.

    Args:
        threshold: a (any shape); scale: s >= 0, broadcastable.
    """
    a, s = torch.broadcast_tensors(threshold.double(), torch.as_tensor(scale, dtype=torch.float64))
    y = s - a
    tail = a * s - 0.5 * a.square() + torch.log(torch.special.erfcx(y.clamp_min(0.0) / math.sqrt(2.0)) / 2)
    direct = 0.5 * s.square() + torch.special.log_ndtr(-y.clamp_max(0.0))
    return torch.where(y > 0, tail, direct) - torch.special.log_ndtr(a)


def topk_weights(latents: TopkLatents, tau: float, vocab_size: int) -> Tensor:
    """Tempered-softmax weights over the kept tokens, (B, L, k + 1) float32.

    ``weights_i = exp(w_i / tau) / Z`` with ``Z`` the kept terms plus the expected
    contribution of the ``K - 1 - k`` unsampled wrong coordinates, each ``N(0, sigma^2)``
    conditioned below the k-th largest: ``(K - 1 - k) E[exp(X / tau) | X < c]``. The
    weights therefore sum to less than one: the missing mass belongs to tokens the
    model never sees. ``tau = 0`` gives the one-hot of the largest kept coordinate.
    """
    tau = check_tau(tau)
    values = latents.values
    if tau == 0.0:
        hot = values.argmax(dim=-1, keepdim=True)
        return torch.zeros_like(values, dtype=torch.float32).scatter_(-1, hot, 1.0)
    k = values.shape[-1] - 1
    unsampled = vocab_size - 1 - k
    logits = values / tau
    if unsampled > 0:
        rest = math.log(unsampled) + log_truncated_exp_moment(latents.threshold, latents.sigma / tau)
        log_z = torch.logaddexp(torch.logsumexp(logits, dim=-1), rest)
    else:
        log_z = torch.logsumexp(logits, dim=-1)
    return torch.exp(logits - log_z[..., None]).float()


def topk_relaxation(
    x: Tensor,
    gamma: Tensor | float,
    vocab_size: int,
    tau: float,
    k: int,
    *,
    generator: torch.Generator | None = None,
) -> Relaxed:
    """The memory-efficient relaxation of MATH.md section 5.

    Args:
        x: (B, L) clean ids; gamma: scalar, (B, 1) or (B, L); tau >= 0; 1 <= k <= K - 1.
    Returns:
        ``Relaxed((indices, weights), z_t)``: ``indices`` (B, L, k + 1) int64 (the clean
        token first, then the k wrong tokens with the largest coordinates) and
        ``weights`` (B, L, k + 1) float32 from :func:`topk_weights`. The denoiser embeds
        ``sum_j weights_j E[indices_j]``: the relaxed input ``softmax(w / tau) @ E``
        restricted to the kept tokens, with the unsampled coordinates' part of the
        softmax normaliser replaced by its conditional expectation. Their own share of
        the mass is dropped (K = 50,257, k = 2: on average ~1e-4 at tau = 1e-3, ~1e-2 at
        tau = 1e-2, most of it at tau = 0.1 -- raise k for large tau). ``z_t`` (B, L)
        is the argmax among the kept coordinates, which is ``argmax w``.
    """
    tau = check_tau(tau)
    latents = topk_latents(x, gamma, vocab_size, k, generator=generator)
    best = latents.values.argmax(dim=-1, keepdim=True)
    z_t = latents.indices.gather(-1, best)[..., 0]
    weights = topk_weights(latents, tau, vocab_size)
    return Relaxed((latents.indices, weights), z_t)


