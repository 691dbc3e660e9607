"""The distillation KL straight from the student's logits, with a hand-written backward
(MATH.md section 6).

With ``p = softmax(s)`` the student's prediction and ``t`` the teacher's log-probs
(constants), the gradients are closed forms of ``p`` and ``t``:

- reverse, ``KL(p || q) = sum_j p_j (log p_j - t_j)``: ``dKL/ds_j = p_j (log p_j - t_j - KL)``;
- forward, ``KL(q || p) = sum_j q_j (t_j - log p_j)``: ``dKL/ds_j = p_j sum_k q_k - q_j``.

So backward needs only the student logits, the teacher log-probs (kept by either way
of computing the loss) and two numbers per token, instead of the log-softmax,
exponential and difference tensors autograd would keep. On CUDA with Triton, the row
passes run as kernels (:mod:`duo.losses.kernels.kl_triton`).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .kernels import kl_triton
from .kernels.common import compute_dtype, dispatch, loss_input
from .reference import kl_terms
from ..utils.chunks import row_chunks


def _row_kl(s: Tensor, t: Tensor, reverse: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Per row: largest logit, log softmax mass and KL, each (N,) in ``t``'s dtype,
    computed in that dtype in row chunks (bf16 logits are upcast a chunk at a time)."""
    n, K = s.shape
    top = s.amax(-1).to(t.dtype)
    kl, log_mass = t.new_empty(2, n)
    parts = row_chunks(n, K, s.device)
    bufs = t.new_empty(2, parts[0].stop * K if parts else 0)  # log p and p of a chunk, reused
    for rows in parts:
        shape = s[rows].shape
        log_p, p = (b[: shape[0] * K].view(shape) for b in bufs)
        torch.sub(s[rows].to(t.dtype), top[rows, None], out=log_p)
        mass = torch.exp(log_p, out=p).sum(-1, keepdim=True)  # one exp per entry
        log_mass[rows] = mass.log().squeeze(1)
        log_p.sub_(log_mass[rows, None])
        p.div_(mass)
        kl[rows] = (kl_terms(log_p, t[rows], p) if reverse else kl_terms(t[rows], log_p)).sum(-1)
    return top, log_mass, kl


def _kl_grad(s: Tensor, t: Tensor, top: Tensor, log_mass: Tensor, kl: Tensor, grad: Tensor,
             reverse: bool) -> Tensor:
    """(N, K) in ``s``'s dtype: ``grad`` times dKL/ds per row, computed in ``t``'s dtype
    in row chunks."""
    n, K = s.shape
    out = torch.empty_like(s)
    for rows in row_chunks(n, K, s.device):
        log_p = (s[rows].to(t.dtype) - top[rows, None]).sub_(log_mass[rows, None])
        p = log_p.exp()
        g = grad[rows, None]
        if reverse:
            # p (log p - t - KL); p = 0 (a -inf logit) has no gradient even where t = -inf
            out[rows] = torch.where(p > 0, p * (log_p - t[rows] - kl[rows, None]), 0.0) * g
        else:
            q = t[rows].exp()
            out[rows] = (p * q.sum(-1, keepdim=True) - q) * g
    return out


class _KlFromLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s: Tensor, t: Tensor, reverse: bool) -> Tensor:
        top, log_mass, kl = dispatch(kl_triton.row_kl, _row_kl, s, s, t, reverse)
        ctx.reverse = reverse
        ctx.save_for_backward(s, t, top, log_mass, kl)
        return kl

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        s, t, top, log_mass, kl = ctx.saved_tensors
        out = dispatch(kl_triton.kl_grad, _kl_grad, s, s, t, top, log_mass, kl, grad, ctx.reverse)
        # A token whose KL is infinite (the teacher rules out a token the student allows)
        # has a gradient only if it is used: 0 * inf would otherwise spread NaN.
        # (masked_fill_ rather than a test for any such row: no device sync per chunk)
        unused = (grad == 0) & ~torch.isfinite(kl)
        return out.masked_fill_(unused[:, None], 0.0), None, None


def distillation_kl_from_logits(
    student_logits: Tensor,
    teacher_log_probs: Tensor,
    direction: Literal["reverse", "forward"] = "reverse",
) -> Tensor:
    """``distillation_kl(log_softmax(student_logits), teacher_log_probs, direction)`` per
    token (B, L), keeping only the logits, the teacher's log-probs and two numbers per
    token for backward. Inputs (B, L, K); computed in float32 (float64 stays float64;
    bf16 student logits are kept as they are and upcast as they are read); the teacher
    gets no gradient."""
    if student_logits.shape != teacher_log_probs.shape:
        raise ValueError(
            f"student {tuple(student_logits.shape)} and teacher "
            f"{tuple(teacher_log_probs.shape)} logits / log-probabilities differ in shape"
        )
    if direction not in ("reverse", "forward"):
        raise ValueError(f"direction={direction!r}; valid: 'reverse', 'forward'")
    dtype, K = compute_dtype(student_logits), student_logits.shape[-1]
    student_logits = loss_input(student_logits)
    with torch.autocast(student_logits.device.type, enabled=False):
        kl = _KlFromLogits.apply(student_logits.reshape(-1, K),
                                 teacher_log_probs.detach().to(dtype).reshape(-1, K), direction == "reverse")
    return kl.view(student_logits.shape[:-1])
