"""Ancestral sampling (MATH.md sections 7, 8) for the uniform and the masked process.

Each step runs the denoiser at ``(z, alpha(t_i))``, optionally filters ``x_theta``
(top-k, top-p), and draws every position from the posterior towards ``t_{i+1}``. The
last step removes the remaining noise: ``tail="ancestral"`` uses ``alpha_s = 1``,
``tail="greedy"`` takes ``argmax x_theta`` (for the masked process: fills the masks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .base import Denoiser, StepOutput, predict
from .filters import check_filter, check_nucleus, filter_active, filter_probs, row_thresholds
from .grid import StepTime, TimeGrid, time_grid
from .mixture import draw, x_at_z
from .processes import Process, get_process
from .workspace import Workspace

TAILS = ("ancestral", "greedy")


def check_common(tail: str, top_p: float, top_k: int, eps: float, default_steps: int) -> None:
    if tail not in TAILS:
        raise ValueError(f"unknown tail {tail!r}; valid tails: {', '.join(TAILS)}")
    check_filter(top_p, top_k)
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps={eps!r} must lie in (0, 1); the samplers use 1e-5")
    if isinstance(default_steps, bool) or not isinstance(default_steps, int) or default_steps < 1:
        raise ValueError(f"default_steps={default_steps!r} must be an integer >= 1")


def reverse_step(
    process: Process,
    denoiser: Denoiser,
    z: Tensor,
    time: StepTime,
    *,
    generator: torch.Generator | None,
    prediction: Tensor | None,
    top_p: float,
    top_k: int,
    tail: str,
    kappa: float | None = None,
    workspace: Workspace | None = None,
    nucleus: str = "exact",
    dense: bool | None = None,
) -> StepOutput:
    """One reverse step; ``kappa`` (Psi-samplers) mixes in the corrector; ``nucleus``
    chooses the exact top-p filter or the bounded approximation (:mod:`.filters`);
    ``dense`` chooses the draw without host synchronisation (:func:`.mixture.draw`)."""
    log_probs, nfe = predict(denoiser, z, time.alpha_t, prediction)
    if time.last and tail == "greedy":
        return StepOutput(process.greedy(log_probs, z), log_probs, nfe)
    a_s = 1.0 if time.last else time.alpha_s
    vocab = log_probs.shape[-1]
    thresholds = xz = None
    if process.needs_x_at_z:
        if filter_active(top_p, top_k, vocab):
            thresholds = row_thresholds(log_probs.reshape(-1, vocab), top_p, top_k, workspace, nucleus)
        xz = x_at_z(log_probs, z, thresholds)
    mixture = process.posterior(z, xz, a_s, time.alpha_t, vocab)
    if kappa is not None:
        mixture = mixture.mix(process.corrector(z, xz, a_s, time.alpha_t, vocab), kappa)
    z_new = draw(mixture, log_probs, z, mask_id=process.mask_id, uses_noise=process.uses_noise,
                 thresholds=thresholds, top_p=top_p, top_k=top_k, generator=generator,
                 workspace=workspace, nucleus=nucleus, dense=dense)
    return StepOutput(z_new, log_probs, nfe)


def step_probs(
    process: Process,
    log_probs: Tensor,
    z: Tensor,
    alpha_s: float,
    alpha_t: float,
    *,
    kappa: float | None = None,
    top_p: float = 1.0,
    top_k: int = 0,
) -> Tensor:
    """Dense reference of one step's distribution, built on ``duo.processes`` posteriors.

    ``q = kappa * posterior + (1 - kappa) * corrector`` (plain posterior if kappa is None).
    log_probs (B, L, K), z (B, L) -> (B, L, K) float64. For tests and small K only.
    """
    x = filter_probs(log_probs.double().exp(), top_p, top_k)
    post = process.dense_posterior(x, z, alpha_s, alpha_t)
    if kappa is None:
        return post
    return kappa * post + (1.0 - kappa) * process.dense_corrector(x, z, alpha_s, alpha_t)


@dataclass(frozen=True)
class AncestralSampler:
    """Ancestral sampling; ``process`` is "uniform" (Duo) or "absorbing" (MDLM, needs ``mask_id``).

    ``cache_predictions`` reuses the last prediction while ``z`` is unchanged; it is only
    valid for a denoiser without time conditioning (checked by ``generate``).
    ``nucleus="approx"`` keeps the whole probability bucket (2.2% wide) where top-p's
    mass is reached instead of sorting it: cheaper at large K, total-variation distance
    to the exact filter at most :func:`duo.samplers.filters.nucleus_tv_bound`.
    ``dense_draw`` draws every position from the prediction and picks afterwards, which
    gives the same tokens without a host synchronisation per step; None (default) does so
    on accelerators for unfiltered draws (:func:`duo.samplers.mixture.draw`).
    """

    process: str = "uniform"
    mask_id: int | None = None
    top_p: float = 1.0
    top_k: int = 0
    tail: str = "ancestral"
    eps: float = 1e-5
    cache_predictions: bool = False
    default_steps: int = 1024
    nucleus: str = "exact"
    dense_draw: bool | None = None
    _process: Process = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_common(self.tail, self.top_p, self.top_k, self.eps, self.default_steps)
        check_nucleus(self.nucleus)
        proc = get_process(self.process, self.mask_id)
        object.__setattr__(self, "_process", proc)
        object.__setattr__(self, "mask_id", proc.mask_id)

    def prior(self, shape, vocab_size, generator, device) -> Tensor:
        return self._process.prior(shape, vocab_size, generator, device)

    def time_grid(self, steps: int) -> TimeGrid:
        return time_grid(steps, eps=self.eps)

    def step(self, denoiser: Denoiser, z: Tensor, time: StepTime, *,
             generator: torch.Generator | None = None,
             prediction: Tensor | None = None,
             workspace: Workspace | None = None) -> StepOutput:
        return reverse_step(self._process, denoiser, z, time, generator=generator,
                            prediction=prediction, top_p=self.top_p, top_k=self.top_k,
                            tail=self.tail, workspace=workspace, nucleus=self.nucleus,
                            dense=self.dense_draw)


def greedy_tail_sampler(**options) -> AncestralSampler:
    """Ancestral sampling whose last step takes ``argmax x_theta``."""
    return AncestralSampler(**{"tail": "greedy", **options})


def mdlm_sampler(**options) -> AncestralSampler:
    """MDLM ancestral sampling on the masked process (pass ``mask_id``)."""
    return AncestralSampler(**{"process": "absorbing", **options})
