"""``METHODS`` maps an ``algo`` name to its config class and method class; the model
variant each needs (causal attention, time conditioning) is derived here, once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .ar import ArMethod
from .config import ArConfig, D3pmConfig, DistillConfig, DuoConfig, MdlmConfig, SeddConfig
from .d3pm import D3pmMethod
from .distill import DistillMethod
from .duo import DuoMethod
from .mdlm import MdlmMethod
from .sedd import SeddMethod


# The samples printed at the end of training, for the sample.* fields left unset (the
# samplers' own default is 1,024 steps; duo.config.end_sample_config applies them).
END_SAMPLES: dict[str, Any] = {"steps": 128}
# Duo: chosen by the first-run sweep (docs/benchmarks.md, "The default duo train on CPU"):
# after the 5-minute CPU run, Psi with a 0.6 nucleus prints words (97%) and word pairs
# (73%) of the corpus where plain ancestral sampling prints 77% / 43%, at the price of
# repeating frequent words (unigram entropy 6.0 bits against real text's 7.4).
DUO_END_SAMPLES: dict[str, Any] = {"sampler": "psi", "steps": 256, "top_p": 0.6}


@dataclass(frozen=True)
class MethodSpec:
    config_cls: type
    method_cls: type
    causal: bool
    time_conditioning_field: str | None  # algo field deciding time conditioning, or None = always
    end_samples: dict[str, Any] = field(default_factory=lambda: dict(END_SAMPLES))


METHODS: dict[str, MethodSpec] = {
    "duo": MethodSpec(DuoConfig, DuoMethod, causal=False, time_conditioning_field=None,
                      end_samples=DUO_END_SAMPLES),
    "mdlm": MethodSpec(MdlmConfig, MdlmMethod, causal=False, time_conditioning_field="time_conditioning"),
    "ar": MethodSpec(ArConfig, ArMethod, causal=True, time_conditioning_field=None),
    "sedd": MethodSpec(SeddConfig, SeddMethod, causal=False, time_conditioning_field=None),
    "d3pm": MethodSpec(D3pmConfig, D3pmMethod, causal=False, time_conditioning_field=None),
    "distill": MethodSpec(DistillConfig, DistillMethod, causal=False, time_conditioning_field=None),
}


def get_method_spec(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ValueError(f"unknown algo {name!r}; valid algos: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def model_overrides(name: str, algo_cfg: Any) -> dict[str, Any]:
    """Model-config fields a method dictates (causal attention, time conditioning)."""
    spec = get_method_spec(name)
    if spec.causal:
        return {"causal": True, "time_conditioning": False}
    field = spec.time_conditioning_field
    return {"causal": False, "time_conditioning": True if field is None else getattr(algo_cfg, field)}
