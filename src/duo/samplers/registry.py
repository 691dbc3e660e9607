"""Samplers by name, with the processes each can run on, so an unknown name or a sampler
that does not fit a model fails before any work with the valid names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .ancestral import AncestralSampler, greedy_tail_sampler, mdlm_sampler
from .ar import ARSampler
from .d3pm import D3pmSampler
from .psi import PsiSampler
from .sedd import sedd_analytic_sampler, sedd_euler_sampler


@dataclass(frozen=True)
class SamplerSpec:
    factory: Callable[..., object]
    processes: tuple[str, ...]  # ProcessKind.kind values it runs on
    score: bool = False  # it takes a score callable (log ratios), not a denoiser


SAMPLERS: dict[str, SamplerSpec] = {
    "ancestral": SamplerSpec(AncestralSampler, ("uniform",)),
    "greedy_tail": SamplerSpec(greedy_tail_sampler, ("uniform",)),
    "psi": SamplerSpec(PsiSampler, ("uniform", "absorbing")),
    "mdlm": SamplerSpec(mdlm_sampler, ("absorbing",)),
    "ar": SamplerSpec(ARSampler, ("causal",)),
    "d3pm": SamplerSpec(D3pmSampler, ("absorbing",)),
    # Score samplers: a masked denoiser serves as a score too (s_y = alpha/(1-alpha) x_y).
    "sedd_analytic": SamplerSpec(sedd_analytic_sampler, ("absorbing-score", "absorbing"), score=True),
    "sedd_euler": SamplerSpec(sedd_euler_sampler, ("absorbing-score", "absorbing"), score=True),
}


def _check_name(name: str) -> None:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid samplers: {', '.join(sorted(SAMPLERS))}")


def samplers_for(kind: str) -> list[str]:
    """Names of the samplers that run on a process of ``kind``."""
    return [name for name, spec in SAMPLERS.items() if kind in spec.processes]


def check_fits(name: str, kind: str, model: str = "model") -> None:
    """Raise a one-line error unless sampler ``name`` runs on a ``kind`` process."""
    _check_name(name)
    if kind not in SAMPLERS[name].processes:
        raise ValueError(f"sampler {name!r} does not fit a {model} checkpoint ({kind} process); "
                         f"use one of {', '.join(samplers_for(kind))}")


def get_sampler(name: str, **options):
    """Build sampler ``name`` with ``options`` (its dataclass fields)."""
    _check_name(name)
    try:
        return SAMPLERS[name].factory(**options)
    except TypeError as err:  # an unknown option: say which sampler and why
        raise ValueError(f"bad options for sampler {name!r}: {err}") from None
