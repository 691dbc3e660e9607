"""Row chunks sized for the CPU cache.

Elementwise work over a (rows, K) tensor with K ~ 50,000 (a vocabulary) is limited by
memory traffic. On CPU, a pass over a chunk of about two million entries runs from
the cache, several times faster than the same pass over the whole tensor, so
samplers and losses loop over such chunks; elsewhere one chunk of up to 32M entries
keeps the number of kernel launches small.
"""

from __future__ import annotations

import torch

CPU_CHUNK = 1 << 21  # entries per chunk of rows on CPU (up to 16 MB per float64 buffer)
DEVICE_CHUNK = 1 << 25


def row_chunks(n: int, width: int, device: torch.device | str) -> list[slice]:
    """Slices of ``n`` rows of ``width`` entries each, about :data:`CPU_CHUNK` entries per
    slice on CPU and :data:`DEVICE_CHUNK` elsewhere (at least one row per slice)."""
    budget = CPU_CHUNK if torch.device(device).type == "cpu" else DEVICE_CHUNK
    rows = max(1, budget // width)
    return [slice(i, min(i + rows, n)) for i in range(0, n, rows)]
