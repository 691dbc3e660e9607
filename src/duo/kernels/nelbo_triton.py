"""Triton kernels for :mod:`duo.fused_nelbo`: the per-row passes over (N, K) logits.

One program per row streams the row in blocks of ``BLOCK`` entries, so the logits are
read twice in forward (max and softmax mass in one online pass, then
``lam = sum_j log1p(r p_j)``) and twice plus one write in backward (``sum_j w_j``, then
the gradient), where the PyTorch version makes about three times as many passes over
memory. Used on CUDA float32 when Triton is installed (it ships with PyTorch's CUDA
wheels on Linux); ``DUO_TRITON=0`` turns it off. With ``TRITON_INTERPRET=1`` the same
kernels run on CPU tensors (slowly), which is how the tests check them.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import torch
from torch import Tensor

try:  # optional: without Triton the PyTorch passes in duo.fused_nelbo are used
    import triton
    import triton.language as tl
except Exception:  # ImportError, or a Triton that cannot load here
    triton = None

BLOCK = 2048
# Triton fixes interpreter mode when the kernels are defined (at import), so read it once.
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_broken: str | None = None  # set when a launch failed (e.g. a GPU Triton cannot compile for)


def available(t: Tensor) -> bool:
    """Whether the kernels can run on ``t``: float32, Triton present, not disabled
    (``DUO_TRITON=0``) and not failed before, and CUDA (or any device under Triton's CPU
    interpreter)."""
    if (triton is None or _broken is not None or t.dtype != torch.float32
            or os.environ.get("DUO_TRITON", "1") == "0"):
        return False
    return t.is_cuda or _INTERPRET


def _launch(kernel, n: int, device: torch.device, *args, **meta) -> None:
    """Run ``kernel`` on ``n`` programs on ``device``'s stream. A failure (Triton cannot
    compile for this GPU, say) turns the kernels off for the process, with a warning,
    and is raised for the caller to fall back."""
    global _broken
    try:
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            kernel[(n,)](*args, **meta)
    except Exception as err:
        _broken = f"{type(err).__name__}: {err}"
        warnings.warn(f"duo: Triton kernels turned off after a failed launch ({_broken}); "
                      "using PyTorch operations", RuntimeWarning, stacklevel=3)
        raise


if triton is not None:

    @triton.jit
    def _log1p(y):
        # Goldberg's trick: log(u) * y / (u - 1) with u = 1 + y is accurate to a few ulp
        # for tiny y, where log(1 + y) rounds to 0; y >= 0 here.
        u = 1.0 + y
        return tl.where(u == 1.0, y, tl.log(u) * (y / (u - 1.0)))

    @triton.jit
    def _row_max_mass(row_ptr, K, BLOCK: tl.constexpr):
        """Largest logit of a row and sum_j exp(s_j - top), in one online pass."""
        m = tl.full([BLOCK], float("-inf"), tl.float32)
        s = tl.zeros([BLOCK], tl.float32)
        for start in range(0, K, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            v = tl.load(row_ptr + cols, mask=cols < K, other=float("-inf"))
            m_new = tl.maximum(m, v)
            empty = m_new == float("-inf")  # no finite logit yet in this lane
            s = tl.where(empty, 0.0, s * tl.exp(m - m_new) + tl.exp(v - m_new))
            m = m_new
        top = tl.max(m, 0)
        mass = tl.sum(tl.where(m == float("-inf"), 0.0, s * tl.exp(m - top)), 0)
        return top, mass

    @triton.jit
    def _forward_kernel(logits_ptr, r_ptr, top_ptr, mass_ptr, lam_ptr, K, stride,
                        BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        row_ptr = logits_ptr + row * stride
        top, mass = _row_max_mass(row_ptr, K, BLOCK)
        rate = tl.load(r_ptr + row) / mass
        lam = tl.zeros([BLOCK], tl.float32)
        for start in range(0, K, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            v = tl.load(row_ptr + cols, mask=cols < K, other=float("-inf"))
            lam += _log1p(rate * tl.exp(v - top))
        tl.store(top_ptr + row, top)
        tl.store(mass_ptr + row, mass)
        tl.store(lam_ptr + row, tl.sum(lam, 0))

    @triton.jit
    def _backward_kernel(logits_ptr, out_ptr, top_ptr, mass_ptr, r_ptr, g_lam_ptr, point_ptr,
                         K, stride, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        row_ptr = logits_ptr + row * stride
        top = tl.load(top_ptr + row)
        mass = tl.load(mass_ptr + row)
        rate = tl.load(r_ptr + row) / mass
        g_lam = tl.load(g_lam_ptr + row)
        acc = tl.zeros([BLOCK], tl.float32)
        for start in range(0, K, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            v = tl.load(row_ptr + cols, mask=cols < K, other=float("-inf"))
            y = rate * tl.exp(v - top)
            acc += y / (1.0 + y)  # w = r p / (1 + r p)
        total = g_lam * tl.sum(acc, 0) + tl.load(point_ptr + row)
        coef = total / mass
        for start in range(0, K, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            v = tl.load(row_ptr + cols, mask=cols < K, other=float("-inf"))
            e = tl.exp(v - top)
            y = rate * e
            tl.store(out_ptr + row * K + cols, g_lam * (y / (1.0 + y)) - coef * e, mask=cols < K)


def row_stats(logits: Tensor, r: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per row of ``logits`` (N, K): the largest logit, the mass sum_j exp(s_j - top) and
    ``lam = sum_j log1p(r p_j)`` with ``p = softmax(s)``; each (N,)."""
    n, K = logits.shape
    logits = logits if logits.stride(1) == 1 else logits.contiguous()
    top, mass, lam = (torch.empty(n, dtype=torch.float32, device=logits.device) for _ in range(3))
    if n:
        _launch(_forward_kernel, n, logits.device, logits, _f32(r), top, mass, lam, K,
                logits.stride(0), BLOCK=BLOCK)
    return top, mass, lam


def lam_grad(logits: Tensor, top: Tensor, mass: Tensor, r: Tensor, g_lam: Tensor,
             point: Tensor) -> Tensor:
    """(N, K) gradient ``g_lam w - (g_lam sum(w) + point) p`` with ``p = softmax(logits)``
    and ``w = r p / (1 + r p)``: the part of the NELBO's backward that spans the row."""
    n, K = logits.shape
    logits = logits if logits.stride(1) == 1 else logits.contiguous()
    out = torch.empty((n, K), dtype=torch.float32, device=logits.device)
    if n:
        _launch(_backward_kernel, n, logits.device, logits, out, _f32(top), _f32(mass), _f32(r),
                _f32(g_lam), _f32(point), K, logits.stride(0), BLOCK=BLOCK)
    return out


def _f32(t: Tensor) -> Tensor:
    """Per-row inputs as contiguous float32: a float64 one would compile to a kernel
    whose loop variables change type (a GPU compile error the interpreter does not show)."""
    return t.to(torch.float32).contiguous()
