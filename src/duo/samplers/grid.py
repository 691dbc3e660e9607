"""Time grids for the reverse process (MATH.md section 7).

A grid runs ``1 = t_0 > t_1 > ... > t_N = eps``; step ``i`` goes from ``t_i`` to
``s = t_{i+1}``. The Psi-samplers may *hold* t constant for part of the steps (a
corrector loop at fixed noise, as ReMDM-loop does) and give each of three phases
(high, middle, low noise) its own kappa rule.

Two protocols (MATH.md section 11) read the same grid differently. ``"ours"``: the
N steps are all the network calls, and the last step jumps from ``t_{N-1}`` straight to
the clean data (``alpha_s = 1`` or argmax). ``"paper"`` (the official Duo code): the N
steps are ordinary posterior steps down to ``t_N = eps``, then one more call at
``t = eps`` removes the noise, so N + 1 network evaluations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

PHASES = ("high", "middle", "low")
PROTOCOLS = ("ours", "paper")


def check_protocol(protocol: str) -> str:
    """``protocol`` if it is one of :data:`PROTOCOLS`, else a one-line ``ValueError``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; valid protocols: {', '.join(PROTOCOLS)} "
                         "(paper = the official Duo code's evaluation)")
    return protocol


@dataclass(frozen=True)
class StepTime:
    """Everything one reverse step needs to know about time.

    ``alpha_t``/``alpha_s`` are Python floats (float64); ``last`` marks the step that
    removes the remaining noise.
    """

    t: float
    s: float
    alpha_t: float
    alpha_s: float
    phase: str
    last: bool


@dataclass(frozen=True)
class TimeGrid:
    """``t``: (N + 1,) float64 times from 1 to eps; ``phase``: N labels from :data:`PHASES`."""

    t: Tensor
    phase: tuple[str, ...]

    @property
    def steps(self) -> int:
        return len(self.phase)

    def step_times(self, schedule, protocol: str = "ours") -> list[StepTime]:
        """The steps to run: N under ``"ours"`` (the last removes the noise), N + 1 under
        ``"paper"`` (N posterior steps to ``t_N``, then the noise removal at ``t_N``, whose
        ``s`` is 0 and ``alpha_s`` 1). ``schedule.alpha`` is evaluated once on the grid."""
        check_protocol(protocol)
        alpha = schedule.alpha(self.t).double().tolist()
        t = self.t.tolist()
        n = self.steps
        paper = protocol == "paper"
        out = [
            StepTime(t[i], t[i + 1], alpha[i], alpha[i + 1], self.phase[i], i == n - 1 and not paper)
            for i in range(n)
        ]
        if paper:
            out.append(StepTime(t[n], 0.0, alpha[n], 1.0, self.phase[n - 1], True))
        return out


def _linear(start: float, stop: float, steps: int) -> Tensor:
    return torch.linspace(start, stop, steps + 1, dtype=torch.float64)


GRID_KINDS: dict[str, Callable[[float, float, int], Tensor]] = {"linear": _linear}


def _phase(t: float, s: float, t_on: float, t_off: float) -> str:
    # The midpoint classifies a step: held steps (t == s == t_on) land in "middle",
    # the steps right before / after a hold land in "high" / "low".
    mid = 0.5 * (t + s)
    if mid > t_on:
        return "high"
    if mid < t_off:
        return "low"
    return "middle"


