"""The duality between Gaussian diffusion and uniform-state discrete diffusion (MATH.md section 3).

A variance-preserving Gaussian diffusion on the one-hot vector ``e_x``,
``w = alpha_tilde e_x + sigma_tilde eps`` indexed by ``gamma = -log SNR``, has
``argmax(w)`` distributed as the uniform-state marginal with

    alpha = T(alpha_tilde) = (K P(mu) - 1) / (K - 1),  mu = exp(-gamma / 2),
    P(mu) = int phi(z - mu) Phi(z)^(K-1) dz.

``T`` and ``dT/dgamma`` are evaluated on the fly by a fixed Gauss-Legendre rule on
panels covering where the integrand lives; no precomputed table is needed.

Why the rule is built this way:
- ``Phi(z)^(K-1)`` is a Gumbel-like step near ``z* = Phi^-1(1 - 1/K)`` of width
  ``~1/z*``; it is computed as ``exp((K-1) log_ndtr(z))`` so it never underflows
  into garbage, and the grid starts where it exceeds ``e^-60`` (nothing below
  matters at 1e-9 absolute error).
- Above ``z_hi`` with ``(K-1) (1 - Phi(z_hi)) < 1e-15`` the step equals one, and the
  remaining Gaussian tail is added in closed form.
- ``phi(z - mu)`` has unit width, so panels of width 0.75 with 16 nodes integrate
  both factors to ~1e-14.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

_PANEL_WIDTH = 0.75
_NODES_PER_PANEL = 16
_Z_FLOOR = -12.0  # phi(z - mu) < 1e-31 below here for every mu > 0
_LOG_STEP_FLOOR = -60.0  # Phi^(K-1) < e^-60 is dropped
_TAIL_TOL = 1e-15
_CHUNK = 4096
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


class DiffusionTransform(NamedTuple):
    """``T(alpha_tilde(gamma))`` and its derivative with respect to gamma (negative)."""

    alpha: Tensor
    dalpha_dgamma: Tensor


class ArgmaxProbability(NamedTuple):
    """``P(mu(gamma))`` and ``dP/dgamma``."""

    prob: Tensor
    dprob_dgamma: Tensor


class GammaRange(NamedTuple):
    """Gamma interval over which T spans ``[alpha_min, alpha_max]`` (gamma_min <-> alpha_max)."""

    gamma_min: float
    gamma_max: float


# ----------------------------------------------------------------------------
# Gaussian parameterisation


def alpha_tilde(gamma: Tensor) -> Tensor:
    """Signal scale ``sqrt(sigmoid(-gamma))``; same shape as gamma."""
    return torch.sigmoid(-gamma).sqrt()


def sigma_tilde(gamma: Tensor) -> Tensor:
    """Noise scale ``sqrt(sigmoid(gamma))``; same shape as gamma."""
    return torch.sigmoid(gamma).sqrt()


def gamma_from_alpha_tilde(alpha_t: Tensor) -> Tensor:
    """Inverse of :func:`alpha_tilde`: ``gamma = log((1 - a^2) / a^2)``."""
    a2 = alpha_t.square()
    return torch.log1p(-a2) - torch.log(a2)


def snr_mu(gamma: Tensor) -> Tensor:
    """``mu = alpha_tilde / sigma_tilde = exp(-gamma / 2)``."""
    return torch.exp(-0.5 * gamma)


# ----------------------------------------------------------------------------
# Validation


def _check_vocab(vocab_size: int) -> int:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
        raise ValueError(f"vocab_size={vocab_size!r} must be an integer >= 2")
    if vocab_size < 2:
        raise ValueError(f"vocab_size={vocab_size} must be >= 2 (a vocabulary needs two tokens)")
    return int(vocab_size)


def _check_gamma(gamma: Tensor | float) -> Tensor:
    gamma = torch.as_tensor(gamma)
    if not gamma.is_floating_point():
        gamma = gamma.double()
    bad = ~torch.isfinite(gamma)
    if bool(bad.any()):
        raise ValueError(
            f"gamma contains non-finite values (first: {gamma[bad].flatten()[0].item()}); "
            "pass finite log-SNR values"
        )
    return gamma


# ----------------------------------------------------------------------------
# Quadrature rule


class _Rule(NamedTuple):
    z: Tensor  # (G,) nodes
    wf: Tensor  # (G,) weights times Phi(z)^(K-1)
    z_hi: float


@lru_cache(maxsize=64)
def _rule(vocab_size: int, device: str) -> _Rule:
    k1 = vocab_size - 1
    # Where the step starts to matter, and where it has reached one.
    probe = torch.linspace(_Z_FLOOR, 12.0, 4801, dtype=torch.float64)
    log_step = k1 * torch.special.log_ndtr(probe)
    z_lo = float(probe[torch.nonzero(log_step > _LOG_STEP_FLOOR)[0, 0]]) - _PANEL_WIDTH
    z_lo = max(z_lo, _Z_FLOOR)
    z_hi = float(-torch.special.ndtri(torch.tensor(_TAIL_TOL / k1, dtype=torch.float64)))
    n_panels = max(1, math.ceil((z_hi - z_lo) / _PANEL_WIDTH))
    edges = np.linspace(z_lo, z_hi, n_panels + 1)
    x, w = np.polynomial.legendre.leggauss(_NODES_PER_PANEL)
    half = 0.5 * (edges[1:] - edges[:-1])[:, None]
    mid = 0.5 * (edges[1:] + edges[:-1])[:, None]
    z = torch.from_numpy((mid + half * x[None, :]).ravel())
    w = torch.from_numpy((half * w[None, :]).ravel())
    wf = w * torch.exp(k1 * torch.special.log_ndtr(z))
    return _Rule(z.to(device), wf.to(device), z_hi)


def _integrals(mu: Tensor, rule: _Rule) -> tuple[Tensor, Tensor]:
    """``P(mu)`` and ``dP/dmu`` for a flat float64 mu. Shapes ``(N,)``."""
    p_out, d_out = [], []
    for m in mu.split(_CHUNK):
        diff = rule.z[None, :] - m[:, None]  # (n, G)
        dens = torch.exp(-0.5 * diff.square() - _LOG_SQRT_2PI) * rule.wf
        tail_gap = rule.z_hi - m
        p_out.append(dens.sum(-1) + torch.special.ndtr(-tail_gap))
        tail_density = torch.exp(-0.5 * tail_gap.square() - _LOG_SQRT_2PI)
        d_out.append((dens * diff).sum(-1) + tail_density)
    return torch.cat(p_out), torch.cat(d_out)


def _linearize(value: Tensor, deriv: Tensor, gamma: Tensor) -> Tensor:
    """Attach ``deriv`` as the gradient of ``value`` with respect to gamma."""
    if not gamma.requires_grad:
        return value
    return value + (gamma - gamma.detach()) * deriv


def _evaluate(gamma: Tensor | float, vocab_size: int) -> tuple[Tensor, Tensor, Tensor]:
    k = _check_vocab(vocab_size)
    gamma = _check_gamma(gamma)
    g64 = gamma.detach().double().reshape(-1)
    rule = _rule(k, str(g64.device))
    mu = snr_mu(g64)
    prob, dprob_dmu = _integrals(mu, rule)
    dprob_dgamma = -0.5 * mu * dprob_dmu
    shape = gamma.shape
    return gamma, prob.reshape(shape), dprob_dgamma.reshape(shape)


def argmax_probability(gamma: Tensor | float, vocab_size: int) -> ArgmaxProbability:
    """``P = Pr[argmax(w) = x]`` for ``w = alpha_tilde e_x + sigma_tilde eps``.

    Args:
        gamma: log-SNR values ``(...)``, any float dtype and device.
        vocab_size: K >= 2.
    Returns:
        ``ArgmaxProbability(prob, dprob_dgamma)``, both shaped like gamma in its dtype
        (computed in float64); ``prob`` is differentiable with respect to gamma.
    """
    gamma, prob, dprob = _evaluate(gamma, vocab_size)
    prob = prob.to(gamma.dtype)
    dprob = dprob.to(gamma.dtype)
    return ArgmaxProbability(_linearize(prob, dprob, gamma), dprob)


def diffusion_transform(gamma: Tensor | float, vocab_size: int) -> DiffusionTransform:
    """The operator ``alpha = T(alpha_tilde(gamma))`` and ``dalpha/dgamma``.

    Args:
        gamma: log-SNR values ``(...)``, any float dtype and device.
        vocab_size: K >= 2 (tested up to 262,144).
    Returns:
        ``DiffusionTransform(alpha, dalpha_dgamma)``, both shaped like gamma in its
        dtype; ``alpha`` is differentiable (autograd gives the analytic derivative).
    """
    gamma, prob, dprob = _evaluate(gamma, vocab_size)
    k = float(vocab_size)
    alpha = ((k * prob - 1.0) / (k - 1.0)).to(gamma.dtype)
    dalpha = (k / (k - 1.0) * dprob).to(gamma.dtype)
    return DiffusionTransform(_linearize(alpha, dalpha, gamma), dalpha)


def gamma_from_alpha(
    alpha: Tensor | float, vocab_size: int, *, iters: int = 60
) -> Tensor:
    """Invert T: the gamma with ``T(alpha_tilde(gamma)) = alpha``, for alpha in (0, 1).

    Bisection on gamma (T is decreasing in gamma) followed by two Newton steps.
    Returns float64 of alpha's shape.
    """
    alpha = torch.as_tensor(alpha, dtype=torch.float64)
    if bool(((alpha <= 0) | (alpha >= 1) | torch.isnan(alpha)).any()):
        raise ValueError(f"alpha={alpha.tolist()} must lie strictly inside (0, 1)")
    lo = torch.full_like(alpha, -40.0)
    hi = torch.full_like(alpha, 40.0)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        above = diffusion_transform(mid, vocab_size).alpha > alpha
        lo = torch.where(above, mid, lo)
        hi = torch.where(above, hi, mid)
    gamma = 0.5 * (lo + hi)
    for _ in range(2):
        value, slope = diffusion_transform(gamma, vocab_size)
        step = torch.where(slope != 0, (value - alpha) / slope, torch.zeros_like(gamma))
        gamma = gamma - step.clamp(-0.1, 0.1)
    return gamma


def gamma_range(
    vocab_size: int, alpha_min: float = 0.05, alpha_max: float = 0.95
) -> GammaRange:
    """Gamma interval over which ``T`` spans ``[alpha_min, alpha_max]`` for K tokens.

    MATH.md section 4: the curriculum draws ``gamma`` uniformly in this range
    (GPT-2's 50,257 tokens give about [-3.55, -1.85]).
    """
    _check_vocab(vocab_size)
    if not 0.0 < alpha_min < alpha_max < 1.0:
        raise ValueError(
            f"alpha interval [{alpha_min}, {alpha_max}] must satisfy 0 < alpha_min < alpha_max < 1"
        )
    g = gamma_from_alpha(torch.tensor([alpha_max, alpha_min], dtype=torch.float64), vocab_size)
    return GammaRange(float(g[0]), float(g[1]))


class DualitySchedule:
    """Discrete schedule induced by a linear gamma path, MATH.md sections 4 and 6.

    ``gamma(t) = gamma_min + t (gamma_max - gamma_min)`` and ``alpha(t) = T(gamma(t))``,
    so ``dalpha/dt = dT/dgamma (gamma_max - gamma_min)``. It satisfies the
    :class:`duo.schedules.Schedule` protocol and serves the curriculum, distillation and
    sampling of distilled models.
    """

    def __init__(self, vocab_size: int, gamma_min: float, gamma_max: float) -> None:
        _check_vocab(vocab_size)
        if not gamma_min < gamma_max:
            raise ValueError(f"gamma range [{gamma_min}, {gamma_max}] must be increasing")
        self.vocab_size = int(vocab_size)
        self.gamma_min = float(gamma_min)
        self.gamma_max = float(gamma_max)

    @classmethod
    def from_alpha_interval(
        cls, vocab_size: int, alpha_min: float = 0.05, alpha_max: float = 0.95
    ) -> "DualitySchedule":
        return cls(vocab_size, *gamma_range(vocab_size, alpha_min, alpha_max))

    def gamma(self, t: Tensor) -> Tensor:
        return self.gamma_min + t * (self.gamma_max - self.gamma_min)

    def t_from_gamma(self, gamma: Tensor) -> Tensor:
        return (gamma - self.gamma_min) / (self.gamma_max - self.gamma_min)

    def alpha(self, t: Tensor) -> Tensor:
        return diffusion_transform(self.gamma(t), self.vocab_size).alpha

    def dalpha(self, t: Tensor) -> Tensor:
        slope = diffusion_transform(self.gamma(t), self.vocab_size).dalpha_dgamma
        return slope * (self.gamma_max - self.gamma_min)

    def t_from_alpha(self, alpha: Tensor) -> Tensor:
        g = gamma_from_alpha(alpha, self.vocab_size)
        return self.t_from_gamma(g).to(torch.as_tensor(alpha).dtype)

    def __repr__(self) -> str:
        return (
            f"DualitySchedule(vocab_size={self.vocab_size}, gamma_min={self.gamma_min:.4f}, "
            f"gamma_max={self.gamma_max:.4f})"
        )


class PolynomialSchedule:
    """A polynomial fit of ``alpha(t)`` (and its exact derivative) on [0, 1].

    Chapter II of the paper replaces T by a degree-9 fit over the curriculum range; with
    the fast exact T this is an option, not a necessity. Coefficients are fitted in
    float64 by least squares on Chebyshev nodes.
    """

    def __init__(self, coefficients: Tensor) -> None:
        self.coefficients = coefficients.double()  # (degree + 1,), lowest order first

    @classmethod
    def fit(cls, schedule, degree: int = 9, nodes: int = 512) -> "PolynomialSchedule":
        k = torch.arange(nodes, dtype=torch.float64)
        t = 0.5 - 0.5 * torch.cos(math.pi * (k + 0.5) / nodes)
        alpha = schedule.alpha(t).double()
        vander = torch.stack([t**p for p in range(degree + 1)], dim=1)
        coef = torch.linalg.lstsq(vander, alpha[:, None]).solution[:, 0]
        return cls(coef)

    def alpha(self, t: Tensor) -> Tensor:
        t64 = t.double()
        out = torch.zeros_like(t64)
        for c in self.coefficients.flip(0):
            out = out * t64 + c
        return out.to(t.dtype)

    def dalpha(self, t: Tensor) -> Tensor:
        t64 = t.double()
        out = torch.zeros_like(t64)
        n = len(self.coefficients) - 1
        for p, c in zip(range(n, 0, -1), self.coefficients.flip(0)[:-1]):
            out = out * t64 + p * c
        return out.to(t.dtype)
