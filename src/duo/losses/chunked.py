"""The output layer and a per-token loss run together on chunks of tokens.

With a large vocabulary the (B, L, K) logits and the loss's float32 intermediates
dominate training memory; :func:`token_loss` keeps only the final hidden states for
backward and materialises the logits one chunk at a time. ``LOSS_KINDS`` says how each
loss wants its logits (dtype, padding) and how large a chunk it takes per device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from torch import Tensor

from .kernels.common import available as kernels_available


@dataclass(frozen=True)
class LossKind:
    """How :func:`token_loss` feeds a loss: ``half_logits`` hands it the output layer's
    logits in their dtype (bf16 under autocast; the fused losses upcast as they read),
    else float32; ``accelerator_chunk`` is the default logits elements per chunk off CPU;
    ``padded_logits`` hands it the output layer's padded logits (..., K_pad) with
    ``vocab_size=K`` (the loss ignores the trailing columns and gives them gradient 0),
    which spares autograd a copy of the logits' gradient into a zero-padded buffer."""

    half_logits: bool
    accelerator_chunk: int
    needs_kernels: bool = False  # the chunk assumes the Triton kernels; else autograd's
    padded_logits: bool = False


# CPU keeps the lowest memory (2^24 logits elements per chunk). The fused NELBO keeps only
# the bf16 logits for backward: on an H100 (small, L = 1024, K = 50,257, bf16, compiled
# network) B = 64 ran 11% faster unchunked (2^32: up to 85k tokens per chunk) than in two
# chunks (2^31, which recompute the output layer and the loss's forward) for 3.6 GiB
# more (sixth session), and B = 16 1.6x faster unchunked than at 2^27 (fifth).
# Autograd keeps several float32 (tokens, K) tensors: 2^27 (2.2x faster than 2^24,
# session 2). The fused KL also keeps the teacher's float32 (tokens, K) log-probs per
# chunk, so it stays at 2^27 until measured.
LOSS_CHUNK = {"cpu": 2**24}
LOSS_KINDS = {
    "autograd": LossKind(half_logits=False, accelerator_chunk=2**27),
    # Without its kernels the fused NELBO runs its PyTorch passes, whose speed against the
    # chunk size is unmeasured on GPUs: autograd's chunk.
    "fused-nelbo": LossKind(half_logits=True, accelerator_chunk=2**32, needs_kernels=True,
                            padded_logits=True),
    "fused-kl": LossKind(half_logits=True, accelerator_chunk=2**27),
}


def default_chunk(kind: str, t: Tensor) -> int:
    """Logits elements per chunk of :func:`token_loss` for a loss ``kind`` on ``t``'s device.

    Decided per call: after a failed kernel launch (kernels off for the process) the
    next steps get the smaller chunk; the step in which it failed keeps the large one."""
    spec = LOSS_KINDS[kind]
    if spec.needs_kernels and not kernels_available(t):
        spec = LOSS_KINDS["autograd"]
    return LOSS_CHUNK.get(t.device.type, spec.accelerator_chunk)


def token_loss(fn, backbone, model_input, sigma: Tensor | None, *rows,
               max_elements: int | None = None, kind: str = "autograd") -> Tensor:
    """Per-token loss ``fn(logits (1, n, K), *rows (1, n, ...)) -> (1, n)`` as (B, L).

    With a large vocabulary the (B, L, K) logits and the loss's float32 intermediates
    (log-softmax, exponentials, ...) dominate training memory. Here the output layer
    and the loss run on chunks of about ``max_elements / K`` tokens under activation
    checkpointing: only the final hidden states (B, L, D) are kept for backward, and
    the logits exist for one chunk at a time. ``rows`` are per-token tensors with
    leading dims (B, L). Small inputs take the direct path. ``kind`` (a key of
    :data:`LOSS_KINDS`) says whether ``fn`` takes half-precision or padded logits and,
    with ``max_elements=None``, the chunk off CPU (:data:`LOSS_CHUNK` on CPU).
    """
    spec = LOSS_KINDS[kind]
    cast = (lambda t: t) if spec.half_logits else (lambda t: t.float())
    h, c = backbone.hidden(model_input, sigma)
    head = backbone.output_layer
    B, L, D = h.shape
    if max_elements is None:
        max_elements = default_chunk(kind, h)
    K = head.linear.out_features
    padded = spec.padded_logits
    extra = {"vocab_size": K} if padded else {}
    width = head.padded_width(h.device)  # the logits a chunk holds (K, or K padded on CUDA)
    per_chunk = max(1, max_elements // width)
    if per_chunk >= B * L:
        return fn(cast(head(h, c, padded)), *rows, **extra)
    shift, scale = head.modulation(c)
    flat = [h.reshape(B * L, D)]
    if shift is not None:
        flat += [shift.expand(B, L, D).reshape(B * L, D), scale.expand(B, L, D).reshape(B * L, D)]
    n_mod = len(flat) - 1
    flat += [r.reshape(B * L, *r.shape[2:]) for r in rows]

    def chunk_loss(hc: Tensor, *rest: Tensor) -> Tensor:
        mod, args = rest[:n_mod], rest[n_mod:]
        logits = cast(head.project(hc, *(mod if mod else (None, None)), padded))
        return fn(logits[None], *(a[None] for a in args), **extra)[0]

    outs = []
    for start in range(0, B * L, per_chunk):
        part = [t[start:start + per_chunk] for t in flat]
        if torch.is_grad_enabled() and h.requires_grad:
            outs.append(torch.utils.checkpoint.checkpoint(chunk_loss, *part, use_reentrant=False))
        else:
            outs.append(chunk_loss(*part))
    return torch.cat(outs).view(B, L)
