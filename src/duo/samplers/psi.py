"""Psi-samplers (Chapter II): predictor-corrector steps, MATH.md section 7.

Each step draws from ``q = kappa * q_posterior + (1 - kappa) * q_PC`` where ``q_PC``
re-noises the predicted clean distribution to time s (uniform process:
``a_s x0_hat + (1 - a_s)/K``; masked: ``a_s x0_hat + (1 - a_s) e_mask``). kappa = 1 is
ancestral sampling. Kappa rules (:data:`KAPPA_RULES`):

- ``kappa``: a constant kappa (``value``);
- ReMDM-style, from a re-noising rate sigma with ``sigma_max = min(1, (1 - a_s)/a_t)``:
  ``remdm-cap`` sigma = min(eta, sigma_max), ``remdm-rescale`` sigma = eta * sigma_max,
  ``remdm-const`` sigma = eta (``value`` is eta); then
  ``kappa = clip(1 - sigma / (1 - a_s), 0, 1)``, which for the masked process is exactly
  ReMDM's remasking posterior whenever no clipping occurs (sigma <= 1 - a_s).
- the official code's modes (MATH.md 11), with ``r = (1 - a_s)/a_t``:
  ``paper-max-capped`` sigma = min(eta, r), ``paper-max-rescale`` sigma = eta * min(eta, r)
  (eta inside the min, where ReMDM has 1; Chapter II's numbers use it), both sigma = eta
  where a_t = 0; ``paper-constant-remdm`` sigma = eta; then kappa as above.
  ``paper-constant`` kappa = eta, ``pure-posterior`` kappa = 1, ``pure-pc`` kappa = 0.
  :func:`rule_from_official` reads the official names ("max-rescale-0.05", ...), and
  :func:`paper_kappas` gives the official per-step kappas of a whole grid (each phase
  segment's last kappa is 1, which a per-step rule cannot know).

The grid has high / middle / low noise phases (see :func:`duo.samplers.time_grid`),
each with its own rule, and may hold t constant in the middle phase (ReMDM-loop).
Chapter II's text setting is the default: 256 steps, eta = 0.05 remdm-rescale, top-p 0.9.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import Tensor

from .ancestral import AncestralSampler, reverse_step
from .base import Denoiser, StepOutput
from .grid import PHASES, StepTime, TimeGrid, time_grid
from .workspace import Workspace


def _sigma_max(a_s: float, a_t: float) -> float:
    return 1.0 if a_t <= 0.0 else min(1.0, (1.0 - a_s) / a_t)


def _from_sigma(sigma: Callable[[float, float], float]) -> Callable[[float, float, float], float]:
    def kappa(eta: float, a_s: float, a_t: float) -> float:
        k = 1.0 - sigma(eta, _sigma_max(a_s, a_t)) / (1.0 - a_s)
        return min(1.0, max(0.0, k))
    return kappa


def _paper_sigma(eta: float, a_s: float, a_t: float, rescale: bool) -> float:
    if a_t <= 0.0:
        return eta
    capped = min(eta, (1.0 - a_s) / a_t)
    return eta * capped if rescale else capped


def _paper_kappa(sigma: float, a_s: float) -> float:
    return min(1.0, max(0.0, 1.0 - sigma / (1.0 - a_s)))


KAPPA_RULES: dict[str, Callable[[float, float, float], float]] = {
    "kappa": lambda value, a_s, a_t: value,
    "remdm-cap": _from_sigma(lambda eta, smax: min(eta, smax)),
    "remdm-rescale": _from_sigma(lambda eta, smax: eta * smax),
    "remdm-const": _from_sigma(lambda eta, smax: eta),
    "paper-max-capped": lambda eta, a_s, a_t: _paper_kappa(_paper_sigma(eta, a_s, a_t, False), a_s),
    "paper-max-rescale": lambda eta, a_s, a_t: _paper_kappa(_paper_sigma(eta, a_s, a_t, True), a_s),
    "paper-constant-remdm": lambda eta, a_s, a_t: _paper_kappa(eta, a_s),
    "paper-constant": lambda value, a_s, a_t: value,
    "pure-posterior": lambda value, a_s, a_t: 1.0,
    "pure-pc": lambda value, a_s, a_t: 0.0,
}
# Modes whose value is kappa itself (in [0, 1]), not eta; and modes that ignore it.
_KAPPA_VALUED = ("kappa", "paper-constant")
_NO_VALUE = ("pure-posterior", "pure-pc")
_OFFICIAL = {"max-capped": "paper-max-capped", "max-rescale": "paper-max-rescale",
             "constant-remdm": "paper-constant-remdm", "constant": "paper-constant"}


@dataclass(frozen=True)
class KappaRule:
    """How kappa is chosen at a step: ``mode`` (a key of :data:`KAPPA_RULES`) and
    ``value``, the kappa itself for modes "kappa" and "paper-constant", ignored by
    "pure-posterior" / "pure-pc", else eta."""

    mode: str = "remdm-rescale"
    value: float = 0.05

    def __post_init__(self) -> None:
        if self.mode not in KAPPA_RULES:
            raise ValueError(f"unknown kappa mode {self.mode!r}; valid modes: "
                             f"{', '.join(KAPPA_RULES)}")
        if self.mode in _KAPPA_VALUED and not 0.0 <= self.value <= 1.0:
            raise ValueError(f"kappa={self.value!r} must lie in [0, 1]")
        if self.mode not in _KAPPA_VALUED and not self.value >= 0.0:
            raise ValueError(f"eta={self.value!r} for mode {self.mode!r} must be >= 0")

    def kappa(self, alpha_s: float, alpha_t: float) -> float:
        """kappa for a step from alpha_t to alpha_s; 1 when alpha_s = 1 (nothing to re-noise)."""
        if alpha_s >= 1.0:
            return 1.0
        return float(KAPPA_RULES[self.mode](self.value, alpha_s, alpha_t))


def rule_from_official(mode: str) -> KappaRule:
    """The rule for an official mode name: "pure-posterior", "pure-pc", "constant-<kappa>",
    "constant-remdm-<eta>", "max-capped-<eta>", "max-rescale-<eta>".

    Reference for the official multi-phase profile, used by the tests: :class:`PsiSampler`
    applies its rule per step and does not call this. The two agree for single-phase
    profiles; multi-phase paper profiles differ at segment ends (the official kappa 1 on a
    segment's last step)."""
    if mode in _NO_VALUE:
        return KappaRule(mode, 0.0)
    head, _, value = mode.rpartition("-")
    try:
        number = float(value)
    except ValueError:
        number = None
    if head not in _OFFICIAL or number is None:
        raise ValueError(f"unknown official psi mode {mode!r}; valid: pure-posterior, pure-pc, "
                         "constant-<kappa>, constant-remdm-<eta>, max-capped-<eta>, max-rescale-<eta>")
    return KappaRule(_OFFICIAL[head], number)


def segment_kappas(rule: KappaRule, alphas: Tensor) -> Tensor:
    """Official kappas of one phase segment: ``alphas`` (n,) on its n grid points give
    n kappas (float64), one per step from point i to i + 1 inside the segment, then 1 for
    the step that leaves it (MATH.md 11). "pure-*" and "paper-constant" give n constants.

    Reference for the official multi-phase profile, used by the tests: :class:`PsiSampler`
    applies its rule per step and does not call this. The two agree for single-phase
    profiles; multi-phase paper profiles differ at segment ends (the official kappa 1 on a
    segment's last step)."""
    values = [float(a) for a in alphas.double().tolist()]
    n = len(values)
    if rule.mode in _NO_VALUE + _KAPPA_VALUED:
        return torch.full((n,), rule.kappa(0.0, 1.0), dtype=torch.float64)
    fn = KAPPA_RULES[rule.mode]
    out = [float(fn(rule.value, a_s, a_t)) for a_t, a_s in zip(values[:-1], values[1:])]
    return torch.tensor(out + [1.0] if n else [], dtype=torch.float64)


def paper_kappas(alphas: Tensor, segments: tuple[int, int, int],
                 rules: tuple[KappaRule, KappaRule, KappaRule]) -> Tensor:
    """Official kappas of a whole grid: ``alphas`` (N + 1,) on the grid points (see
    :func:`duo.samplers.grid.paper_time_profile`), ``segments`` the points per phase
    (:func:`duo.samplers.grid.paper_segments`), ``rules`` for high, middle, low. Returns
    (N + 1,) float64; step i uses kappa i (the last one is not used: the noise removal
    step is a plain posterior step).

    Reference for the official multi-phase profile, used by the tests: :class:`PsiSampler`
    applies its rule per step and does not call this. The two agree for single-phase
    profiles; multi-phase paper profiles differ at segment ends (the official kappa 1 on a
    segment's last step)."""
    if sum(segments) != alphas.numel():
        raise ValueError(f"segments {segments} do not cover the {alphas.numel()} grid points")
    parts, start = [], 0
    for size, rule in zip(segments, rules):
        parts.append(segment_kappas(_as_rule(rule), alphas[start:start + size]))
        start += size
    return torch.cat(parts)


def _as_rule(rule: KappaRule | Mapping | tuple | None) -> KappaRule | None:
    if rule is None or isinstance(rule, KappaRule):
        return rule
    if isinstance(rule, Mapping):
        return KappaRule(**rule)
    return KappaRule(*rule)


@dataclass(frozen=True)
class PsiSampler(AncestralSampler):
    """Psi-sampler for the uniform (default) or the masked process (``process="absorbing"``):
    ancestral sampling whose step mixes the posterior with the corrector by kappa.

    ``rule`` applies to every phase without its own rule (``high``, ``middle``, ``low``);
    a rule may be given as a :class:`KappaRule`, a dict or a ``(mode, value)`` pair.
    ``t_on``, ``t_off``, ``hold_fraction`` shape the grid (:func:`time_grid`). The other
    fields are :class:`AncestralSampler`'s, with a nucleus of 0.9 and 256 steps by default.
    """

    top_p: float = 0.9
    default_steps: int = 256
    rule: KappaRule = KappaRule("remdm-rescale", 0.05)
    high: KappaRule | None = None
    middle: KappaRule | None = None
    low: KappaRule | None = None
    t_on: float = 1.0
    t_off: float | None = None
    hold_fraction: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("rule",) + PHASES:
            object.__setattr__(self, name, _as_rule(getattr(self, name)))
        if self.rule is None:
            raise ValueError("rule=None: pass a KappaRule, e.g. ('remdm-rescale', 0.05)")
        self.time_grid(self.default_steps)  # fail at construction on bad phase settings

    def time_grid(self, steps: int) -> TimeGrid:
        return time_grid(steps, eps=self.eps, t_on=self.t_on, t_off=self.t_off,
                         hold_fraction=self.hold_fraction)

    def rule_for(self, phase: str) -> KappaRule:
        return getattr(self, phase) or self.rule

    def step(self, denoiser: Denoiser, z: Tensor, time: StepTime, *,
             generator: torch.Generator | None = None,
             prediction: Tensor | None = None,
             workspace: Workspace | None = None) -> StepOutput:
        a_s = 1.0 if time.last else time.alpha_s
        kappa = self.rule_for(time.phase).kappa(a_s, time.alpha_t)
        return reverse_step(self._process, denoiser, z, time, generator=generator,
                            prediction=prediction, top_p=self.top_p, top_k=self.top_k,
                            tail=self.tail, kappa=kappa, workspace=workspace,
                            nucleus=self.nucleus, dense=self.dense_draw)
