"""Methods compose a process, a schedule, a loss and a backbone.

``registry.METHODS`` maps an ``algo`` name to its config and method classes;
``build.build_method`` makes the backbone and method a run configuration describes.
"""

from __future__ import annotations

from .ar import ArMethod
from .base import LossOutput, reduce_tokens
from .config import ArConfig, D3pmConfig, DistillConfig, DuoConfig, MdlmConfig, SeddConfig
from .d3pm import D3pmMethod
from .sedd import SeddMethod, score_log_ratios
from .distill import DistillMethod, round_and_delta
from .duo import DuoMethod, curriculum_length, tau_at
from .mdlm import MdlmMethod
from .registry import METHODS, MethodSpec, get_method_spec, model_overrides
from .build import BuiltMethod, build_method  # noqa: E402 - after the registry it uses

__all__ = [
    "METHODS", "MethodSpec", "BuiltMethod", "build_method", "get_method_spec", "model_overrides",
    "LossOutput", "reduce_tokens",
    "DuoMethod", "MdlmMethod", "ArMethod", "DuoConfig", "MdlmConfig", "ArConfig",
    "SeddMethod", "SeddConfig", "score_log_ratios", "D3pmMethod", "D3pmConfig",
    "curriculum_length", "tau_at", "DistillConfig", "DistillMethod", "round_and_delta",
]
