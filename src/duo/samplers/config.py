"""One sampling configuration for ``duo sample``, ``duo eval``, the samples drawn at the
end of training and the Python API; validated once, where it is built.

``sampler=None`` means the checkpoint's recorded default (a distilled model records its
few-step sampler), else the method's own (``ProcessKind.default_sampler``);
``steps=None`` likewise, else the sampler's default.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from dataclasses import dataclass
from typing import Any

from .filters import NUCLEI
from .grid import PROTOCOLS, check_protocol
from .psi import _KAPPA_VALUED, _NO_VALUE, KAPPA_RULES
from .registry import SAMPLERS
from .semi_ar import check_semi_ar


@dataclass
class SamplingConfig:
    """What to generate and how. Every field has a documented domain, checked by
    :meth:`validate` with a one-line error naming the field and its valid values."""

    sampler: str | None = None  # ancestral | greedy_tail | psi | mdlm | ar; None = default
    steps: int | None = None  # reverse steps (protocol=paper adds one noise-removal call)
    num_samples: int = 4  # 0 draws none (training's end-of-run samples off)
    batch_size: int | None = None  # samples per forward pass; None = all at once
    seq_len: int | None = None  # tokens per sample; None = the model's training length
    seed: int = 0
    prefix: str | None = None  # text clamped at the start
    suffix: str | None = None  # text clamped at the end (infilling)
    top_p: float | None = None  # nucleus filter of the denoiser's distribution, (0, 1]
    top_k: int | None = None  # keep the k most likely tokens (0 = off)
    nucleus: str | None = None  # top_p's filter: exact (default) | approx (faster; total variation to exact <= 0.01 at K = 50,257)
    eta: float | None = None  # psi: re-noising rate in [0, 1] of the kappa rule kappa_mode
    kappa: float | None = None  # psi: a constant kappa in [0, 1] instead of eta
    kappa_mode: str | None = None  # psi: a KAPPA_RULES name; None = remdm-rescale (paper: paper-max-rescale)
    temperature: float | None = None  # ar only, >= 0 (0 = greedy)
    protocol: str = "ours"  # ours | paper (the official code's grid: steps + 1 network calls)
    length: int | None = None  # tokens per sample; > the context generates semi-autoregressively
    stride: int | None = None  # semi-AR: new tokens per window, < the context (default: half of it)

    def validate(self) -> "SamplingConfig":
        for name in ("top_p", "eta", "kappa", "temperature"):  # Python callers may pass anything
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{name}={value!r} must be a number")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed={self.seed!r} must be an integer")
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; valid samplers: {', '.join(sorted(SAMPLERS))}")
        for name, low in (("steps", 1), ("batch_size", 1), ("seq_len", 1), ("top_k", 0), ("length", 1),
                          ("stride", 1)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise ValueError(f"{name}={value!r} must be an integer >= {low} (or unset for the default)")
        if isinstance(self.num_samples, bool) or not isinstance(self.num_samples, int) or self.num_samples < 0:
            raise ValueError(f"num_samples={self.num_samples!r} must be an integer >= 0")
        if self.nucleus is not None and self.nucleus not in NUCLEI:
            raise ValueError(f"nucleus={self.nucleus!r} is unknown; valid: {', '.join(NUCLEI)}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p!r} must lie in (0, 1] (1 = no nucleus filter)")
        for name in ("eta", "kappa"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name}={value!r} must lie in [0, 1]")
        if self.eta is not None and self.kappa is not None:
            raise ValueError("pass eta (a re-noising rate) or kappa (a constant), not both")
        if self.kappa_mode is not None and self.kappa_mode not in KAPPA_RULES:
            raise ValueError(f"kappa_mode={self.kappa_mode!r} is unknown; valid modes: {', '.join(KAPPA_RULES)}")
        if self.temperature is not None and not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature={self.temperature!r} must be >= 0 (0 = greedy)")
        if self.stride is not None and self.length is None:
            raise ValueError(f"stride={self.stride} applies to semi-autoregressive generation; add length=")
        if self.length is not None and self.seq_len is not None and self.length > self.seq_len:
            check_semi_ar(self.length, self.seq_len, self.stride)
        try:
            check_protocol(self.protocol)
        except ValueError:  # the field-named form every SamplingConfig error has
            raise ValueError(f"protocol={self.protocol!r} is unknown; valid protocols: {', '.join(PROTOCOLS)}") \
                from None
        if self.sampler is not None:
            self.options(self.sampler)  # keys of another sampler fail now, not after loading
        return self

    def kappa_rule(self) -> tuple[str, float] | None:
        """The Psi sampler's ``(mode, value)``, or None for its default rule."""
        paper = self.protocol == "paper"
        if self.eta is not None:
            mode = self.kappa_mode or ("paper-max-rescale" if paper else "remdm-rescale")
            if mode in _KAPPA_VALUED:
                raise ValueError(f"kappa_mode={mode!r} takes kappa=, not eta=")
            return mode, self.eta
        if self.kappa is not None:
            mode = self.kappa_mode or ("paper-constant" if paper else "kappa")
            if mode not in _KAPPA_VALUED:
                raise ValueError(f"kappa_mode={mode!r} takes eta=, not kappa=")
            return mode, self.kappa
        if self.kappa_mode in _NO_VALUE:
            return self.kappa_mode, 0.0
        if self.kappa_mode is not None:
            raise ValueError(f"kappa_mode={self.kappa_mode!r} needs eta= or kappa=")
        # The official Psi scripts' rule (max-rescale, eta 0.05) under the paper protocol;
        # else the sampler's own default.
        return ("paper-max-rescale", 0.05) if paper else None

    def options(self, sampler: str) -> dict[str, Any]:
        """Keyword options of ``sampler``'s constructor; keys that belong to another sampler
        are errors naming the sampler they apply to."""
        options: dict[str, Any] = {}
        if self.top_p is not None:
            options["top_p"] = self.top_p
        if self.top_k is not None:
            options["top_k"] = self.top_k
        if self.nucleus is not None:
            options["nucleus"] = self.nucleus
        psi_keys = self.eta is not None or self.kappa is not None or self.kappa_mode is not None
        if psi_keys and sampler != "psi":
            raise ValueError(f"eta/kappa/kappa_mode apply to sampler=psi, not {sampler!r}; "
                             "add sampler=psi or drop them")
        rule = self.kappa_rule() if sampler == "psi" else None
        if rule is not None:
            options["rule"] = rule
        if self.temperature is not None:
            if sampler != "ar":
                raise ValueError(f"temperature applies to sampler=ar, not {sampler!r}; drop it")
            options["temperature"] = self.temperature
        for key in options:
            if not _accepts(SAMPLERS[sampler].factory, key):
                raise ValueError(f"{key} does not apply to sampler={sampler!r}; drop it or pick another sampler")
        return options


def _accepts(factory: Any, key: str) -> bool:
    """Whether a sampler's constructor takes ``key`` (its dataclass fields, or a function
    forwarding ``**options`` to one)."""
    if dataclasses.is_dataclass(factory):
        return key in {f.name for f in dataclasses.fields(factory) if f.init}
    params = inspect.signature(factory).parameters
    if key in params:
        return True
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return False
    built = typing.get_type_hints(factory).get("return")  # e.g. greedy_tail_sampler -> AncestralSampler
    return _accepts(built, key) if dataclasses.is_dataclass(built) else True
