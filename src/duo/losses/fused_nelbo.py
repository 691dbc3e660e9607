"""Duo's NELBO straight from logits, with a hand-written backward (MATH.md section 2).

:func:`duo.losses.usdm_nelbo` on ``log_softmax(logits)`` lets autograd keep every
(tokens, K) intermediate of the chain log-softmax -> exp -> r x -> log1p for backward:
at K = 50,257 those tensors, not the transformer, dominate a training step's memory
and traffic. The only (tokens, K) term of the loss is ``lam = sum_j log1p(r p_j)``
with ``p = softmax(logits)``, and its gradient has a closed form:

    d lam / d logits_j = w_j - p_j sum_k w_k,   w_j = r p_j / (1 + r p_j),

so this function keeps only the logits and three numbers per token (forward also
sums ``w``), and backward rebuilds ``p`` and ``w`` in one pass over cache-sized row
chunks. The two gathered terms (at ``z_t`` and ``x``) and the per-token closed form
are small. On CUDA with Triton, the row passes run as kernels
(:mod:`duo.losses.kernels.nelbo_triton`).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .kernels import nelbo_triton
from .kernels.common import compute_dtype, dispatch, loss_input
from .reference import _check_pair, usdm_from_sums, usdm_rates
from ..utils.chunks import row_chunks


def _coefficients(K: int, a: Tensor, da: Tensor, r: Tensor, hit: Tensor,
                  a_i: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Derivatives of :func:`usdm_from_sums` with respect to ``lam``, ``a_i`` and ``c_x``."""
    b = (1.0 - a).clamp_min(torch.finfo(a.dtype).tiny)
    c = da / (K * a)
    xh_i = 1.0 + r * hit
    return c / xh_i, c * (K / (b * torch.exp(a_i)) - (K + r) / xh_i), c * r / xh_i


