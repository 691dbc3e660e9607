"""Two-level categorical draws over blocks of tokens.

A draw from weights over K tokens picks a block of :data:`BLOCK` consecutive tokens by
its mass, then a token inside that block by a float64 cumulative sum of the block only.
Block masses are one cheap reduction (and can be kept from an earlier pass over the
row, see :class:`duo.samplers.filters.Thresholds`), so a draw never needs a cumulative
sum, or a float64 copy, of a whole (rows, K) tensor.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

BLOCK = 256  # tokens per block


def block_sums(weights: Tensor, out: Tensor | None = None) -> Tensor:
    """Masses of consecutive blocks of :data:`BLOCK` tokens: (r, K) -> (r, ceil(K / BLOCK)),
    summed in the weights' dtype (a float64 sum would first copy the rows to float64),
    into ``out`` if given (so that chunks of rows fill one tensor without a ``cat``)."""
    r, vocab = weights.shape
    nb = vocab // BLOCK
    main = nb * BLOCK
    if out is None:
        out = weights.new_empty((r, -(-vocab // BLOCK)))
    torch.sum(weights[:, :main].unflatten(1, (nb, BLOCK)), -1, out=out[:, :nb])
    if main < vocab:
        torch.sum(weights[:, main:], -1, keepdim=True, out=out[:, nb:])
    return out


def pick(block_mass: Tensor, u: Tensor, vocab: int, inner: Callable[[Tensor], Tensor]) -> Tensor:
    """Token ids (r,) drawn with uniforms ``u`` (r,): a block by ``block_mass`` (r, nb),
    then a token by ``inner(cols)``, the float64 weights (r, BLOCK) of the token ids
    ``cols`` (r, BLOCK) of the chosen blocks (ids past the vocabulary are clamped to its
    last token and get weight zero). A zero-weight token is never drawn."""
    cum = block_mass.double().cumsum_(-1)
    target = u * cum[:, -1]
    block = torch.searchsorted(cum, target[:, None], right=True).clamp_max(cum.shape[1] - 1)
    before = torch.where(block > 0, cum.gather(1, (block - 1).clamp_min(0)), 0.0)
    cols = block * BLOCK + torch.arange(BLOCK, device=block_mass.device)
    weights = torch.where(cols < vocab, inner(cols.clamp_max(vocab - 1)), 0.0)
    running = weights.cumsum_(-1)
    j = torch.searchsorted(running, target[:, None] - before, right=True)
    # Block masses and the in-block cumulative sum round differently: never step past
    # the block's last positive weight.
    last = (running < running[:, -1:]).sum(-1, keepdim=True)
    return cols.gather(1, torch.minimum(j, last)).squeeze(1)


def blocked_draw(weights: Tensor, u: Tensor) -> Tensor:
    """Categorical draws from non-negative weights (r, K) with uniforms u (r,): (r,) ids."""
    return pick(block_sums(weights), u, weights.shape[1], lambda cols: weights.gather(1, cols).double())
