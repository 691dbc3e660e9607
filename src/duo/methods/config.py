"""Typed configs of the methods (``algo=...``), validated once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..schedules import SCHEDULES


def _check_schedule(name: str, eps: float) -> None:
    if name not in SCHEDULES:
        raise ValueError(
            f"algo.schedule={name!r} is unknown; valid schedules: {', '.join(sorted(SCHEDULES))}"
        )
    if not 0 < eps < 1:
        raise ValueError(f"algo.eps={eps!r} must lie in (0, 1); the papers use 1e-3")


@dataclass
class DuoConfig:
    """Uniform-state diffusion with the optional Gaussian-relaxation curriculum.

    Curriculum (MATH.md sections 4-5): during the first ``curriculum_steps`` optimiser
    steps (or ``curriculum_fraction`` of ``trainer.max_steps``) the denoiser sees
    ``softmax(w_t / tau)`` (``full``) or its top-k form (``topk``); afterwards the plain
    discrete loss. ``tau`` may be annealed in log10 space from ``tau`` to ``tau_end``
    between ``tau_anneal_start`` and ``tau_anneal_end`` steps.
    """

    schedule: str = "loglinear"
    eps: float = 1e-3
    # The top-k relaxation is the default: the paper's curriculum at a fraction of the memory.
    curriculum: Literal["none", "full", "topk"] = "topk"
    curriculum_k: int = 2
    curriculum_steps: int | None = None
    curriculum_fraction: float | None = None
    tau: float = 1e-3
    tau_end: float | None = None
    tau_anneal_start: int = 0
    tau_anneal_end: int | None = None
    alpha_min: float = 0.05
    alpha_max: float = 0.95
    gamma_min: float | None = None
    gamma_max: float | None = None
    poly_fit_degree: int | None = None

    def validate(self) -> "DuoConfig":
        _check_schedule(self.schedule, self.eps)
        if self.curriculum_k < 1:
            raise ValueError(f"algo.curriculum_k={self.curriculum_k} must be >= 1")
        if self.curriculum_steps is not None and self.curriculum_fraction is not None:
            raise ValueError(
                "set only one of algo.curriculum_steps and algo.curriculum_fraction"
            )
        if self.curriculum_steps is not None and self.curriculum_steps < 0:
            raise ValueError(f"algo.curriculum_steps={self.curriculum_steps} must be >= 0")
        if self.curriculum_fraction is not None and not 0 <= self.curriculum_fraction <= 1:
            raise ValueError(
                f"algo.curriculum_fraction={self.curriculum_fraction} must lie in [0, 1]"
            )
        for name in ("tau", "tau_end"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"algo.{name}={value} must be >= 0")
        if (self.tau_end is None) != (self.tau_anneal_end is None):
            raise ValueError("set algo.tau_end and algo.tau_anneal_end together (or neither) to anneal tau")
        if self.tau_end is not None and (self.tau <= 0 or self.tau_end <= 0):
            raise ValueError("annealing tau in log space needs algo.tau > 0 and algo.tau_end > 0")
        if self.tau_anneal_end is not None and self.tau_anneal_end <= self.tau_anneal_start:
            raise ValueError(
                f"algo.tau_anneal_end={self.tau_anneal_end} must be after "
                f"algo.tau_anneal_start={self.tau_anneal_start}"
            )
        if not 0 < self.alpha_min < self.alpha_max < 1:
            raise ValueError(
                f"algo.alpha_min={self.alpha_min}, algo.alpha_max={self.alpha_max} must "
                "satisfy 0 < alpha_min < alpha_max < 1"
            )
        if (self.gamma_min is None) != (self.gamma_max is None):
            raise ValueError("set both algo.gamma_min and algo.gamma_max, or neither")
        if self.gamma_min is not None and not self.gamma_min < self.gamma_max:
            raise ValueError(
                f"algo.gamma_min={self.gamma_min} must be below algo.gamma_max={self.gamma_max}"
            )
        if self.poly_fit_degree is not None and not 1 <= self.poly_fit_degree <= 15:
            raise ValueError(f"algo.poly_fit_degree={self.poly_fit_degree} must lie in [1, 15]")
        return self


@dataclass
class MdlmConfig:
    """Masked diffusion (SUBS parameterisation); the mask is an extra last token id."""

    schedule: str = "loglinear"
    eps: float = 1e-3
    time_conditioning: bool = False

    def validate(self) -> "MdlmConfig":
        _check_schedule(self.schedule, self.eps)
        return self


@dataclass
class SeddConfig:
    """SEDD (Lou et al. 2024) with the masked process: the network gives log score ratios,
    trained with the denoising score entropy (an ELBO); the mask is an extra last id."""

    schedule: str = "loglinear"
    eps: float = 1e-3

    def validate(self) -> "SeddConfig":
        _check_schedule(self.schedule, self.eps)
        return self


@dataclass
class D3pmConfig:
    """D3PM with the masked (absorbing) transition in discrete time: ``T`` steps at
    ``t = i/T``, the discrete-time ELBO; ``hybrid_lambda > 0`` adds D3PM's auxiliary
    cross-entropy ``lambda * -log x_theta[x]`` on masked positions to the training loss
    (validation stays the ELBO)."""

    schedule: str = "loglinear"
    eps: float = 1e-3
    T: int = 1000
    hybrid_lambda: float = 0.0

    def validate(self) -> "D3pmConfig":
        _check_schedule(self.schedule, self.eps)
        if isinstance(self.T, bool) or not isinstance(self.T, int) or self.T < 1:
            raise ValueError(f"algo.T={self.T!r} must be an integer >= 1 (the paper: 1000)")
        if not self.hybrid_lambda >= 0:
            raise ValueError(f"algo.hybrid_lambda={self.hybrid_lambda!r} must be >= 0 (0 = the plain ELBO)")
        return self


@dataclass
class ArConfig:
    """Autoregressive baseline: next-token cross-entropy with causal attention."""

    def validate(self) -> "ArConfig":
        return self


@dataclass
class DistillConfig:
    """Discrete Consistency Distillation of a Duo model (MATH.md section 6).

    Round ``n`` (of ``rounds``, ``steps_per_round`` optimiser steps each) uses the step
    ``delta = 2^n / T0``; at each round's end the teacher becomes the student's current
    weights (``teacher="ema"``: its EMA weights). Times map to the Gaussian path
    ``gamma = gamma_min + t (gamma_max - gamma_min)`` (official code: [-4, -1]).
    ``sample_steps`` / ``sample_sampler`` are saved with the student as its defaults.

    The official code's protocol (MATH.md 11) differs in two places, each an option:
    ``time_draw="paper"`` draws ``t = min(t' + delta, 1)`` from the training's own
    ``t'`` (mass ``delta`` at ``t = 1``) instead of ``t ~ U[delta, 1]`` (``"ours"``);
    ``student_init="raw"`` starts the student from the checkpoint's trained (non-EMA)
    weights and restores its EMA state, decay included, instead of starting the student
    and a fresh EMA from the EMA weights (``"ema"``).
    """

    schedule: str = "loglinear"
    eps: float = 1e-3
    rounds: int = 5
    steps_per_round: int = 10_000
    T0: int = 512
    loss: Literal["reverse", "forward"] = "reverse"
    teacher: Literal["student", "ema"] = "student"
    gamma_min: float = -4.0
    gamma_max: float = -1.0
    sample_steps: int = 8
    sample_sampler: str = "greedy_tail"
    time_draw: Literal["ours", "paper"] = "ours"
    student_init: Literal["ema", "raw"] = "ema"

    def validate(self) -> "DistillConfig":
        _check_schedule(self.schedule, self.eps)
        if self.time_draw not in ("ours", "paper"):
            raise ValueError(f"distill.time_draw={self.time_draw!r} is unknown; valid: ours, paper")
        if self.student_init not in ("ema", "raw"):
            raise ValueError(f"distill.student_init={self.student_init!r} is unknown; valid: ema, raw")
        for name in ("rounds", "steps_per_round", "T0", "sample_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"distill.{name}={getattr(self, name)} must be >= 1")
        if 2 ** (self.rounds - 1) >= self.T0:
            raise ValueError(
                f"distill.rounds={self.rounds} with T0={self.T0} makes the last step "
                f"delta = 2^{self.rounds - 1}/{self.T0} >= 1; use fewer rounds or a larger T0"
            )
        if not self.gamma_min < self.gamma_max:
            raise ValueError(f"distill.gamma_min={self.gamma_min} must be below gamma_max={self.gamma_max}")
        return self

    @property
    def total_steps(self) -> int:
        return self.rounds * self.steps_per_round
