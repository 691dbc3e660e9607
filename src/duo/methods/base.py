"""What every method shares: its loss output and a mask-aware reduction."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.utils.checkpoint
from torch import Tensor


@dataclass
class LossOutput:
    """``loss`` is what the optimiser sees (mean over valid tokens); ``nelbo_sum`` and
    ``num_tokens`` let callers aggregate an exact per-token NELBO across batches."""

    loss: Tensor
    nelbo_sum: Tensor
    num_tokens: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


def reduce_tokens(per_token: Tensor, mask: Tensor | None) -> LossOutput:
    """Mean of a ``(B, L)`` loss over positions where ``mask`` is set."""
    if mask is None:
        mask = torch.ones_like(per_token, dtype=torch.bool)
    mask = mask.bool()
    total = torch.where(mask, per_token, torch.zeros_like(per_token)).sum()
    count = mask.sum()
    return LossOutput(
        loss=total / count.clamp_min(1),
        nelbo_sum=total.detach(),
        num_tokens=count.detach(),
    )


def attention_mask(batch: dict[str, Tensor]) -> Tensor | None:
    return batch.get("attention_mask")


def chunked_token_loss(fn, logits: Tensor, *rows, max_elements: int = 2**25) -> Tensor:
    """``fn(logits_chunk, *rows_chunk) -> (b, L)`` over row chunks of the batch.

    With a large vocabulary the loss's float32 ``(B, L, K)`` intermediates (log-softmax,
    exponentials, ...) dominate training memory. Each chunk runs under activation
    checkpointing, so those intermediates exist for one chunk at a time and only the
    logits are kept for backward. Tensors in ``rows`` whose first dim is B are chunked
    with the logits; others pass through. Small inputs take the direct path.
    """
    B = logits.shape[0]
    per_row = max(1, max_elements // max(logits[0].numel(), 1))
    if per_row >= B:
        return fn(logits, *rows)
    outs = []
    for start in range(0, B, per_row):
        part = slice(start, start + per_row)
        args = [r[part] if isinstance(r, Tensor) and r.dim() > 0 and r.shape[0] == B else r for r in rows]
        if torch.is_grad_enabled() and logits.requires_grad:
            outs.append(torch.utils.checkpoint.checkpoint(fn, logits[part], *args, use_reentrant=False))
        else:
            outs.append(fn(logits[part], *args))
    return torch.cat(outs)
