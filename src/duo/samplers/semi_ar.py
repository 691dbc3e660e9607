"""Semi-autoregressive generation past the model's context (as the SEDD / MDLM papers do).

A sequence of ``length = context + k * stride`` tokens is generated in ``k + 1`` windows
of ``context`` tokens: the first window is an ordinary sample; each later window slides by
``stride`` new positions and clamps its first ``context - stride`` positions to the last
tokens already generated (a :class:`~duo.samplers.base.Conditioning`), so any diffusion
sampler runs it unchanged. The clamped tokens never change, and the new tokens of each
window are appended right after the previous ones: nothing is repeated or dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..utils.seeding import derive_seed
from .base import Conditioning

# window(clamp or None, seed) -> ((B, context) ids, network evaluations)
Window = Callable[[Conditioning | None, int], tuple[Tensor, int]]


@dataclass(frozen=True)
class SemiArOutput:
    """``tokens`` (B, length); ``nfe``: network evaluations per sample over all windows;
    ``lengths``: tokens per sample before its first EOS after position 0 (``length`` if
    none), the official code's "sequence length"."""

    tokens: Tensor
    nfe: int
    windows: int
    lengths: list[int]


def default_stride(context: int) -> int:
    return max(1, context // 2)


def check_semi_ar(length: int, context: int, stride: int | None) -> int:
    """Number of windows for ``length`` tokens; one-line errors for a stride that does not
    fit the context or a length no whole number of strides reaches."""
    stride = default_stride(context) if stride is None else stride
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride={stride!r} must be an integer >= 1")
    if stride >= context:
        raise ValueError(f"stride={stride} must be smaller than the model's context ({context}): each window "
                         f"keeps context - stride generated tokens; use stride <= {context - 1}")
    if length < context or (length - context) % stride:
        k = max(0, -(-(length - context) // stride))
        raise ValueError(f"length={length} is not reachable with context {context} and stride {stride}: it must be "
                         f"context + k * stride (e.g. length={context + k * stride})")
    return 1 + (length - context) // stride


def first_eos_lengths(tokens: Tensor, eos_id: int | None) -> list[int]:
    """Per row: the index of the first ``eos_id`` after position 0, else the row length."""
    n = tokens.shape[1]
    if eos_id is None:
        return [n] * tokens.shape[0]
    hit = tokens[:, 1:] == eos_id
    first = torch.where(hit.any(1), hit.float().argmax(1) + 1, torch.full_like(hit[:, 0], n, dtype=torch.long))
    return first.tolist()


@torch.no_grad()
def semi_autoregressive(
    window: Window,
    *,
    batch_size: int,
    length: int,
    context: int,
    stride: int | None = None,
    seed: int = 0,
    eos_id: int | None = None,
    stop_at_eos: bool = False,
) -> SemiArOutput:
    """Generate (B, length) ids window by window with ``window(clamp, seed)``.

    Window ``w`` uses seed ``seed`` (w = 0) or ``derive_seed(seed, w, 1)``: a part of its
    own, so a caller that seeds batch ``i`` with ``derive_seed(seed, i)`` never gives one
    batch's later window the stream of another batch's first. With ``stop_at_eos`` (and
    ``eos_id``), generation stops once every row holds an EOS after position 0; the
    remaining positions are filled with EOS.
    """
    stride = default_stride(context) if stride is None else stride
    n_windows = check_semi_ar(length, context, stride)
    keep = context - stride
    first, nfe = window(None, seed)
    out = torch.empty((batch_size, length), dtype=torch.long, device=first.device)
    out[:, :context] = first
    pos = context
    for w in range(1, n_windows):
        if stop_at_eos and eos_id is not None and max(first_eos_lengths(out[:, :pos], eos_id)) < pos:
            out[:, pos:] = eos_id
            break
        clamp = Conditioning.prefix(out[:, pos - keep:pos], context)
        tokens, calls = window(clamp, derive_seed(seed, w, 1))
        assert torch.equal(tokens[:, :keep], out[:, pos - keep:pos]), "a window moved its clamped tokens"
        out[:, pos:pos + stride] = tokens[:, keep:]
        pos += stride
        nfe += calls
    return SemiArOutput(out, nfe, n_windows, first_eos_lengths(out, eos_id))
