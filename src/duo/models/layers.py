"""Building blocks of the DiT. Module and parameter names match the published
Duo / MDLM checkpoints (DESIGN.md), so renaming anything here breaks weight loading."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FREQUENCY_DIM = 256  # sinusoidal features of sigma, fixed by the published sigma_map.mlp.0
MAX_PERIOD = 10_000.0
ROTARY_BASE = 10_000.0


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation ``x (1 + scale) + shift``; shift/scale broadcast as (B, 1, D).

    A multiply and an add rather than one addcmul: addcmul's vectorised loop and scalar
    tail round differently (fused multiply-add), so results would depend on how the
    elements split across threads, and runs with other thread counts would drift apart.
    """
    return x * (1.0 + scale) + shift


def aligned_linear(x: Tensor, weight: Tensor, bias: Tensor | None, multiple: int,
                   padded: bool = False) -> Tensor:
    """``F.linear(x, weight, bias)`` (..., K) computed with the K output rows padded to a
    multiple of ``multiple``; returns a (..., K) view of the (..., K_pad) result, or with
    ``padded=True`` the (..., K_pad) result itself, whose trailing columns are zeros.

    cuBLAS falls back to slow kernels when a matrix's leading dimension is not a multiple
    of 8 (bf16): with K = 50,257 (GPT-2's vocabulary) the output layer's backward took
    8 ms of a 60 ms H100 step. The padding rows are zeros and get no gradient.
    """
    k = weight.shape[0]
    pad = -k % multiple
    if pad == 0:
        return F.linear(x, weight, bias)
    bias = None if bias is None else F.pad(bias, (0, pad))
    out = F.linear(x, F.pad(weight, (0, 0, 0, pad)), bias)
    return out if padded else out[..., :k]


class LayerNorm(nn.Module):
    """LayerNorm with a weight and no bias, computed in float32.

    Normalising bf16 activations loses precision in the variance, so autocast is
    switched off. The result keeps the input's dtype: float32 for the usual float32
    residual stream (as in the published model), bf16 for a model cast to bf16.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = F.layer_norm(x.float(), (self.dim,), self.weight.float())
        return out.to(x.dtype)


def timestep_embedding(sigma: Tensor, dim: int = FREQUENCY_DIM,
                       max_period: float = MAX_PERIOD) -> Tensor:
    """Sinusoidal features ``[cos(sigma f_j), sin(sigma f_j)]`` with
    ``f_j = max_period^(-j / (dim/2))``, j = 0..dim/2-1. (B,) -> (B, dim), float32."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=sigma.device) / half
    )
    args = sigma.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """``sigma_map``: sinusoidal features -> Linear -> SiLU -> Linear (B, C)."""

    def __init__(self, cond_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(FREQUENCY_DIM, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim)
        )

    def forward(self, sigma: Tensor) -> Tensor:
        # Features are built in float32 (large sigma * f needs it), then meet the
        # weights in their dtype so a model cast to bf16 still runs without autocast.
        return self.mlp(timestep_embedding(sigma).to(self.mlp[0].weight.dtype))


class TokenEmbedding(nn.Module):
    """``vocab_embed``: a bare ``embedding`` parameter (K, D), not an ``nn.Embedding``,
    because the published key is ``vocab_embed.embedding``."""

    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(vocab_size, dim))
        nn.init.kaiming_uniform_(self.embedding, a=math.sqrt(5))

    def from_ids(self, ids: Tensor) -> Tensor:
        """(B, L) ids -> (B, L, D)."""
        return F.embedding(ids, self.embedding)

    def from_logits(self, logits: Tensor) -> Tensor:
        """(B, L, K) logits -> probability-weighted sum of rows (B, L, D)."""
        # Softmax in float32: with a low temperature the logits are huge and a bf16
        # softmax would round the near-one-hot weights badly.
        probs = torch.softmax(logits.float(), dim=-1)
        return probs.to(self.embedding.dtype) @ self.embedding

    def from_topk(self, indices: Tensor, weights: Tensor) -> Tensor:
        """(B, L, k) indices and weights -> sum_j weights_j * E[indices_j] (B, L, D).

        ``embedding_bag`` never materialises the (B, L, k, D) gather.
        """
        b, l, k = indices.shape
        bag = F.embedding_bag(
            indices.reshape(-1, k), self.embedding,
            per_sample_weights=weights.reshape(-1, k).to(self.embedding.dtype), mode="sum",
        )
        return bag.view(b, l, -1)


class Rotary(nn.Module):
    """Rotary position embedding (base 10,000) for heads of size ``head_dim``.

    ``inv_freq`` is a persistent buffer only because published checkpoints contain it.
    cos/sin are recomputed per call: (L, head_dim/2) work is negligible, and no cache
    keeps this module free of state that torch.compile or device moves could trip on.
    """

    def __init__(self, head_dim: int, base: float = ROTARY_BASE) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=True)

    def cos_sin(self, seq_len: int, device: torch.device, offset: int = 0) -> tuple[Tensor, Tensor]:
        """Each (L, head_dim), float32, with the frequencies repeated over both halves, for
        positions ``offset .. offset + L - 1``."""
        inv_freq = self.inv_freq.to(device=device, dtype=torch.float32)
        t = torch.arange(offset, offset + seq_len, device=device, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, L, ..., d) queries and/or keys (e.g. (B, L, H, d), or (B, L, 2, H, d) for
    both at once) by cos / sin (L, d); computed in float32, returned in x's dtype.

    ``x cos + rotate_half(x) sin`` with ``rotate_half((x1, x2)) = (-x2, x1)`` over the two
    halves of the last dim (not interleaved), written as a multiply, then the half-size
    products subtracted from / added to the halves in place: the same roundings as the
    textbook form (bit for bit, whatever the thread count; no addcmul, see :func:`modulate`)
    without building rotate_half(x).
    """
    shape = (1, x.shape[1]) + (1,) * (x.dim() - 3) + (x.shape[-1],)
    cos, sin = cos.view(shape), sin.view(shape)
    xf = x.float()
    half = x.shape[-1] // 2
    out = xf * cos
    out[..., :half].sub_(xf[..., half:] * sin[..., :half])
    out[..., half:].add_(xf[..., :half] * sin[..., half:])
    return out.to(x.dtype)
