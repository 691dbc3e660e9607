"""What every method shares: its loss output and a mask-aware reduction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..losses import token_loss
from ..processes import absorbing
from ..schedules import Schedule, get_schedule, sigma_from_alpha


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


class MaskedMethod:
    """What the masked-process methods (MDLM, SEDD, D3PM) share: the mask is one id
    appended to the tokenizer's vocabulary, a schedule from the config, no curriculum.
    Subclasses set ``name`` and ``process`` and add their loss and denoiser."""

    def __init__(self, cfg: Any, backbone: nn.Module, vocab_size: int, max_steps: int = 0,
                 loss_chunk_elements: int | None = None):
        # logits elements per loss chunk (None: chosen by device, see duo.losses.token_loss)
        self.loss_chunk_elements = loss_chunk_elements
        self.cfg = cfg.validate()
        self.backbone = backbone
        self.vocab_size = vocab_size
        self.mask_id = vocab_size - 1
        self.schedule: Schedule = get_schedule(cfg.schedule, eps=cfg.eps)

    @staticmethod
    def model_vocab_size(tokenizer_vocab_size: int) -> int:
        return tokenizer_vocab_size + 1

    def phase(self, step: int) -> str:
        return "discrete"

    def conditioning(self, alpha: Tensor) -> Tensor:
        """The sigma (B,) the backbone sees at alpha (B,): ``-log alpha``."""
        return sigma_from_alpha(alpha.float())

    # The per-token NELBO integrand ``(logits, z_t, x, alpha, dalpha) -> (B, L)`` of a
    # continuous-time method (MDLM, SEDD set it); None for D3PM (discrete time).
    integrand = None

    def nelbo_per_token(self, x: Tensor, z_t: Tensor, alpha: Tensor, dalpha: Tensor) -> Tensor:
        """The method's :attr:`integrand` (B, L) at ``z_t`` (B, L) given ``x`` (B, L),
        ``alpha`` and ``dalpha`` (B, 1) or (B, L) (one time per row), the backbone
        conditioned as in training and its output layer run in chunks."""
        if self.integrand is None:
            raise ValueError(f"{self.name} is a discrete-time method; it has no continuous-time per-token NELBO")
        return token_loss(self.integrand, self.backbone, z_t, self.conditioning(alpha[:, 0]), z_t, x,
                          alpha.expand(x.shape), dalpha.expand(x.shape), max_elements=self.loss_chunk_elements)

    def continuous_loss(self, batch: dict[str, Tensor], t: Tensor, generator=None) -> LossOutput:
        """Mean over tokens of the method's :attr:`integrand` ``(logits, z_t, x, alpha,
        dalpha)`` at z_t ~ q_t(. | x) (continuous time t (B,)), the output layer run in chunks."""
        x = batch["input_ids"]
        alpha = self.schedule.alpha(t)[:, None]
        dalpha = self.schedule.dalpha(t)[:, None]
        z_t = absorbing.sample_zt(x, alpha, self.mask_id, generator=generator)
        per_token = self.nelbo_per_token(x, z_t, alpha, dalpha)
        return reduce_tokens(per_token, attention_mask(batch))
