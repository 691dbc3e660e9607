"""What every method shares: its loss output and a mask-aware reduction."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
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
