"""What a method's forward process is, as one object that sampling and evaluation ask.

A method carries ``process`` (a :class:`ProcessKind`); code that needs to know whether a
model is a diffusion model, how to noise data for it, or which sampler to use by default
asks that object instead of comparing names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import absorbing, uniform


@dataclass(frozen=True)
class ProcessKind:
    """``kind``: "uniform" (USDM, Duo), "absorbing" (masked, MDLM, D3PM), "absorbing-score"
    (masked, but the network gives log score ratios instead of a denoiser: SEDD) or
    "causal" (AR, no forward noise). ``default_sampler`` names the sampler used when none
    is asked for."""

    kind: str
    default_sampler: str

    @property
    def diffusion(self) -> bool:
        """Whether the model denoises a forward process (its perplexity is a bound)."""
        return self.kind != "causal"

    @property
    def autoregressive(self) -> bool:
        return self.kind == "causal"

    @property
    def masked(self) -> bool:
        """Whether noised tokens become a mask id (absorbing) rather than random tokens."""
        return self.kind in ("absorbing", "absorbing-score")

    @property
    def score(self) -> bool:
        """Whether the network gives log score ratios ``log p_t(y) / p_t(z)`` (SEDD): the
        samplers written for it take a score callable, not a denoiser."""
        return self.kind == "absorbing-score"

    def noise(self, x: Tensor, alpha: Tensor, vocab_size: int, mask_id: int | None,
              generator: torch.Generator | None = None) -> Tensor:
        """``z_t ~ q_t(. | x)``: x (B, L) ids, alpha (B, 1) or (B, L) -> (B, L) ids."""
        if self.kind == "uniform":
            return uniform.sample_zt(x, alpha, vocab_size, generator=generator)
        if self.masked:
            return absorbing.sample_zt(x, alpha, mask_id, generator=generator)
        raise ValueError(f"the {self.kind} process has no forward noise; it is not a diffusion process")

    def __str__(self) -> str:
        return self.kind


UNIFORM = ProcessKind("uniform", default_sampler="ancestral")
ABSORBING = ProcessKind("absorbing", default_sampler="mdlm")
CAUSAL = ProcessKind("causal", default_sampler="ar")
# D3PM: the masked process in discrete time, sampled on its own integer grid by default.
ABSORBING_DISCRETE = ProcessKind("absorbing", default_sampler="d3pm")
ABSORBING_SCORE = ProcessKind("absorbing-score", default_sampler="sedd_analytic")