def _row_stats(logits: Tensor, r: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per row of ``logits`` (N, K): largest logit, mass sum_j exp(s_j - top),
    ``lam = sum_j log1p(r p_j)`` and ``sum_j w_j`` (``w = r p / (1 + r p)``, which
    backward needs), each (N,) in ``r``'s dtype; computed in that dtype over cache-sized
    row chunks (bf16 logits are upcast a chunk at a time)."""
    n, K = logits.shape
    top, mass, lam, sum_w = r.new_empty(4, n)
    parts = row_chunks(n, K, logits.device)
    bufs = r.new_empty(2, parts[0].stop * K if parts else 0)  # one chunk's buffers, reused
    for rows in parts:
        part = logits[rows].to(r.dtype)
        t, u = (b[: part.numel()].view(part.shape) for b in bufs)
        top[rows] = part.amax(-1)
        mass[rows] = torch.sub(part, top[rows, None], out=t).exp_().sum(-1)
        # y = r p with p = t / mass: the exponentials are computed once.
        t.mul_((r[rows] / mass[rows])[:, None])
        sum_w[rows] = torch.div(t, torch.add(t, 1.0, out=u), out=u).sum(-1)
        lam[rows] = t.log1p_().sum(-1)
    return top, mass, lam, sum_w


def _lam_grad(logits: Tensor, top: Tensor, mass: Tensor, r: Tensor, g_lam: Tensor,
              coef: Tensor, z: Tensor, x: Tensor, g_z: Tensor, g_x: Tensor,
              width: int) -> Tensor:
    """(N, width) in the logits' dtype: ``g_lam w - coef e`` with ``e = exp(logits - top)``
    and ``w = r p / (1 + r p)``, plus ``g_z`` at column ``z`` and ``g_x`` at ``x`` of each
    row, in the K columns of ``logits`` (N, K); columns K..width are zeros. Computed in
    ``r``'s dtype a row chunk at a time and rounded once, after the z / x terms."""
    n, K = logits.shape
    out = logits.new_empty(n, width)
    out[:, K:].zero_()
    parts = row_chunks(n, K, logits.device)
    bufs = r.new_empty(3, parts[0].stop * K if parts else 0)  # e, w, 1 + r p of a chunk
    for rows in parts:
        part = logits[rows]
        e, w, den = (b[: part.numel()].view(part.shape) for b in bufs)
        torch.sub(part.to(r.dtype), top[rows, None], out=e).exp_()  # p = e / mass
        torch.mul(e, (r[rows] / mass[rows])[:, None], out=w)
        w.div_(torch.add(w, 1.0, out=den))  # r p / (1 + r p), accurate for small r p
        d = w.mul_(g_lam[rows, None]).addcmul_(e, -coef[rows, None])
        d.scatter_add_(1, z[rows, None], g_z[rows, None]).scatter_add_(1, x[rows, None], g_x[rows, None])
        out[rows, :K].copy_(d)
    return out


class _NelboFromLogits(torch.autograd.Function):
    """Rows of logits (N, W) with ids ``z``, ``x`` (N,) and ``a``, ``da``, ``r`` (N,) in the
    compute dtype (float32 or float64) -> per-token NELBO (N,). Only the first ``K``
    columns are the vocabulary (W > K: the padded output layer's logits); the rest get
    gradient 0. The logits may be bf16 / float16 (autocast's output layer): they are
    read as they are (the kernels and the PyTorch passes upcast as they go) and their
    gradient comes in that dtype, as autocast's cast would give it."""

    @staticmethod
    def forward(ctx, logits: Tensor, z: Tensor, x: Tensor, a: Tensor, da: Tensor, r: Tensor,
                K: int) -> Tensor:
        valid = logits[:, :K]
        # Per token: the largest logit and the mass of exp(logits - top). Kept apart (not
        # as one log-sum-exp, whose rounding at large logits would scale every p of the
        # row alike and, amplified by 1/r, spoil the gradient at small alpha).
        top, mass, lam, sum_w = dispatch(nelbo_triton.row_stats, _row_stats, valid, valid, r)
        log_mass = mass.log()
        p_z = ((logits.gather(1, z[:, None]).squeeze(1).to(r.dtype) - top) - log_mass).exp()
        p_x = ((logits.gather(1, x[:, None]).squeeze(1).to(r.dtype) - top) - log_mass).exp()
        a_i, c_x = torch.log1p(r * p_z), torch.log1p(r * p_x)
        hit = (z == x).to(r.dtype)
        ctx.K = K
        ctx.save_for_backward(logits, top, mass, sum_w, z, x, a, da, r, hit, a_i, p_z, p_x)
        return usdm_from_sums(K, a, da, r, hit, lam, a_i, c_x)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        logits, top, mass, sum_w, z, x, a, da, r, hit, a_i, p_z, p_x = ctx.saved_tensors
        K = ctx.K
        g_lam, g_a, g_c = (grad * c for c in _coefficients(K, a, da, r, hit, a_i))
        w_z, w_x = r * p_z / (1.0 + r * p_z), r * p_x / (1.0 + r * p_x)
        # softmax backward: d logits_j = p_j (g_j - sum_k p_k g_k), g = dL/dp
        g_z, g_x = g_a * w_z, g_c * w_x
        coef = (g_lam * sum_w + g_z + g_x) / mass  # sum_w from forward: one pass fewer here
        # The point terms are added before any rounding to the logits' dtype (see lam_grad).
        valid = logits[:, :K]
        out = dispatch(nelbo_triton.lam_grad, _lam_grad, valid, valid, top, mass, r, g_lam, coef,
                       z, x, g_z, g_x, logits.shape[1])
        return out, None, None, None, None, None, None


def usdm_nelbo_from_logits(logits: Tensor, z_t: Tensor, x: Tensor, alpha_t: Tensor | float,
                           dalpha_t: Tensor | float, *, check_ids: bool = True,
                           vocab_size: int | None = None) -> Tensor:
    """``usdm_nelbo(log_softmax(logits), z_t, x, alpha_t, dalpha_t)`` per token (B, L),
    keeping only the logits for backward. ``logits`` (B, L, K) are computed on in
    float32 (float64 stays float64), also under autocast; bf16 / float16 logits are
    kept as they are and upcast as they are read. ``vocab_size=K`` takes
    logits (B, L, W) with W >= K whose first K columns are the vocabulary (the padded
    output layer's, see ``FinalLayer.project``); the other columns get gradient 0.
    ``check_ids=False`` skips the range check of the ids (a device sync; skipped under
    ``torch.compile`` too). Only the logits get gradients; twice-differentiating is not
    supported."""
    W = logits.shape[-1]
    K = W if vocab_size is None else vocab_size
    if not 0 < K <= W:
        raise ValueError(f"vocab_size={vocab_size} must be in [1, {W}] (the logits' last dimension)")
    if check_ids and not torch.compiler.is_compiling():
        _check_pair(logits[..., :K], z_t, x)
    a, da, r = usdm_rates(alpha_t, dalpha_t, z_t, K, compute_dtype(logits))
    if torch.is_grad_enabled() and (a.requires_grad or da.requires_grad):
        raise ValueError("usdm_nelbo_from_logits differentiates only with respect to the logits, but "
                         "alpha_t or dalpha_t requires grad; use duo.losses.usdm_nelbo for that")
    logits = loss_input(logits)
    with torch.autocast(logits.device.type, enabled=False):
        out = _NelboFromLogits.apply(logits.reshape(-1, logits.shape[-1]), z_t.reshape(-1),
                                     x.reshape(-1), a.reshape(-1), da.reshape(-1), r.reshape(-1), K)
    return out.view(z_t.shape)
