"""Autoregressive baseline on the same backbone with causal attention (MATH.md section 8)."""

from __future__ import annotations

from torch import Tensor, nn

from ..losses import ar_nll, token_loss
from .base import LossOutput, reduce_tokens
from .configs import ArConfig


class ArMethod:
    """Next-token prediction; position i predicts token i + 1."""

    name = "ar"
    process = "causal"
    loss_chunk_elements: int | None = None  # logits elements per loss chunk (None: by device, see token_loss)

    def __init__(self, cfg: ArConfig, backbone: nn.Module, vocab_size: int, max_steps: int = 0):
        self.cfg = cfg.validate()
        self.backbone = backbone
        self.vocab_size = vocab_size

    @staticmethod
    def model_vocab_size(tokenizer_vocab_size: int) -> int:
        return tokenizer_vocab_size

    def phase(self, step: int) -> str:
        return "discrete"

    def next_token_logits(self, ids: Tensor) -> Tensor:
        """Sampler contract: ids (B, L') -> logits (B, L', K)."""
        return self.backbone(ids, None).float()

    def training_loss(
        self, batch: dict[str, Tensor], t: Tensor | None = None, *, step: int = 0, generator=None
    ) -> LossOutput:
        x = batch["input_ids"]
        mask = batch.get("attention_mask")
        per_token = token_loss(ar_nll, self.backbone, x[:, :-1], None, x[:, 1:],
                               max_elements=self.loss_chunk_elements)
        return reduce_tokens(per_token, None if mask is None else mask[:, 1:])

    def eval_loss(self, batch: dict[str, Tensor], t: Tensor | None = None, *, generator=None) -> LossOutput:
        return self.training_loss(batch)
