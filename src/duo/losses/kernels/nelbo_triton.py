"""Triton kernels for :mod:`duo.losses.fused_nelbo`: the per-row passes over (N, K) logits.

One program per row streams the row in blocks of ``BLOCK`` entries, so the logits are
read twice in forward (max and softmax mass in one online pass, then
``lam = sum_j log1p(r p_j)`` and ``sum_j w_j``) and once plus one write in backward,
where the PyTorch version makes about three times as many passes over memory. Rows are read in their dtype (float32, or bf16 / float16 under autocast) and
computed on in float32. Used on CUDA when Triton is installed (it ships with PyTorch's CUDA
wheels on Linux); ``DUO_TRITON=0`` turns it off. With ``TRITON_INTERPRET=1`` the same
kernels run on CPU tensors (slowly), which is how the tests check them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .common import available, f32, launch, row_kernel, triton

__all__ = ["available", "lam_grad", "row_stats"]

if triton is not None:
    import triton.language as tl

    from .common import row_max_mass

    @triton.jit
    def _log1p(y):
        # Goldberg's trick: log(u) * y / (u - 1) with u = 1 + y is accurate to a few ulp
        # for tiny y, where log(1 + y) rounds to 0; y >= 0 here.
        u = 1.0 + y
        return tl.where(u == 1.0, y, tl.log(u) * (y / (u - 1.0)))

    @row_kernel
    def _forward_kernel(logits_ptr, r_ptr, top_ptr, mass_ptr, lam_ptr, sum_w_ptr, K, stride,
                        BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        row_ptr = logits_ptr + row * stride
        top, mass = row_max_mass(row_ptr, K, BLOCK)
        rate = tl.load(r_ptr + row) / mass
        lam = tl.zeros([BLOCK], tl.float32)
        acc = tl.zeros([BLOCK], tl.float32)
        for start in range(0, K, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            v = tl.load(row_ptr + cols, mask=cols < K, other=float("-inf")).to(tl.float32)
            y = rate * tl.exp(v - top)
            lam += _log1p(y)
            acc += y / (1.0 + y)  # w = r p / (1 + r p), summed for backward
        tl.store(top_ptr + row, top)
        tl.store(mass_ptr + row, mass)
        tl.store(lam_ptr + row, tl.sum(lam, 0))
        tl.store(sum_w_ptr + row, tl.sum(acc, 0))

    @row_kernel
    def _backward_kernel(logits_ptr, out_ptr, top_ptr, mass_ptr, r_ptr, g_lam_ptr, coef_ptr,
                         z_ptr, x_ptr, g_z_ptr, g_x_ptr, K, stride, width, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        row_ptr = logits_ptr + row * stride
        top = tl.load(top_ptr + row)
        rate = tl.load(r_ptr + row) / tl.load(mass_ptr + row)
        g_lam = tl.load(g_lam_ptr + row)
        coef = tl.load(coef_ptr + row)
        z, x = tl.load(z_ptr + row), tl.load(x_ptr + row)
        g_z, g_x = tl.load(g_z_ptr + row), tl.load(g_x_ptr + row)
        for start in range(0, width, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            v = tl.load(row_ptr + cols, mask=cols < K, other=float("-inf")).to(tl.float32)
            e = tl.exp(v - top)
            y = rate * e
            d = g_lam * (y / (1.0 + y)) - coef * e
            # The terms at z and x join in float32: at a confident x they cancel most of
            # -coef e, which a bf16 store before the sum would leave as rounding error.
            d += tl.where(cols == z, g_z, 0.0) + tl.where(cols == x, g_x, 0.0)
            d = tl.where(cols < K, d, 0.0)  # exact zeros in the padding, whatever the row holds
            tl.store(out_ptr + row * width + cols, d.to(out_ptr.dtype.element_ty),
                     mask=cols < width)


def row_stats(logits: Tensor, r: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per row of ``logits`` (N, K): the largest logit, the mass sum_j exp(s_j - top),
    ``lam = sum_j log1p(r p_j)`` with ``p = softmax(s)``, and ``sum_j w_j`` with
    ``w = r p / (1 + r p)``; each (N,)."""
    n, K = logits.shape
    logits = logits if logits.stride(1) == 1 else logits.contiguous()
    top, mass, lam, sum_w = torch.empty(4, n, dtype=torch.float32, device=logits.device)
    if n:
        launch(_forward_kernel, n, logits.device, logits, f32(r), top, mass, lam, sum_w, K,
               logits.stride(0))
    return top, mass, lam, sum_w


def lam_grad(logits: Tensor, top: Tensor, mass: Tensor, r: Tensor, g_lam: Tensor,
             coef: Tensor, z: Tensor, x: Tensor, g_z: Tensor, g_x: Tensor,
             width: int) -> Tensor:
    """(N, width) gradient ``g_lam w - coef exp(logits - top)`` with ``w = r p / (1 + r p)``
    and ``p = softmax(logits)``, plus ``g_z`` at column ``z`` and ``g_x`` at ``x`` of each
    row (ids (N,)), in the K columns of ``logits`` (N, K); columns K..width are zeros:
    the NELBO's backward (``coef = (g_lam sum(w) + g_z + g_x) / mass``).
    Computed in float32, stored in the logits' dtype."""
    n, K = logits.shape
    logits = logits if logits.stride(1) == 1 else logits.contiguous()
    out = torch.empty((n, width), dtype=logits.dtype, device=logits.device)
    if n:
        launch(_backward_kernel, n, logits.device, logits, out, f32(top), f32(mass), f32(r),
               f32(g_lam), f32(coef), z.contiguous(), x.contiguous(), f32(g_z), f32(g_x), K,
               logits.stride(0), width)
    return out
