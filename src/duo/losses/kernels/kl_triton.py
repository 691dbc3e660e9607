"""Triton kernels for :mod:`duo.losses.fused_kl`: the distillation KL's row passes over the
student's logits ``s`` and the teacher's log-probs ``t`` (N, K).

Forward reads ``s`` twice (online max and mass, then the KL sum with ``t``); backward
reads both once (reverse KL) or twice (forward KL, which needs ``sum_k q_k``) and
writes the gradient once. ``s`` may be bf16 / float16 (read as is, computed on in
float32; the gradient is stored in its dtype). Conventions as :func:`duo.losses.kl_terms`: an entry without
mass (p = 0, resp. q = 0) contributes nothing. Gated and launched as the NELBO kernels
(:mod:`duo.losses.kernels.common`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .common import available, f32, launch, row_kernel, triton

__all__ = ["available", "kl_grad", "row_kl"]

if triton is not None:
    import triton.language as tl

    from .common import row_max_mass

    @row_kernel
    def _forward_kernel(s_ptr, t_ptr, top_ptr, log_mass_ptr, kl_ptr, K, s_stride, t_stride,
                        REVERSE: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        s_row, t_row = s_ptr + row * s_stride, t_ptr + row * t_stride
        top, mass = row_max_mass(s_row, K, BLOCK)
        log_mass = tl.log(mass)
        acc = tl.zeros([BLOCK], tl.float32)
        for start in range(0, K, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            inside = cols < K
            log_p = (tl.load(s_row + cols, mask=inside, other=float("-inf")).to(tl.float32)
                     - top - log_mass)
            t = tl.load(t_row + cols, mask=inside, other=float("-inf"))
            if REVERSE:  # p (log p - t), 0 where p = 0
                p = tl.exp(log_p)
                acc += tl.where(p > 0, p * (log_p - t), 0.0)
            else:  # q (t - log p), 0 where q = 0
                q = tl.exp(t)
                acc += tl.where(q > 0, q * (t - log_p), 0.0)
        tl.store(top_ptr + row, top)
        tl.store(log_mass_ptr + row, log_mass)
        tl.store(kl_ptr + row, tl.sum(acc, 0))

    @row_kernel
    def _backward_kernel(s_ptr, t_ptr, out_ptr, top_ptr, log_mass_ptr, kl_ptr, grad_ptr, K,
                         s_stride, t_stride, REVERSE: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        s_row, t_row = s_ptr + row * s_stride, t_ptr + row * t_stride
        shift = tl.load(top_ptr + row) + tl.load(log_mass_ptr + row)
        g = tl.load(grad_ptr + row)
        q_sum = 0.0
        if not REVERSE:
            q_acc = tl.zeros([BLOCK], tl.float32)
            for start in range(0, K, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                q_acc += tl.exp(tl.load(t_row + cols, mask=cols < K, other=float("-inf")))
            q_sum = tl.sum(q_acc, 0)
        kl = tl.load(kl_ptr + row)
        for start in range(0, K, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            inside = cols < K
            log_p = tl.load(s_row + cols, mask=inside, other=float("-inf")).to(tl.float32) - shift
            p = tl.exp(log_p)
            t = tl.load(t_row + cols, mask=inside, other=float("-inf"))
            if REVERSE:  # dKL/ds = p (log p - t - KL); none where p = 0
                d = tl.where(p > 0, p * (log_p - t - kl), 0.0)
            else:  # dKL/ds = p sum(q) - q
                d = p * q_sum - tl.exp(t)
            tl.store(out_ptr + row * K + cols, (d * g).to(out_ptr.dtype.element_ty), mask=inside)


def _rows(x: Tensor) -> Tensor:
    return x if x.stride(1) == 1 else x.contiguous()


def row_kl(s: Tensor, t: Tensor, reverse: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Per row of student logits ``s`` and teacher log-probs ``t`` (N, K): the largest
    logit, log of the softmax mass and the KL; each (N,)."""
    n, K = s.shape
    s, t = _rows(s), _rows(f32(t))
    top, log_mass, kl = (torch.empty(n, dtype=torch.float32, device=s.device) for _ in range(3))
    if n:
        launch(_forward_kernel, n, s.device, s, t, top, log_mass, kl, K, s.stride(0), t.stride(0),
               REVERSE=reverse)
    return top, log_mass, kl


def kl_grad(s: Tensor, t: Tensor, top: Tensor, log_mass: Tensor, kl: Tensor, grad: Tensor,
            reverse: bool) -> Tensor:
    """(N, K) gradient of ``sum_rows grad * KL`` with respect to ``s``, in ``s``'s dtype."""
    n, K = s.shape
    s, t = _rows(s), _rows(f32(t))
    out = torch.empty((n, K), dtype=s.dtype, device=s.device)
    if n:
        launch(_backward_kernel, n, s.device, s, t, out, f32(top), f32(log_mass), f32(kl),
               f32(grad), K, s.stride(0), t.stride(0), REVERSE=reverse)
    return out
