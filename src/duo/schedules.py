"""Discrete noise schedules ``alpha(t)`` for t in [0, 1] (MATH.md section 1).

``alpha`` decreases from ~1 (clean) at t = 0 to ~0 (pure noise) at t = 1. Every
schedule gives ``alpha(t)``, its derivative ``dalpha(t)`` (negative) and the inverse
``t_from_alpha(alpha)``; all are pure functions of tensors of any shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import Tensor


class Schedule(Protocol):
    """What every schedule provides. All methods map tensors elementwise."""

    def alpha(self, t: Tensor) -> Tensor: ...

    def dalpha(self, t: Tensor) -> Tensor: ...

    def t_from_alpha(self, alpha: Tensor) -> Tensor: ...


def _check_eps(eps: float) -> None:
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"schedule eps={eps!r} must lie in [0, 1); the papers use 1e-3")


@dataclass(frozen=True)
class LogLinear:
    """``alpha_t = 1 - (1 - eps) t``: sigma = -log alpha grows log-linearly."""

    eps: float = 1e-3

    def __post_init__(self) -> None:
        _check_eps(self.eps)

    def alpha(self, t: Tensor) -> Tensor:
        return 1.0 - (1.0 - self.eps) * t

    def dalpha(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -(1.0 - self.eps))

    def t_from_alpha(self, alpha: Tensor) -> Tensor:
        return (1.0 - alpha) / (1.0 - self.eps)


@dataclass(frozen=True)
class Cosine:
    """``alpha_t = 1 - cos(pi/2 (1 - (1 - eps) t))``."""

    eps: float = 1e-3

    def __post_init__(self) -> None:
        _check_eps(self.eps)

    def alpha(self, t: Tensor) -> Tensor:
        return 1.0 - torch.cos(0.5 * math.pi * (1.0 - (1.0 - self.eps) * t))

    def dalpha(self, t: Tensor) -> Tensor:
        return -0.5 * math.pi * (1.0 - self.eps) * torch.sin(
            0.5 * math.pi * (1.0 - (1.0 - self.eps) * t)
        )

    def t_from_alpha(self, alpha: Tensor) -> Tensor:
        inner = torch.acos((1.0 - alpha).clamp(-1.0, 1.0)) / (0.5 * math.pi)
        return (1.0 - inner) / (1.0 - self.eps)


SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "loglinear": LogLinear,
    "cosine": Cosine,
}


def get_schedule(name: str, **kwargs) -> Schedule:
    """Build a schedule by registry name (``loglinear`` or ``cosine``)."""
    if name not in SCHEDULES:
        raise ValueError(
            f"unknown schedule {name!r}; valid schedules: {', '.join(sorted(SCHEDULES))}"
        )
    return SCHEDULES[name](**kwargs)


def sigma_from_alpha(alpha: Tensor) -> Tensor:
    """Time-conditioning signal ``sigma = -log alpha`` (MATH.md section 9)."""
    return -torch.log(alpha.clamp_min(torch.finfo(alpha.dtype).tiny))


def antithetic_times(
    batch_size: int,
    *,
    eps: float = 1e-3,
    offset: int = 0,
    total: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    u: Tensor | None = None,
) -> Tensor:
    """Stratified times ``t_b = (u + b / B) mod 1`` mapped into ``[eps, 1]``. Shape ``(batch_size,)``.

    With data parallelism each rank holds ``batch_size`` rows of a global batch of
    ``total`` rows starting at row ``offset``; passing the same ``u`` on every rank
    (e.g. from a generator seeded identically) stratifies the *global* batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    total = batch_size if total is None else total
    if u is None:
        u = torch.rand((), generator=generator, dtype=torch.float64)
    # On u's device: a u drawn on an accelerator is not copied to the host (a sync).
    b = torch.arange(offset, offset + batch_size, dtype=torch.float64, device=u.device)
    t = torch.remainder(u.double() + b / total, 1.0)
    return (eps + (1.0 - eps) * t).float().to(device)
