"""What the Triton kernels share: the import (optional), when they may run, how they are
launched (a failed launch turns them off for the process), and the online row max /
softmax mass every row kernel starts with."""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Callable

import torch
from torch import Tensor

try:  # optional: without Triton the losses use their PyTorch passes
    import triton
    import triton.language as tl
except Exception:  # ImportError, or a Triton that cannot load here
    triton = None

BLOCK = 2048  # row entries per step of a program, under the interpreter
# On GPUs each row kernel is autotuned per K (and dtype) over these (BLOCK, warps): its
# first call compiles and times each (about 0.1 s apiece). The choice, which can differ
# between runs and ranks, changes only the order of float32 sums (rounding, not values).
TUNING = ((1024, 4), (2048, 4), (2048, 8), (4096, 8), (4096, 16))
# Triton fixes interpreter mode when the kernels are defined (at import), so read it once.
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_broken: str | None = None  # set when a launch failed (e.g. a GPU Triton cannot compile for)


# Inputs the kernels read (they compute in float32; a half-precision row is upcast as it
# is loaded, so bf16 logits under autocast need no float32 copy).
HALF = (torch.bfloat16, torch.float16)
DTYPES = (torch.float32, *HALF)


def available(t: Tensor) -> bool:
    """Whether the kernels can run on ``t``: float32 / bf16 / float16, Triton present, not
    disabled (``DUO_TRITON=0``) and not failed before, and CUDA (or any device under
    Triton's CPU interpreter)."""
    if (triton is None or _broken is not None or t.dtype not in DTYPES
            or os.environ.get("DUO_TRITON", "1") == "0"):
        return False
    return t.is_cuda or _INTERPRET


class KernelFailed(RuntimeError):
    """A Triton launch failed; the kernels are off for the rest of the process."""


def row_kernel(fn):
    """``triton.jit`` a row kernel (one program per row, streamed in ``BLOCK`` entries),
    autotuned over :data:`TUNING` except under the interpreter."""
    kernel = triton.jit(fn)
    if _INTERPRET:
        return kernel
    configs = [triton.Config({"BLOCK": b}, num_warps=w) for b, w in TUNING]
    return triton.autotune(configs, key=["K"])(kernel)


def launch(kernel, n: int, device: torch.device, *args, **meta) -> None:
    """Run ``kernel`` (a :func:`row_kernel`) on ``n`` programs on ``device``'s stream. A
    failure (Triton cannot compile for this GPU, say) turns the kernels off for the
    process, with a warning, and raises :class:`KernelFailed` for :func:`dispatch`."""
    global _broken
    if _INTERPRET:
        meta = {"BLOCK": BLOCK, **meta}
    try:
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            kernel[(n,)](*args, **meta)
    except Exception as err:
        _broken = f"{type(err).__name__}: {err}"
        warnings.warn(f"duo: Triton kernels turned off after a failed launch ({_broken}); "
                      "using PyTorch operations", RuntimeWarning, stacklevel=3)
        raise KernelFailed(_broken) from err


def dispatch(kernel_fn: Callable, torch_fn: Callable, t: Tensor, *args):
    """``kernel_fn(*args)`` when the kernels can run on ``t`` (:func:`available`), else,
    or after a failed launch, ``torch_fn(*args)``: the same result from PyTorch ops."""
    if available(t):
        with contextlib.suppress(KernelFailed):
            return kernel_fn(*args)
    return torch_fn(*args)


def compute_dtype(t: Tensor) -> torch.dtype:
    """What the fused losses compute in for inputs like ``t``: float64 stays, else float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def loss_input(logits: Tensor) -> Tensor:
    """``logits`` as the fused losses take them: float32 / float64 and bf16 / float16 as
    they are, anything else as float32. A half-precision input is upcast as it is read,
    by the kernels and by the PyTorch passes (a row chunk at a time): an upcast copy
    would add no precision, only a (tokens, K) float32 write. Deciding this without
    asking whether the kernels will run keeps what forward saves the same when a
    launch fails between a checkpointed chunk's forward and its recomputation."""
    return logits if logits.dtype in (*DTYPES, torch.float64) else logits.float()


def f32(t: Tensor) -> Tensor:
    """Per-row inputs as contiguous float32: a float64 one would compile to a kernel
    whose loop variables change type (a GPU compile error the interpreter does not show)."""
    return t.to(torch.float32).contiguous()


if triton is not None:

    @triton.jit
    def row_max_mass(row_ptr, K, BLOCK: tl.constexpr):
        """Largest logit of a row and sum_j exp(s_j - top), in one online pass.

        The running max is one number per row, moved block by block, so each logit
        costs one exponential (a running max per lane would rescale with a second)."""
        m = tl.max(tl.full([BLOCK], float("-inf"), tl.float32), 0)
        s = tl.zeros([BLOCK], tl.float32)
        for start in range(0, K, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            v = tl.load(row_ptr + cols, mask=cols < K, other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(v, 0))
            # -inf until the row's first finite logit: then nothing is added yet
            ref = tl.where(m_new == float("-inf"), 0.0, m_new)
            s = s * tl.exp(m - ref) + tl.exp(v - ref)
            m = m_new
        return m, tl.sum(s, 0)
