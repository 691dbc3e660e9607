"""The DiT backbone of Duo / MDLM, with the published checkpoint layout (DESIGN.md).

``DiT(x, sigma)`` maps token ids ``(B, L)``, logits ``(B, L, K)`` or top-k
``(indices, weights)`` pairs ``(B, L, k)`` to float32 logits ``(B, L, K)``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from duo.models.attention import attention
from duo.models.config import ModelConfig
from duo.models.layers import (
    LayerNorm, Rotary, TimestepEmbedder, TokenEmbedding, aligned_linear, apply_rotary, modulate,
)

ModelInput = Tensor | tuple[Tensor, Tensor]
VOCAB_ALIGN = 64  # the output layer's rows are padded to this multiple on CUDA


@dataclass
class KVCache:
    """Keys and values of the positions a causal DiT has seen, per block: each
    ``(B, max_len, H, d)``, filled up to ``length``. Made by :meth:`DiT.new_cache`."""

    keys: list[Tensor]
    values: list[Tensor]
    length: int = 0


class DiTBlock(nn.Module):
    """Pre-norm transformer block; adaLN-modulated unless ``cond_dim`` is None (causal)."""

    def __init__(self, dim: int, n_heads: int, cond_dim: int | None, mlp_ratio: int,
                 dropout: float, causal: bool) -> None:
        super().__init__()
        self.n_heads, self.dropout, self.causal = n_heads, dropout, causal
        self.norm1 = LayerNorm(dim)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.norm2 = LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim), nn.GELU(approximate="tanh"),
            nn.Linear(mlp_ratio * dim, dim),
        )
        self.adaLN_modulation: nn.Linear | None = None
        if cond_dim is not None:
            # Zero init: every block starts as the identity (DiT's adaLN-Zero).
            self.adaLN_modulation = nn.Linear(cond_dim, 6 * dim)
            nn.init.zeros_(self.adaLN_modulation.weight)
            nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, c: Tensor | None) -> Tensor:
        b, l, dim = x.shape
        h = self.norm1(x)
        if self.adaLN_modulation is not None:
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
                self.adaLN_modulation(c)[:, None].chunk(6, dim=2))
            h = modulate(h, shift_msa, scale_msa)
        qkv = self.attn_qkv(h).view(b, l, 3, self.n_heads, dim // self.n_heads)
        q, k = apply_rotary(qkv[:, :, :2], cos, sin).unbind(2)  # queries and keys in one pass
        h = attention(q, k, qkv[:, :, 2], causal=self.causal)
        h = F.dropout(self.attn_out(h), self.dropout, self.training)
        x = x + (gate_msa * h if self.adaLN_modulation is not None else h)

        h = self.norm2(x)
        if self.adaLN_modulation is not None:
            h = modulate(h, shift_mlp, scale_mlp)
        h = F.dropout(self.mlp(h), self.dropout, self.training)
        return x + (gate_mlp * h if self.adaLN_modulation is not None else h)

    def decode(self, x: Tensor, cos: Tensor, sin: Tensor, keys: Tensor, values: Tensor,
               start: int) -> Tensor:
        """The causal block on new positions ``[start, start + n)`` (x: (B, n, D)), writing
        their keys and values into ``keys`` / ``values`` (B, max_len, H, d), which already
        hold those of ``[0, start)``; cos / sin: (n, d) of the new positions."""
        b, n, dim = x.shape
        q, k, v = self.attn_qkv(self.norm1(x)).view(b, n, 3, self.n_heads, dim // self.n_heads).unbind(2)
        keys[:, start:start + n] = apply_rotary(k, cos, sin)
        values[:, start:start + n] = v
        end = start + n
        # A new position sees every cached one and the new ones up to itself.
        mask = None if n == 1 else (torch.arange(start, end, device=x.device)[:, None]
                                    >= torch.arange(end, device=x.device)[None, :])
        h = F.scaled_dot_product_attention(
            apply_rotary(q, cos, sin).transpose(1, 2), keys[:, :end].transpose(1, 2),
            values[:, :end].transpose(1, 2), attn_mask=mask,
        ).transpose(1, 2).reshape(b, n, dim)
        x = x + self.attn_out(h)
        return x + self.mlp(self.norm2(x))


class FinalLayer(nn.Module):
    """``output_layer``: LayerNorm, optional adaLN (shift, scale), linear to the vocabulary."""

    def __init__(self, dim: int, vocab_size: int, cond_dim: int | None) -> None:
        super().__init__()
        self.norm_final = LayerNorm(dim)
        self.linear = nn.Linear(dim, vocab_size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.adaLN_modulation: nn.Linear | None = None
        if cond_dim is not None:
            self.adaLN_modulation = nn.Linear(cond_dim, 2 * dim)
            nn.init.zeros_(self.adaLN_modulation.weight)
            nn.init.zeros_(self.adaLN_modulation.bias)
        self.align: int | None = None  # pad the output rows to this multiple; None: by device

    def forward(self, x: Tensor, c: Tensor | None, padded: bool = False) -> Tensor:
        shift, scale = self.modulation(c)
        return self.project(x, shift, scale, padded)

    def modulation(self, c: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """``(shift, scale)`` of shape (B, 1, D) from the conditioning, or (None, None)."""
        if self.adaLN_modulation is None:
            return None, None
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=2)
        return shift, scale

    def row_align(self, device: torch.device) -> int:
        """The multiple the output rows are padded to on ``device`` (1: no padding)."""
        if self.align is not None:
            return self.align
        return VOCAB_ALIGN if device.type == "cuda" else 1

    def padded_width(self, device: torch.device) -> int:
        """Columns of ``project(..., padded=True)`` on ``device``: K rounded up to the align."""
        align = self.row_align(device)
        return -(-self.linear.out_features // align) * align

    def project(self, x: Tensor, shift: Tensor | None, scale: Tensor | None,
                padded: bool = False) -> Tensor:
        """Logits (..., K) for hidden states ``x`` (..., D); shift/scale broadcast against x.

        The linear layer's rows are padded to a multiple of ``align`` (default: 64 on CUDA,
        where aligned GEMMs are faster; none on CPU), and the result is a view of the
        padded logits. ``padded=True`` returns those (..., K_pad) logits themselves, whose
        columns from K on are zeros: a loss that skips them (the fused NELBO) then
        writes its gradient in that layout, with no copy into a zero-padded buffer.
        This reads linear.weight directly: hooks on output_layer.linear do not run
        when padding applies.
        """
        x = self.norm_final(x)
        if shift is not None:
            x = modulate(x, shift, scale)
        align = self.row_align(x.device)
        if align > 1:
            return aligned_linear(x, self.linear.weight, self.linear.bias, align, padded)
        return self.linear(x)


class DiT(nn.Module):
    """Diffusion transformer; the causal variant is the autoregressive baseline.

    Set ``check_inputs = False`` to skip the token-range check, which costs one
    device synchronisation per call (it is skipped under torch.compile anyway).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config.validate()
        d, cond = config.hidden_size, config.cond_dim
        adaln_dim = None if config.causal else cond
        self.vocab_embed = TokenEmbedding(config.vocab_size, d)
        if not config.causal:
            self.sigma_map = TimestepEmbedder(cond)
        self.rotary_emb = Rotary(config.head_dim)
        self.blocks = nn.ModuleList(
            DiTBlock(d, config.n_heads, adaln_dim, config.mlp_ratio, config.dropout,
                     config.causal)
            for _ in range(config.n_blocks)
        )
        self.output_layer = FinalLayer(d, config.vocab_size, adaln_dim)
        self.check_inputs = True

    def forward(self, x: ModelInput, sigma: Tensor | None = None) -> Tensor:
        """Logits (B, L, K) in float32.

        x: ids (B, L); logits (B, L, K), softmaxed then used to mix embedding rows (the
        curriculum passes w_t / tau); or (indices, weights), each (B, L, k).
        sigma: (B,) float, ``-log alpha_t``; required iff ``config.time_conditioning``,
        ignored otherwise (a bidirectional model without time conditioning sees 0).
        """
        h, c = self.hidden(x, sigma)
        return self.output_layer(h, c).float()

    def hidden(self, x: ModelInput, sigma: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Final hidden states (B, L, D) and conditioning c (B, C) (None when causal),
        before ``output_layer``: losses over large vocabularies project in chunks."""
        h = self._embed(x)
        c = self._condition(sigma, h.shape[0], h.device)
        cos, sin = self.rotary_emb.cos_sin(h.shape[1], h.device)
        for block in self.blocks:
            h = block(h, cos, sin, c)
        return h, c

    def new_cache(self, batch: int, max_len: int | None = None, device: torch.device | str | None = None
                  ) -> KVCache:
        """An empty key/value cache for :meth:`decode` (causal models only)."""
        if not self.config.causal:
            raise ValueError("DiT.new_cache: a key/value cache needs a causal model (the AR baseline)")
        max_len = max_len or self.config.max_seq_len
        self._check_length(max_len)
        param = self.vocab_embed.embedding
        heads = self.config.n_heads
        shape = (batch, max_len, heads, self.config.hidden_size // heads)
        make = lambda: torch.empty(shape, dtype=param.dtype, device=device or param.device)  # noqa: E731
        return KVCache([make() for _ in self.blocks], [make() for _ in self.blocks])

    def decode(self, ids: Tensor, cache: KVCache) -> Tensor:
        """Logits (B, n, K) in float32 of new ids (B, n) that follow the ``cache.length``
        positions already in ``cache``; their keys and values join the cache. Equals
        ``forward`` on the whole sequence at those positions (causal models only)."""
        start, n = cache.length, ids.shape[1]
        if start + n > cache.keys[0].shape[1]:
            raise ValueError(f"DiT.decode: {start + n} positions exceed the cache's "
                             f"{cache.keys[0].shape[1]}; make a longer cache")
        if start == 0:  # the prompt; later ids are the sampler's own draws (no sync per token)
            self._check_range(ids)
        h = self.vocab_embed.from_ids(ids).to(self.vocab_embed.embedding.dtype)
        cos, sin = self.rotary_emb.cos_sin(n, h.device, offset=start)
        for block, keys, values in zip(self.blocks, cache.keys, cache.values):
            h = block.decode(h, cos, sin, keys, values, start)
        cache.length = start + n
        return self.output_layer(h, None).float()

    def _condition(self, sigma: Tensor | None, batch: int, device: torch.device
                   ) -> Tensor | None:
        if self.config.causal:
            return None
        if not self.config.time_conditioning:
            sigma = torch.zeros(batch, device=device)
        elif sigma is None:
            raise ValueError("DiT: sigma is required with time_conditioning=True; pass "
                             "sigma = -log(alpha_t) of shape (B,)")
        elif not isinstance(sigma, Tensor) or tuple(sigma.shape) != (batch,):
            shape = tuple(sigma.shape) if isinstance(sigma, Tensor) else type(sigma).__name__
            raise ValueError(f"DiT: sigma has shape {shape}, expected ({batch},) to match "
                             "the batch; reshape it to (B,)")
        return F.silu(self.sigma_map(sigma))

    def _embed(self, x: ModelInput) -> Tensor:
        emb = self.vocab_embed
        vocab = self.config.vocab_size
        if isinstance(x, (tuple, list)):
            if len(x) != 2 or not all(isinstance(t, Tensor) for t in x):
                raise ValueError("DiT: a tuple input must be (indices, weights), two tensors "
                                 "of shape (B, L, k)")
            indices, weights = x
            if indices.dim() != 3 or indices.shape != weights.shape:
                raise ValueError(f"DiT: indices {tuple(indices.shape)} and weights "
                                 f"{tuple(weights.shape)} must both have shape (B, L, k)")
            if indices.is_floating_point() or not weights.is_floating_point():
                raise ValueError(f"DiT: indices must be integer and weights float, got "
                                 f"{indices.dtype} and {weights.dtype}")
            self._check_length(indices.shape[1])
            self._check_range(indices)
            h = emb.from_topk(indices, weights)
        elif not isinstance(x, Tensor):
            raise ValueError(f"DiT: input of type {type(x).__name__} is not supported; pass "
                             "ids (B, L), logits (B, L, K) or (indices, weights)")
        elif x.dim() == 2:
            if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
                raise ValueError(f"DiT: 2-D input must be integer token ids, got {x.dtype}; "
                                 "pass logits as (B, L, K)")
            self._check_length(x.shape[1])
            self._check_range(x)
            h = emb.from_ids(x)
        elif x.dim() == 3:
            if not x.is_floating_point():
                raise ValueError(f"DiT: 3-D input must be float logits (B, L, K), got "
                                 f"{x.dtype}; pass token ids as (B, L)")
            if x.shape[-1] != vocab:
                raise ValueError(f"DiT: logits have {x.shape[-1]} classes but the model "
                                 f"vocabulary has {vocab}; use a matching tokenizer")
            self._check_length(x.shape[1])
            h = emb.from_logits(x)
        else:
            raise ValueError(f"DiT: input has rank {x.dim()} (shape {tuple(x.shape)}); pass "
                             "ids (B, L), logits (B, L, K) or (indices, weights)")
        # Under autocast the logit mix runs in bf16; the residual stream stays in the
        # parameters' dtype (float32 normally) whatever the input kind.
        return h.to(emb.embedding.dtype)

    def _check_length(self, length: int) -> None:
        if not 1 <= length <= self.config.max_seq_len:
            raise ValueError(f"DiT: sequence length {length} is outside [1, "
                             f"max_seq_len={self.config.max_seq_len}]; shorten the input "
                             "or raise model.max_seq_len")

    def _check_range(self, ids: Tensor) -> None:
        if not self.check_inputs or torch.compiler.is_compiling():
            return
        vocab = self.config.vocab_size
        if bool(((ids < 0) | (ids >= vocab)).any()):
            raise ValueError(f"DiT: token ids span [{int(ids.min())}, {int(ids.max())}] but "
                             f"the vocabulary has {vocab} tokens; use a matching tokenizer")


@contextmanager
def trusted_inputs(model: nn.Module) -> Iterator[None]:
    """Within the block ``model`` (a :class:`DiT`; anything else is left alone) skips its
    token-range check, one device synchronisation per call. For loops that feed the
    model its own draws, once the ids that came from outside have been checked."""
    previous = getattr(model, "check_inputs", None)
    if previous is None:
        yield
        return
    model.check_inputs = False
    try:
        yield
    finally:
        model.check_inputs = previous


def build_model(config: ModelConfig) -> DiT:
    """Build a freshly initialised DiT from a validated config."""
    return DiT(config)
