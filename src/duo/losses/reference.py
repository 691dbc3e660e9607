"""Training objectives as pure tensor functions (MATH.md sections 2, 6, 8).

All per-token losses return ``(B, L)``; reduction and masking belong to the caller.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils.checks import as_alpha, check_ids


def _check_pair(log_x_theta: Tensor, z_t: Tensor, x: Tensor) -> int:
    if log_x_theta.dim() != 3:
        raise ValueError(
            f"log_x_theta has shape {tuple(log_x_theta.shape)}; expected (B, L, K) log-probabilities"
        )
    K = log_x_theta.shape[-1]
    for name, ids in (("z_t", z_t), ("x", x)):
        check_ids(ids, K, name)
        if ids.shape != log_x_theta.shape[:2]:
            raise ValueError(
                f"{name} has shape {tuple(ids.shape)} but log_x_theta has "
                f"{tuple(log_x_theta.shape)}; expected (B, L) and (B, L, K)"
            )
    return K


def usdm_nelbo(
    log_x_theta: Tensor,
    z_t: Tensor,
    x: Tensor,
    alpha_t: Tensor | float,
    dalpha_t: Tensor | float,
) -> Tensor:
    """Continuous-time NELBO of uniform-state diffusion per token (MATH.md section 2).

    Closed form: with ``r = K a / (1 - a)``, ``xh = 1 + r e_x`` and
    ``xh_theta = 1 + r x_theta`` (``x-bar`` divided by ``1 - a``, which leaves every
    ratio unchanged), the sum over j has two distinct values of ``xh_j``, so it
    needs gathers at ``i = z_t`` and ``x`` and one reduction ``sum_j log1p(r x_theta_j)``.
    ``log1p`` keeps the small-``K a`` regime (where everything is close to 1) accurate
    in float32.

    Args:
        log_x_theta: (B, L, K) log-probabilities of the denoiser.
        z_t: (B, L) ids of the noisy tokens.
        x: (B, L) ids of the clean tokens.
        alpha_t: (B, 1) or (B, L) in (0, 1).
        dalpha_t: d alpha / dt, same broadcasting, negative.
    Returns:
        (B, L) non-negative loss, in float64 if ``log_x_theta`` is float64, else float32.
    """
    K = _check_pair(log_x_theta, z_t, x)
    dtype = torch.float64 if log_x_theta.dtype == torch.float64 else torch.float32
    a, da, r = usdm_rates(alpha_t, dalpha_t, z_t, K, dtype)
    log_x_theta = log_x_theta.to(dtype)
    lam = torch.log1p(r[..., None] * log_x_theta.exp()).sum(-1)
    # One gather for both indices: its backward is a single scatter over (B, L, K).
    picked = log_x_theta.gather(-1, torch.stack([z_t, x], -1))  # (B, L, 2)
    log_xh_picked = torch.log1p(r[..., None] * picked.exp())
    a_i, c_x = log_xh_picked.unbind(-1)
    return usdm_from_sums(K, a, da, r, (z_t == x).to(dtype), lam, a_i, c_x)


def usdm_rates(alpha_t: Tensor | float, dalpha_t: Tensor | float, z_t: Tensor, K: int,
               dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """``alpha``, ``dalpha`` and ``r = K alpha / (1 - alpha)``, each (B, L) in ``dtype``."""
    a = as_alpha(alpha_t, z_t, "alpha_t").to(dtype).broadcast_to(z_t.shape)
    da = as_alpha(dalpha_t, z_t, "dalpha_t").to(dtype).broadcast_to(z_t.shape)
    b = (1.0 - a).clamp_min(torch.finfo(dtype).tiny)
    return a, da, K * a / b


def usdm_from_sums(K: int, a: Tensor, da: Tensor, r: Tensor, hit: Tensor, lam: Tensor,
                   a_i: Tensor, c_x: Tensor) -> Tensor:
    """The closed form of :func:`usdm_nelbo` from its per-token pieces (all same shape):
    ``hit = 1[z_t = x]``, ``lam = sum_j log1p(r x_theta_j)``, ``a_i = log1p(r x_theta[z_t])``,
    ``c_x = log1p(r x_theta[x])``."""
    b = (1.0 - a).clamp_min(torch.finfo(a.dtype).tiny)
    log1p_r = torch.log1p(r)
    xh_i = 1.0 + r * hit
    xh_theta_i = torch.exp(a_i)
    first = K / b * (1.0 / xh_i - 1.0 / xh_theta_i)
    ratio_sum = (
        (K + r) * (a_i - hit * log1p_r) + (1.0 + r) * log1p_r - lam - r * c_x
    ) / xh_i
    return da / (K * a) * (first - ratio_sum)


def usdm_nelbo_naive(
    log_x_theta: Tensor,
    z_t: Tensor,
    x: Tensor,
    alpha_t: Tensor | float,
    dalpha_t: Tensor | float,
) -> Tensor:
    """The MATH.md section 2 formula term by term, O(B L K^2)-free but unsimplified.

    Reference for tests only: materialises ``x-bar`` and sums over j literally.
    """
    K = _check_pair(log_x_theta, z_t, x)
    a = as_alpha(alpha_t, z_t, "alpha_t").to(log_x_theta.dtype).broadcast_to(z_t.shape)[..., None]
    da = as_alpha(dalpha_t, z_t, "dalpha_t").to(log_x_theta.dtype)
    e_x = F.one_hot(x, K).to(log_x_theta.dtype)
    xbar = K * a * e_x + (1 - a)
    xbar_theta = K * a * log_x_theta.exp() + (1 - a)
    xbar_i = xbar.gather(-1, z_t[..., None])
    xbar_theta_i = xbar_theta.gather(-1, z_t[..., None])
    inner = (xbar / xbar_i) * torch.log(xbar_theta_i * xbar / (xbar_theta * xbar_i))
    bracket = (K / xbar_i - K / xbar_theta_i).squeeze(-1) - inner.sum(-1)
    return da / (K * a.squeeze(-1)) * bracket


def reconstruction_nll(log_x_theta: Tensor, x: Tensor) -> Tensor:
    """``-log x_theta(z_0, t_0)[x]``: the reconstruction term at t ~ 0. Returns (B, L)."""
    check_ids(x, log_x_theta.shape[-1], "x")
    return -log_x_theta.gather(-1, x[..., None]).squeeze(-1)


def uniform_decoder_nll(log_x_theta: Tensor, z: Tensor, x: Tensor, alpha: Tensor) -> Tensor:
    """``-log q(z_0 = x | z_t = z, x_theta)`` for the uniform process: the last reverse step.

    log_x_theta (B, L, K), z and x (B, L) ids, alpha (B,) -> (B, L) in float64 (alpha is
    within 1e-3 of one, where float32 cannot resolve ``1 - alpha``).
    """
    K = log_x_theta.shape[-1]
    a = alpha.double()[:, None]
    log_at_x = log_x_theta.gather(-1, x[..., None]).squeeze(-1).double()
    log_at_z = log_x_theta.gather(-1, z[..., None]).squeeze(-1).double()
    weight = torch.where(x == z, K * a + 1 - a, 1 - a)
    return -(log_at_x + torch.log(weight) - torch.log(K * a * log_at_z.exp() + 1 - a))


def mdlm_nelbo(
    log_x_theta: Tensor,
    z_t: Tensor,
    x: Tensor,
    alpha_t: Tensor | float,
    dalpha_t: Tensor | float,
    mask_id: int,
) -> Tensor:
    """Masked-diffusion NELBO per token: ``alpha' / (1 - alpha) log x_theta[x] 1[z_t = mask]``.

    ``log_x_theta`` should come from the SUBS parameterisation. Returns (B, L) >= 0.
    """
    K = _check_pair(log_x_theta, z_t, x)
    if not 0 <= mask_id < K:
        raise ValueError(f"mask_id={mask_id} must be an id in [0, {K})")
    a = as_alpha(alpha_t, z_t, "alpha_t").float()
    da = as_alpha(dalpha_t, z_t, "dalpha_t").float()
    log_px = log_x_theta.float().gather(-1, x[..., None]).squeeze(-1)
    masked = z_t == mask_id
    weight = da / (1.0 - a).clamp_min(1e-12)
    return torch.where(masked, weight * log_px, torch.zeros_like(log_px))


def ar_nll(logits: Tensor, targets: Tensor) -> Tensor:
    """Next-token cross-entropy per position. ``logits`` (B, L, K), ``targets`` (B, L)."""
    if logits.shape[:2] != targets.shape:
        raise ValueError(
            f"targets have shape {tuple(targets.shape)} but logits have {tuple(logits.shape)}"
        )
    return F.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(), reduction="none"
    ).view_as(targets)


def distillation_kl(
    student_log_probs: Tensor,
    teacher_log_probs: Tensor,
    direction: Literal["reverse", "forward"] = "reverse",
) -> Tensor:
    """KL between student and (stop-gradient) teacher per token, MATH.md section 6.

    ``reverse``: ``KL(student || teacher)`` (the paper's choice); ``forward``:
    ``KL(teacher || student)``. Inputs (B, L, K) log-probabilities; returns (B, L).
    """
    if student_log_probs.shape != teacher_log_probs.shape:
        raise ValueError(
            f"student {tuple(student_log_probs.shape)} and teacher "
            f"{tuple(teacher_log_probs.shape)} log-probabilities differ in shape"
        )
    s = student_log_probs.float()
    t = teacher_log_probs.detach().float()
    if direction == "reverse":
        return kl_terms(s, t).sum(-1)
    if direction == "forward":
        return kl_terms(t, s).sum(-1)
    raise ValueError(f"direction={direction!r}; valid: 'reverse', 'forward'")


def kl_terms(log_p: Tensor, log_q: Tensor, p: Tensor | None = None) -> Tensor:
    """Entries ``p_j (log p_j - log q_j)`` of ``KL(p || q)`` (same shape as the inputs),
    0 where p has no mass (0 log 0 = 0); ``p = exp(log_p)`` if not given."""
    p = log_p.exp() if p is None else p
    return torch.where(p > 0, p * (log_p - log_q), 0.0)


def sedd_dse(
    log_score: Tensor,
    z_t: Tensor,
    x: Tensor,
    alpha_t: Tensor | float,
    dalpha_t: Tensor | float,
    mask_id: int,
) -> Tensor:
    """SEDD's denoising score entropy for the masked process, per token (B, L) >= 0.

    With ``sigma = -log alpha_t`` the masked process moves every token to the mask at
    rate ``sigma'`` (= ``-alpha'/alpha``), so only masked positions contribute, with
    ``r = q_t(x) / q_t(mask) = alpha / (1 - alpha) = 1 / (e^sigma - 1)``:

        sigma' * [ sum_{y != mask} s_y - r log s_x + r (log r - 1) ]

    ``log_score`` (B, L, K): log ratios ``log s_y`` (the mask column is ignored). Its
    expectation over ``t ~ U[0, 1]`` and ``z_t`` bounds ``-log p_theta(x)`` (an ELBO).
    """
    K = _check_pair(log_score, z_t, x)
    if not 0 <= mask_id < K:
        raise ValueError(f"mask_id={mask_id} must be an id in [0, {K})")
    a = as_alpha(alpha_t, z_t, "alpha_t").to(log_score.dtype).broadcast_to(z_t.shape)
    da = as_alpha(dalpha_t, z_t, "dalpha_t").to(log_score.dtype).broadcast_to(z_t.shape)
    dsigma = -da / a
    r = a / (1.0 - a).clamp_min(1e-12)
    keep = torch.ones(K, dtype=torch.bool, device=log_score.device)
    keep[mask_id] = False
    pos = log_score[..., keep].exp().sum(-1)
    neg = r * log_score.gather(-1, x[..., None]).squeeze(-1)
    const = r * (torch.log(r) - 1.0)
    out = dsigma * (pos - neg + const)
    return torch.where(z_t == mask_id, out, torch.zeros_like(out))


def d3pm_elbo(
    log_x_theta: Tensor,
    z_t: Tensor,
    x: Tensor,
    alpha_s: Tensor | float,
    alpha_t: Tensor | float,
    mask_id: int,
    T: int,
) -> Tensor:
    """D3PM's discrete-time ELBO term for the masked process, scaled by ``T``, per token.

    Step ``i`` of ``T`` (``t = i/T``, ``s = (i-1)/T``) contributes
    ``KL(q(z_s | z_t, x) || p_theta(z_s | z_t))``; with a denoiser that puts no mass on the
    mask both distributions keep the mask with ``(1 - a_s)/(1 - a_t)`` and the KL is
    ``(a_s - a_t)/(1 - a_t) * (-log x_theta[x])`` on masked positions (0 elsewhere). With
    ``i`` uniform on ``{1..T}``, ``T * E_i[term]`` is the sum over the T steps (step 1,
    ``a_s = 1``, is the reconstruction term). As ``T`` grows it tends to the continuous
    MDLM NELBO (:func:`mdlm_nelbo`). Returns (B, L) >= 0.
    """
    K = _check_pair(log_x_theta, z_t, x)
    if not 0 <= mask_id < K:
        raise ValueError(f"mask_id={mask_id} must be an id in [0, {K})")
    a_s = as_alpha(alpha_s, z_t, "alpha_s").double()
    a_t = as_alpha(alpha_t, z_t, "alpha_t").double()
    weight = (T * (a_s - a_t) / (1.0 - a_t).clamp_min(1e-12)).float()
    log_px = log_x_theta.float().gather(-1, x[..., None]).squeeze(-1)
    return torch.where(z_t == mask_id, -weight * log_px, torch.zeros_like(log_px))
