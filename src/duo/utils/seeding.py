"""One way to derive seeds: a fixed function of its integer parts.

Training steps, evaluation batches, sampling batches and data epochs all draw their
randomness from ``derive_seed(seed, *parts)``, so a result never depends on what ran
before it (a resumed run repeats the steps an uninterrupted one takes) and no two part
tuples collide by accident (``(seed, epoch + 1)`` is not ``(seed + 1, epoch)``).
"""

from __future__ import annotations

import torch

# Distinct primes per position make the mix a polynomial in the parts; the final odd
# multiplier (2^64 / golden ratio) spreads neighbouring tuples across the 63-bit range.
_PRIMES = (1_000_003, 1_000_033, 1_000_037, 1_000_039, 1_000_081, 1_000_099)
_GOLDEN = 0x9E3779B97F4A7C15
_MODULUS = 2**63 - 1


def derive_seed(seed: int, *parts: int) -> int:
    """A seed in ``[0, 2^63 - 1)`` that depends only on ``seed`` and ``parts`` (at most 6),
    not on Python's hash seed or on earlier draws."""
    if len(parts) > len(_PRIMES):
        raise ValueError(f"derive_seed takes at most {len(_PRIMES)} parts, got {len(parts)}")
    x = int(seed)
    for prime, part in zip(_PRIMES, parts):
        x = x * prime + int(part)
    return (x * _GOLDEN) % _MODULUS


def generator(seed: int, *parts: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with :func:`derive_seed`."""
    return torch.Generator(device=torch.device(device)).manual_seed(derive_seed(seed, *parts))
