"""SEDD's samplers for the masked process (Lou et al. 2024): analytic (Tweedie
tau-leaping) and Euler steps driven by a score model.

The callable they see is ``score(z (B, L), alpha_t (B,)) -> log score ratios (B, L, K)``
(``log s_y = log p_t(z with y) / p_t(z)``, see ``duo.methods.sedd``), not a denoiser. A
step from ``t`` to ``s`` (``dsigma = sigma_t - sigma_s = log(alpha_s / alpha_t)``) leaves
unmasked tokens alone and moves a masked one to token ``y`` with probability

    analytic:  s_y (e^dsigma - 1)      (exact for the exact score: the masked posterior)
    Euler:     s_y dsigma              (first order in the step)

and keeps it masked with the rest (clipped at 0 when the model's scores overshoot). The
last step removes the noise: every masked position draws ``y`` with probability
proportional to ``s_y``. Each step is a :class:`~duo.samplers.mixture.Mixture` of
"keep", "mask" and the normalised score, drawn without any (B, L, K) float64 tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import StepOutput, predict
from .grid import StepTime, TimeGrid, time_grid
from .mixture import Mixture, draw
from .workspace import Workspace

KINDS = ("analytic", "euler")


def _rate(kind: str, alpha_s: float, alpha_t: float) -> float:
    dsigma = math.log(alpha_s) - math.log(alpha_t)
    return math.expm1(dsigma) if kind == "analytic" else dsigma


def _masked_scores(log_score: Tensor, mask_id: int) -> tuple[Tensor, Tensor]:
    """``log_score`` float32 with the mask column at -inf (B, L, K), and its logsumexp (B, L)."""
    lp = log_score.float().clone()
    lp[..., mask_id] = float("-inf")
    return lp, lp.logsumexp(-1)


def normalised_scores(log_score: Tensor, mask_id: int) -> Tensor:
    """``log_score`` with the mask column at -inf, normalised over the other ids (B, L, K)."""
    lp, lse = _masked_scores(log_score, mask_id)
    return lp - lse[..., None]


def sedd_mixture(log_score: Tensor | None, z: Tensor, alpha_s: float, alpha_t: float, mask_id: int,
                 kind: str = "analytic", last: bool = False, *, total: Tensor | None = None) -> Mixture:
    """One step's weights (B, L) float64 over keep / mask / ``normalised_scores``.

    ``total`` (B, L): ``sum_{y != mask} s_y`` per position, when the caller has it (the
    sampler computes it once with the normalised scores); else from ``log_score``.
    """
    masked = (z == mask_id).double()
    if last:
        return Mixture(keep=1.0 - masked, mask=0.0, uniform=0.0, x=masked)
    if total is None:
        total = _masked_scores(log_score, mask_id)[1].double().exp()
    move = (_rate(kind, alpha_s, alpha_t) * total.double()).clamp(max=1.0)
    return Mixture(keep=1.0 - masked, mask=masked * (1.0 - move), uniform=0.0, x=masked * move)


def dense_step_probs(log_score: Tensor, z: Tensor, alpha_s: float, alpha_t: float, mask_id: int,
                     kind: str = "analytic", last: bool = False) -> Tensor:
    """The same step as (B, L, K) float64 probabilities, written as the SEDD paper does
    (staggered score times the transposed transition; Euler: identity plus ``dsigma``
    times the reverse rates). For tests and small K."""
    K = log_score.shape[-1]
    s = log_score.double().exp()
    onehot = F.one_hot(z, K).double()
    masked = (z == mask_id)[..., None]
    if last:
        p = s.clone()
        p[..., mask_id] = 0.0
        p = p / p.sum(-1, keepdim=True)
        return torch.where(masked, p, onehot)
    s = s.clone()
    s[..., mask_id] = 1.0  # s_z = 1 at a masked position's own id
    dsigma = math.log(alpha_s) - math.log(alpha_t)
    if kind == "analytic":
        stag = s * math.exp(dsigma)
        stag[..., mask_id] += (1.0 - math.exp(dsigma)) * s.sum(-1)
        edge = torch.full_like(s, -math.expm1(-dsigma))
        edge[..., mask_id] = 1.0  # e^-dsigma + (1 - e^-dsigma)
        p = stag * edge
    else:
        rate = s.clone()
        rate[..., mask_id] = -(s.sum(-1) - 1.0)
        p = onehot + dsigma * rate
    return torch.where(masked, p, onehot)


@dataclass(frozen=True)
class SeddSampler:
    """SEDD sampling of a score model on the masked process (``mask_id`` required)."""

    kind: str = "analytic"
    mask_id: int | None = None
    eps: float = 1e-5
    default_steps: int = 1024
    cache_predictions: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown SEDD step {self.kind!r}; valid: {', '.join(KINDS)}")
        if isinstance(self.mask_id, bool) or not isinstance(self.mask_id, int) or self.mask_id < 0:
            raise ValueError(f"mask_id={self.mask_id!r}: the SEDD samplers need the mask token's id")
        if not 0.0 < self.eps < 1.0:
            raise ValueError(f"eps={self.eps!r} must lie in (0, 1); the samplers use 1e-5")
        if self.cache_predictions:
            raise ValueError("the SEDD samplers need the time in every call; cache_predictions must be False")

    def prior(self, shape, vocab_size, generator, device) -> Tensor:
        return torch.full(shape, self.mask_id, dtype=torch.long, device=device)

    def time_grid(self, steps: int) -> TimeGrid:
        return time_grid(steps, eps=self.eps)

    def step(self, score, z: Tensor, time: StepTime, *, generator: torch.Generator | None = None,
             prediction: Tensor | None = None, workspace: Workspace | None = None) -> StepOutput:
        log_score, nfe = predict(score, z, time.alpha_t, prediction)
        # One float32 pass over (B, L, K): the normalised scores and, per position, their
        # total sum_{y != mask} s_y (float64 only at (B, L)).
        lp, lse = _masked_scores(log_score, self.mask_id)
        mix = sedd_mixture(None, z, 1.0 if time.last else time.alpha_s, time.alpha_t,
                           self.mask_id, self.kind, time.last, total=lse.double().exp())
        lp -= lse[..., None]
        z_new = draw(mix, lp, z, mask_id=self.mask_id,
                     uses_noise=False, thresholds=None, top_p=1.0, top_k=0, generator=generator,
                     workspace=workspace)
        return StepOutput(z_new, log_score, nfe)


def sedd_analytic_sampler(**options) -> SeddSampler:
    return SeddSampler(**{"kind": "analytic", **options})


def sedd_euler_sampler(**options) -> SeddSampler:
    return SeddSampler(**{"kind": "euler", **options})
