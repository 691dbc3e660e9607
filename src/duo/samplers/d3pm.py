"""D3PM's ancestral sampler: the masked posterior on the model's own integer time grid.

A D3PM model is trained at ``t = i/T`` only, so the ``steps`` (<= T) reverse steps run
between grid points ``round(T (1 - j/steps)) / T``; the last step goes to the clean data
(``alpha_s = 1``, step 1 of D3PM's chain), as MDLM's ancestral sampler does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .ancestral import AncestralSampler
from .grid import TimeGrid


@dataclass(frozen=True)
class D3pmSampler(AncestralSampler):
    """Ancestral sampling of the masked process on D3PM's grid of ``T`` steps."""

    process: str = "absorbing"
    T: int = 1000
    default_steps: int | None = None  # None = T

    def __post_init__(self) -> None:
        if isinstance(self.T, bool) or not isinstance(self.T, int) or self.T < 1:
            raise ValueError(f"T={self.T!r} must be an integer >= 1")
        if self.default_steps is None:
            object.__setattr__(self, "default_steps", self.T)
        super().__post_init__()

    def time_grid(self, steps: int) -> TimeGrid:
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= self.T:
            raise ValueError(f"steps={steps!r} must be an integer in [1, {self.T}] (D3PM's T)")
        k = torch.round(self.T * (1.0 - torch.arange(steps + 1, dtype=torch.float64) / steps))
        t = k / self.T
        t[-1] = self.eps  # only the paper protocol evaluates this point (noise removal)
        return TimeGrid(t, ("middle",) * steps)