def time_grid(
    steps: int,
    *,
    eps: float = 1e-5,
    kind: str = "linear",
    t_on: float = 1.0,
    t_off: float | None = None,
    hold_fraction: float = 0.0,
) -> TimeGrid:
    """The reverse-time grid of ``steps`` steps from 1 to ``eps``.

    Args:
        steps: N >= 1.
        eps: final time, in (0, 1).
        kind: spacing, a key of :data:`GRID_KINDS`.
        t_on, t_off: phase boundaries in t; a step whose midpoint lies above ``t_on``
            is "high", below ``t_off`` "low", else "middle". The defaults put every
            step in "middle". On a linear grid a step fraction f is t = 1 - f (1 - eps).
        hold_fraction: fraction of the steps spent at the constant time ``t_on``
            (then ``t_off`` defaults to ``t_on``, so the held steps form the middle phase).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an integer >= 1")
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps={eps!r} must lie in (0, 1); the samplers use 1e-5")
    if kind not in GRID_KINDS:
        raise ValueError(f"unknown time grid {kind!r}; valid kinds: {', '.join(GRID_KINDS)}")
    if t_off is None:
        t_off = t_on if hold_fraction > 0 else 0.0
    if not 0.0 <= t_off <= t_on <= 1.0:
        raise ValueError(f"phase bounds t_on={t_on}, t_off={t_off} must satisfy "
                         f"0 <= t_off <= t_on <= 1")
    if not 0.0 <= hold_fraction < 1.0:
        raise ValueError(f"hold_fraction={hold_fraction!r} must lie in [0, 1)")
    spacing = GRID_KINDS[kind]
    n_hold = round(hold_fraction * steps)
    if n_hold == 0:
        t = spacing(1.0, eps, steps)
    else:
        n_move = steps - n_hold
        need_pre = t_on < 1.0
        if n_move < 1 + need_pre or t_on <= eps:
            raise ValueError(f"hold_fraction={hold_fraction} at t_on={t_on} leaves too few "
                             f"of the {steps} steps to move in t; lower hold_fraction or "
                             f"use more steps")
        n_pre = round(n_move * (1.0 - t_on) / (1.0 - eps))
        n_pre = min(max(n_pre, int(need_pre)), n_move - 1)
        pre = spacing(1.0, t_on, n_pre) if n_pre else torch.ones(1, dtype=torch.float64)
        hold = torch.full((n_hold,), t_on, dtype=torch.float64)
        post = spacing(t_on, eps, n_move - n_pre)[1:]
        t = torch.cat([pre, hold, post])
    tl = t.tolist()
    phase = tuple(_phase(tl[i], tl[i + 1], t_on, t_off) for i in range(steps))
    return TimeGrid(t, phase)


def paper_segments(steps: int, high_frac: float = 0.0, middle_frac: float = 0.0) -> tuple[int, int, int]:
    """Grid points per phase in the official code: of the N + 1 points,
    ``round(high_frac (N + 1))`` high, ``round(middle_frac (N + 1))`` middle, the rest low
    (Python's ``round``, as there).

    Reference for the official multi-phase profile, used by the tests: :class:`PsiSampler`
    runs :func:`time_grid` with per-step kappa rules and does not call this. The two agree
    for single-phase profiles; multi-phase paper profiles differ at segment ends."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an integer >= 1")
    if not (0.0 <= high_frac and 0.0 <= middle_frac and high_frac + middle_frac <= 1.0):
        raise ValueError(f"high_frac={high_frac}, middle_frac={middle_frac} must be >= 0 and sum to <= 1")
    n = steps + 1
    n_hi, n_mid = round(high_frac * n), round(middle_frac * n)
    if n_hi + n_mid > n - 1:
        raise ValueError(f"high_frac={high_frac}, middle_frac={middle_frac} leave no low-noise "
                         f"point of the {n}; lower them or use more steps")
    return n_hi, n_mid, n - n_hi - n_mid


def paper_time_profile(
    steps: int,
    *,
    eps: float = 1e-5,
    hold_t: float | None = None,
    high_frac: float = 0.0,
    middle_frac: float = 0.0,
) -> TimeGrid:
    """The official Psi time profile (MATH.md 11) as a grid of ``steps`` steps.

    ``hold_t=None`` is the profile "linear": ``linspace(1, eps, N + 1)``. Otherwise
    "linear-constant-linear": the high points descend 1 -> ``hold_t``, the middle points
    stay at ``hold_t``, the low points descend ``hold_t`` -> eps (so the grid repeats
    ``hold_t`` where the segments meet; for "-inv", pass ``schedule.t_from_alpha(c)``).
    Step i carries the phase of its start point i.

    Reference for the official multi-phase profile, used by the tests: :class:`PsiSampler`
    runs :func:`time_grid` with per-step kappa rules and does not call this. The two agree
    for single-phase profiles; multi-phase paper profiles differ at segment ends."""
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps={eps!r} must lie in (0, 1); the samplers use 1e-5")
    n_hi, n_mid, n_lo = paper_segments(steps, high_frac, middle_frac)
    if hold_t is None:
        t = _linear(1.0, eps, steps)
    else:
        if not eps < hold_t <= 1.0:
            raise ValueError(f"hold_t={hold_t!r} must lie in (eps, 1]")
        t = torch.cat([torch.linspace(1.0, hold_t, n_hi, dtype=torch.float64),
                       torch.full((n_mid,), float(hold_t), dtype=torch.float64),
                       torch.linspace(hold_t, eps, n_lo, dtype=torch.float64)])
    labels = ("high",) * n_hi + ("middle",) * n_mid + ("low",) * n_lo
    return TimeGrid(t, labels[:steps])
