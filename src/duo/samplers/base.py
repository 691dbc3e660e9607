"""The sampler contract: a time grid, ``step(...) -> StepOutput``, and conditioning.

A denoiser is any callable ``denoiser(z, alpha_t) -> log_probs`` with ``z`` int64
(B, L), ``alpha_t`` float32 (B,) and log-probabilities (B, L, K) out (for the masked
process already SUBS-parameterised). It may carry ``time_conditioned = False`` to allow
prediction caching. Samplers never see a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import Tensor

from .grid import StepTime, TimeGrid
from .workspace import Workspace

Denoiser = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class StepOutput:
    """``z``: (B, L) ids after the step; ``log_probs``: the prediction used (B, L, K),
    unfiltered; ``nfe``: network evaluations spent (0 when a cached prediction served)."""

    z: Tensor
    log_probs: Tensor
    nfe: int


@dataclass(frozen=True)
class GenerationOutput:
    """``tokens``: (B, L) ids; ``intermediates``: the states from the prior to the end
    (N + 1 tensors on the CPU) when requested; ``nfe``: network evaluations."""

    tokens: Tensor
    intermediates: list[Tensor] | None
    nfe: int


class Sampler(Protocol):
    """What :func:`duo.samplers.generate` needs from a diffusion sampler."""

    mask_id: int | None  # the absorbing process's mask id, None for the uniform one
    cache_predictions: bool
    default_steps: int

    def prior(self, shape: tuple[int, int], vocab_size: int,
              generator: torch.Generator | None, device) -> Tensor: ...

    def time_grid(self, steps: int) -> TimeGrid: ...

    def step(self, denoiser: Denoiser, z: Tensor, time: StepTime, *,
             generator: torch.Generator | None = None,
             prediction: Tensor | None = None,
             workspace: Workspace | None = None) -> StepOutput:
        """One reverse step from ``time.t`` to ``time.s``; ``prediction`` replaces the
        denoiser call (cached log-probs), ``workspace`` holds scratch buffers."""


def predict(denoiser: Denoiser, z: Tensor, alpha_t: float,
            prediction: Tensor | None) -> tuple[Tensor, int]:
    """Run the denoiser unless a prediction is given; returns (log_probs, nfe)."""
    if prediction is not None:
        return prediction, 0
    alpha = torch.full((z.shape[0],), alpha_t, dtype=torch.float32, device=z.device)
    log_probs = denoiser(z, alpha)
    is_tensor = isinstance(log_probs, Tensor)
    if not is_tensor or log_probs.dim() != 3 or log_probs.shape[:2] != z.shape:
        shape = tuple(log_probs.shape) if is_tensor else type(log_probs).__name__
        raise ValueError(f"denoiser returned {shape} for z of shape {tuple(z.shape)}; it must "
                         "return log-probabilities of shape (B, L, K)")
    return log_probs, 1


@dataclass(frozen=True)
class Conditioning:
    """Clamped positions: ``mask`` bool (B, L) or (L,), ``ids`` int64 of the same shape
    (values at unclamped positions are ignored). They are set before the first step and
    re-imposed after every step, so they never change (prefix, suffix, infilling)."""

    mask: Tensor
    ids: Tensor

    @classmethod
    def from_mask(cls, mask: Tensor, ids: Tensor) -> "Conditioning":
        mask = torch.as_tensor(mask)
        ids = torch.as_tensor(ids)
        if mask.dtype != torch.bool:
            raise ValueError(f"clamp mask has dtype {mask.dtype}; pass a bool tensor")
        if mask.dim() not in (1, 2) or ids.shape != mask.shape:
            raise ValueError(f"clamp mask {tuple(mask.shape)} and ids {tuple(ids.shape)} must "
                             "share one shape, (L,) or (B, L)")
        if ids.is_floating_point():
            raise ValueError(f"clamp ids have dtype {ids.dtype}; pass integer token ids")
        return cls(mask, ids.long())

    @classmethod
    def prefix(cls, ids: Tensor, seq_len: int) -> "Conditioning":
        """Clamp the first ``P`` positions to ``ids`` (P,) or (B, P)."""
        return cls._span(ids, seq_len, at_start=True)

    @classmethod
    def suffix(cls, ids: Tensor, seq_len: int) -> "Conditioning":
        """Clamp the last ``P`` positions to ``ids`` (P,) or (B, P)."""
        return cls._span(ids, seq_len, at_start=False)

    @classmethod
    def _span(cls, ids: Tensor, seq_len: int, at_start: bool) -> "Conditioning":
        ids = torch.as_tensor(ids)
        if ids.dim() not in (1, 2):
            raise ValueError(f"clamp ids have shape {tuple(ids.shape)}; expected (P,) or (B, P)")
        n = ids.shape[-1]
        if n > seq_len:
            where = "prefix" if at_start else "suffix"
            raise ValueError(f"{where} of {n} tokens is longer than seq_len={seq_len}; "
                             "shorten it or raise seq_len")
        full = torch.zeros(ids.shape[:-1] + (seq_len,), dtype=torch.long, device=ids.device)
        mask = torch.zeros(full.shape, dtype=torch.bool, device=ids.device)
        span = slice(0, n) if at_start else slice(seq_len - n, seq_len)
        full[..., span] = ids
        mask[..., span] = True
        return cls.from_mask(mask, full)

    def resolve(self, batch_size: int, seq_len: int, vocab_size: int,
                device: torch.device | str | None) -> "Conditioning":
        """Broadcast to (B, L) on ``device`` and check the ids; raises one-line errors."""
        if self.mask.shape[-1] != seq_len or (self.mask.dim() == 2
                                               and self.mask.shape[0] not in (1, batch_size)):
            raise ValueError(f"clamp has shape {tuple(self.mask.shape)}; expected ({seq_len},) "
                             f"or ({batch_size}, {seq_len})")
        mask = self.mask.to(device).expand(batch_size, seq_len)
        ids = self.ids.to(device).expand(batch_size, seq_len)
        clamped = ids[mask]
        if clamped.numel() and (int(clamped.min()) < 0 or int(clamped.max()) >= vocab_size):
            raise ValueError(f"clamped ids span [{int(clamped.min())}, {int(clamped.max())}], "
                             f"outside the vocabulary [0, {vocab_size})")
        return Conditioning(mask, ids)

    def apply(self, z: Tensor) -> Tensor:
        """``z`` (B, L) with the clamped positions set."""
        return torch.where(self.mask, self.ids, z)
