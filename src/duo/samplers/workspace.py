"""Scratch buffers reused across sampling steps.

On CPU a fresh (B, L, K) tensor is mapped page by page by the operating system: at
K = 50,257 that costs about ten times the arithmetic written into it, as much as a small
network's forward pass. The filtering and drawing code therefore writes into buffers
kept for the whole generation. On accelerators the caching allocator already makes
allocation cheap, so buffers are not kept there.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class Workspace:
    """Named flat buffers, grown on demand; ``get`` returns a view of the requested shape.

    Not thread-safe: use one workspace per generation loop.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype,
            device: torch.device) -> Tensor:
        numel = math.prod(shape)
        if torch.device(device).type != "cpu":
            return torch.empty(shape, dtype=dtype, device=device)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            buf = torch.empty(numel, dtype=dtype, device=device)
            self._buffers[name] = buf
        return buf[:numel].view(shape)
