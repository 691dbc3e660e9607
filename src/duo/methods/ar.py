"""Autoregressive baseline on the same backbone with causal attention (MATH.md section 8)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..losses import ar_nll, token_loss
from ..processes import CAUSAL
from .base import LossOutput, reduce_tokens
from .config import ArConfig


class ArMethod:
    """Next-token prediction; position i predicts token i + 1."""

    name = "ar"
    process = CAUSAL
    # Ids whose logit is set to -1e6: published AR weights never predict the [PAD] id the
    # official code appended to GPT-2's vocabulary (MATH.md section 11).
    masked_logit_ids: tuple[int, ...] = ()

    def __init__(self, cfg: ArConfig, backbone: nn.Module, vocab_size: int, max_steps: int = 0,
                 loss_chunk_elements: int | None = None):
        # logits elements per loss chunk (None: chosen by device, see duo.losses.token_loss)
        self.loss_chunk_elements = loss_chunk_elements
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
        return self._mask(self.backbone(ids, None).float())

    def new_cache(self, batch: int, max_len: int, device=None):
        """A key/value cache for :meth:`decode` (sampler contract for cached decoding)."""
        return self.backbone.new_cache(batch, max_len, device)

    def decode(self, ids: Tensor, cache) -> Tensor:
        """Logits (B, n, K) of new ids (B, n) after the cached positions; equals
        :meth:`next_token_logits` on the whole sequence at those positions."""
        return self._mask(self.backbone.decode(ids, cache))

    def _mask(self, logits: Tensor) -> Tensor:
        if not self.masked_logit_ids:
            return logits
        key = (self.masked_logit_ids, logits.device)
        if getattr(self, "_mask_key", None) != key:  # made once, not per decoded token
            self._mask_key, self._mask_ids = key, torch.tensor(self.masked_logit_ids, device=logits.device)
        return logits.index_fill(-1, self._mask_ids, -1e6)

    def _nll(self, logits: Tensor, targets: Tensor) -> Tensor:
        return ar_nll(self._mask(logits.float()), targets)

    def training_loss(
        self, batch: dict[str, Tensor], t: Tensor | None = None, *, step: int = 0, generator=None
    ) -> LossOutput:
        x = batch["input_ids"]
        mask = batch.get("attention_mask")
        per_token = token_loss(self._nll, self.backbone, x[:, :-1], None, x[:, 1:],
                               max_elements=self.loss_chunk_elements)
        return reduce_tokens(per_token, None if mask is None else mask[:, 1:])

    def eval_loss(self, batch: dict[str, Tensor], t: Tensor | None = None, *, generator=None) -> LossOutput:
        return self.training_loss(batch)
