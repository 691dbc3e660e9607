"""Samplers by name, so an unknown name fails at config time with the valid names."""

from __future__ import annotations

from typing import Callable

from .ancestral import AncestralSampler, greedy_tail_sampler, mdlm_sampler
from .ar import ARSampler
from .psi import PsiSampler

SAMPLERS: dict[str, Callable[..., object]] = {
    "ancestral": AncestralSampler,
    "greedy_tail": greedy_tail_sampler,
    "psi": PsiSampler,
    "mdlm": mdlm_sampler,
    "ar": ARSampler,
}


def get_sampler(name: str, **options):
    """Build sampler ``name`` with ``options`` (its dataclass fields)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid samplers: {', '.join(sorted(SAMPLERS))}")
    try:
        return SAMPLERS[name](**options)
    except TypeError as err:  # an unknown option: say which sampler and why
        raise ValueError(f"bad options for sampler {name!r}: {err}") from None
