"""Autoregressive sampling with temperature, top-k and top-p (the AR baseline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .base import GenerationOutput
from .filters import check_filter, filter_probs
from .loop import make_generator
from .mixture import inverse_cdf

NextTokenLogits = Callable[[Tensor], Tensor]


class CachedDecoder(Protocol):
    """A causal model that keeps keys and values of the positions it has seen."""

    def new_cache(self, batch: int, max_len: int, device: Any = None) -> Any: ...

    def decode(self, ids: Tensor, cache: Any) -> Tensor:
        """Logits (B, n, K) of new ids (B, n) following the cached positions."""


def _context(batch_size: int, seq_len: int, prefix: Tensor | None, bos_id: int | None,
             device) -> Tensor:
    parts = []
    if bos_id is not None:
        parts.append(torch.full((batch_size, 1), int(bos_id), dtype=torch.long, device=device))
    if prefix is not None:
        prefix = torch.as_tensor(prefix, device=device).long()
        if prefix.dim() == 1:
            prefix = prefix.expand(batch_size, -1)
        if prefix.dim() != 2 or prefix.shape[0] != batch_size:
            raise ValueError(f"prefix has shape {tuple(prefix.shape)}; expected (P,) or "
                             f"({batch_size}, P)")
        parts.append(prefix)
    if not parts:
        raise ValueError("autoregressive sampling needs a context: pass prefix or bos_id")
    ids = torch.cat(parts, dim=1)
    if ids.shape[1] > seq_len:
        raise ValueError(f"prefix of {ids.shape[1]} tokens (with BOS) is longer than "
                         f"seq_len={seq_len}; shorten it or raise seq_len")
    return ids


@torch.no_grad()
def generate_ar(
    next_token_logits: NextTokenLogits,
    *,
    batch_size: int,
    seq_len: int,
    prefix: Tensor | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    bos_id: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    decoder: CachedDecoder | None = None,
) -> GenerationOutput:
    """Left-to-right sampling: with ``decoder``, each token costs one position's work
    (a key/value cache); without, the whole context is recomputed each token. Both give
    the same tokens for a seed.

    Args:
        next_token_logits: ``ids (B, L') -> logits (B, L', K)`` of a causal model;
            the last position gives the next token.
        decoder: the same model with a key/value cache (``new_cache`` / ``decode``).
        prefix: (P,) or (B, P) ids kept at the start (after BOS when ``bos_id`` is set).
        temperature: > 0 divides the logits; 0 takes the argmax.
    Returns:
        ``GenerationOutput(tokens (B, seq_len) including BOS and prefix, None, nfe)``.
    """
    check_filter(top_p, top_k)
    if not temperature >= 0.0:
        raise ValueError(f"temperature={temperature!r} must be >= 0 (0 means greedy)")
    gen = make_generator(generator, seed, device)
    ids = _context(batch_size, seq_len, prefix, bos_id, device)
    start = ids.shape[1]
    cache = decoder.new_cache(batch_size, seq_len, ids.device) if decoder is not None else None
    tokens = torch.empty((batch_size, seq_len), dtype=torch.long, device=ids.device)
    tokens[:, :start] = ids
    new = ids  # what the network has not seen yet: the whole context, then one token
    for pos in tqdm(range(start, seq_len), disable=not progress, desc="sampling"):
        if cache is None:
            logits = next_token_logits(tokens[:, :pos])[:, -1].double()  # (B, K)
        else:
            logits = decoder.decode(new, cache)[:, -1].double()
        u = torch.rand(batch_size, dtype=torch.float64, generator=gen, device=ids.device)
        if temperature == 0.0:
            nxt = logits.argmax(-1)
        else:
            probs = filter_probs((logits / temperature).softmax(-1)[:, None], top_p, top_k)
            nxt = inverse_cdf(probs[:, 0], u)
        tokens[:, pos] = nxt
        new = tokens[:, pos:pos + 1]
    return GenerationOutput(tokens, None, seq_len - start)


@dataclass(frozen=True)
class ARSampler:
    """Registry entry for autoregressive sampling; run it with :meth:`generate`."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    kv_cache: bool = True  # decode with a key/value cache when the model offers one

    def __post_init__(self) -> None:
        check_filter(self.top_p, self.top_k)
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature={self.temperature!r} must be >= 0 (0 means greedy)")

    def generate(self, next_token_logits: NextTokenLogits, **kwargs) -> GenerationOutput:
        if not self.kv_cache:
            kwargs["decoder"] = None
        return generate_ar(next_token_logits, temperature=self.temperature,
                           top_p=self.top_p, top_k=self.top_k, **kwargs)
