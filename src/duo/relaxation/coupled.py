"""Argmax latents without materialising w (MATH.md sections 3 and 6): O(B L) for any K."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..duality import snr_mu
from ..utils.checks import check_gamma, check_ids, check_vocab
from ._common import max_wrong, noise_to_latents


class CoupledPair(NamedTuple):
    """``argmax`` of two Gaussian latents sharing one noise draw; each (B, L) int64."""

    z_t: Tensor
    z_s: Tensor


def sample_zt_gaussian(
    x: Tensor,
    gamma: Tensor | float,
    vocab_size: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``argmax(alpha_tilde e_x + sigma_tilde eps)`` in O(B L) time and memory, (B, L) int64.

    ``argmax w = x`` iff ``mu + eps_x > M`` with ``mu = alpha_tilde / sigma_tilde`` and M
    the largest of K - 1 standard normals, whose token is uniform over the wrong ones.
    Same law as :func:`duo.processes.uniform.sample_zt` with ``alpha = T(gamma)``.
    """
    vocab_size = check_vocab(vocab_size)
    check_ids(x, vocab_size)
    g = check_gamma(gamma, x)
    eps_x = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float64)
    top, token = max_wrong(x, vocab_size, generator)
    return torch.where(snr_mu(g) + eps_x > top, x.long(), token)


def coupled_pair(
    x: Tensor,
    gamma_t: Tensor | float,
    gamma_s: Tensor | float,
    vocab_size: int,
    *,
    generator: torch.Generator | None = None,
) -> CoupledPair:
    """Coupled latents for consistency distillation (MATH.md section 6), O(B L) memory.

    ``z_t = argmax(w_t)``, ``z_s = argmax(w_s)`` with ``w_r = alpha_tilde_r e_x +
    sigma_tilde_r eps`` and one shared eps. Scaling by sigma_tilde > 0 keeps the order
    of the wrong coordinates, so the best wrong token j* and its standard value M are the
    same at both times: ``z_r = x if mu_r + eps_x > M else j*``. ``gamma_s == gamma_t``
    gives identical latents.

    Args:
        x: (B, L) ids; gamma_t, gamma_s: scalar, (B, 1) or (B, L).
    """
    vocab_size = check_vocab(vocab_size)
    check_ids(x, vocab_size)
    g_t = check_gamma(gamma_t, x, "gamma_t")
    g_s = check_gamma(gamma_s, x, "gamma_s")
    eps_x = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float64)
    top, token = max_wrong(x, vocab_size, generator)
    x = x.long()
    z_t = torch.where(snr_mu(g_t) + eps_x > top, x, token)
    z_s = torch.where(snr_mu(g_s) + eps_x > top, x, token)
    return CoupledPair(z_t, z_s)


def coupled_pair_full(
    x: Tensor,
    gamma_t: Tensor | float,
    gamma_s: Tensor | float,
    vocab_size: int,
    *,
    generator: torch.Generator | None = None,
) -> CoupledPair:
    """Reference for :func:`coupled_pair` that materialises eps (B, L, K) in float64."""
    vocab_size = check_vocab(vocab_size)
    check_ids(x, vocab_size)
    g_t = check_gamma(gamma_t, x, "gamma_t")
    g_s = check_gamma(gamma_s, x, "gamma_s")
    eps = torch.randn((*x.shape, vocab_size), generator=generator, device=x.device, dtype=torch.float64)
    z_t = noise_to_latents(eps.clone(), x, g_t).argmax(dim=-1)
    z_s = noise_to_latents(eps, x, g_s).argmax(dim=-1)
    return CoupledPair(z_t, z_s)
