"""A request body -> a checked sampling plan, with 400-style errors naming the field.

The plan is built by :func:`duo.evaluation.plan_sampling` from a
:class:`duo.samplers.SamplingConfig`, the same path ``duo sample`` takes, so a request
with ``n`` samples and ``seed`` s gives the texts of ``duo sample num_samples=n seed=s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..evaluation import SamplingPlan, plan_sampling
from ..generation import build_sampler
from ..samplers import Conditioning, SamplingConfig
from .config import ServeConfig

BLANK = "____"  # in a prompt: `fill` positions for the model to fill (an infill template)

# field -> (accepted Python types, allows null, default)
FIELDS: dict[str, tuple[tuple[type, ...], bool, Any]] = {
    "prompt": ((str,), True, ""),
    "suffix": ((str,), True, None),
    "sampler": ((str,), True, None),
    "steps": ((int,), True, None),
    "seed": ((int,), False, 0),
    "n": ((int,), False, 1),
    "seq_len": ((int,), True, None),
    "temperature": ((int, float), True, None),
    "top_p": ((int, float), True, None),
    "top_k": ((int,), True, None),
    "fill": ((int,), False, 8),
}
# SamplingConfig field -> the request field it comes from (for error messages)
_CONFIG_FIELDS = {"num_samples": "n", "prefix": "prompt", "sampler": "sampler", "steps": "steps",
                  "seq_len": "seq_len", "top_p": "top_p", "top_k": "top_k", "temperature": "temperature",
                  "suffix": "suffix", "seed": "seed"}


class RequestError(ValueError):
    """A bad request: a one-line message and the field it is about (None: the whole body)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def to_dict(self) -> dict[str, Any]:
        return {"error": str(self), "field": self.field}


def parse_body(body: Any) -> dict[str, Any]:
    """Type-check a decoded JSON body; unknown fields and wrong types are errors."""
    if not isinstance(body, dict):
        raise RequestError(f"the body must be a JSON object, not {type(body).__name__}")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise RequestError(f"unknown field {unknown[0]!r}; valid fields: {', '.join(FIELDS)}", unknown[0])
    out = {}
    for name, (types, nullable, default) in FIELDS.items():
        value = body.get(name, default)
        if value is None:
            if name in body and not nullable:
                raise RequestError(f"{name} must not be null", name)
        elif isinstance(value, bool) or not isinstance(value, types):
            kind = "a string" if types == (str,) else "an integer" if types == (int,) else "a number"
            raise RequestError(f"{name} must be {kind}, not {type(value).__name__} {value!r}", name)
        elif isinstance(value, float) and not math.isfinite(value):
            raise RequestError(f"{name}={value!r} must be finite", name)
        out[name] = value
    if out["prompt"] is None:
        out["prompt"] = ""
    return out


@dataclass
class Prepared:
    """A request resolved against the model: what to run and the key of identical runs."""

    plan: SamplingPlan
    clamp: Conditioning | None  # an infill template's clamped positions, else None
    key: tuple = field(default=())


def _field_of(message: str) -> str | None:
    head = message.split("=", 1)[0].split(" ", 1)[0]
    if head in _CONFIG_FIELDS:
        return _CONFIG_FIELDS[head]
    for word, name in (("sampler", "sampler"), ("prefix", "prompt"), ("temperature", "temperature")):
        if word in message.split(" ", 3)[:3] or message.startswith(word):
            return name
    return None


def _config_error(err: ValueError) -> RequestError:
    message = str(err).replace("num_samples=", "n=").replace("prefix/suffix", "prompt/suffix")
    return RequestError(message, _field_of(str(err)))


def max_length(loaded, limits: ServeConfig) -> int:
    model = loaded.cfg.model.max_seq_len
    return min(model, limits.max_length) if limits.max_length else model


def _template(loaded, prompt: str, fill: int, seq_len: int, suffix_len: int) -> Conditioning:
    """``prompt`` with ``____`` blanks: its text clamped from position 0, ``fill`` free
    positions per blank, the rest of the sequence (up to the suffix) free."""
    ids: list[int | None] = []
    for i, piece in enumerate(prompt.split(BLANK)):
        if i:
            ids += [None] * fill
        ids += list(loaded.tokenizer.encode(piece)) if piece else []
    if len(ids) + suffix_len > seq_len:
        raise RequestError(f"prompt: the template takes {len(ids)} positions (+{suffix_len} of suffix), more "
                           f"than seq_len={seq_len}; shorten it, lower fill or raise seq_len", "prompt")
    mask = torch.zeros(seq_len, dtype=torch.bool)
    full = torch.zeros(seq_len, dtype=torch.long)
    for pos, token in enumerate(ids):
        if token is not None:
            mask[pos], full[pos] = True, token
    return Conditioning.from_mask(mask, full)


def prepare(loaded, body: dict[str, Any], limits: ServeConfig) -> Prepared:
    """Check a parsed body against the server's limits and the model; build the plan."""
    length = max_length(loaded, limits)
    if body["n"] < 1 or body["n"] > limits.max_samples:
        raise RequestError(f"n={body['n']} must be in [1, {limits.max_samples}] (max_samples)", "n")
    if body["seq_len"] is not None and not 1 <= body["seq_len"] <= length:
        raise RequestError(f"seq_len={body['seq_len']} must be in [1, {length}] (the maximum length)", "seq_len")
    if body["steps"] is not None and body["steps"] > limits.max_steps:
        raise RequestError(f"steps={body['steps']} is above this server's limit max_steps={limits.max_steps}",
                           "steps")
    if body["fill"] < 1:
        raise RequestError(f"fill={body['fill']} must be an integer >= 1 (positions per {BLANK} blank)", "fill")
    template = BLANK in body["prompt"]
    config = SamplingConfig(
        sampler=body["sampler"], steps=body["steps"], num_samples=body["n"], seed=body["seed"],
        seq_len=body["seq_len"] if body["seq_len"] is not None else min(loaded.cfg.data.seq_len, length),
        prefix=None if template else (body["prompt"] or None), suffix=body["suffix"] or None,
        top_p=body["top_p"], top_k=body["top_k"], temperature=body["temperature"])
    try:
        plan = plan_sampling(loaded, config)
    except ValueError as err:
        raise _config_error(err) from None
    steps = plan.steps
    if steps is None:  # the step count the run takes: the sampler's default, built as it runs
        try:
            steps = getattr(build_sampler(loaded.method, plan.sampler, plan.options), "default_steps", None)
        except ValueError as err:
            raise _config_error(err) from None
    if steps is not None and steps > limits.max_steps:
        raise RequestError(f"steps: the {plan.sampler} sampler's default of {steps} steps is above this "
                           f"server's limit max_steps={limits.max_steps}; pass steps", "steps")
    if plan.sampler == "ar" and plan.suffix:
        raise RequestError("suffix: the autoregressive sampler only conditions on a prompt; drop the suffix",
                           "suffix")
    clamp = None
    if template:
        if loaded.method.process.autoregressive:
            raise RequestError(f"prompt: an infill template ({BLANK}) needs a diffusion model", "prompt")
        clamp = _template(loaded, body["prompt"], body["fill"], plan.seq_len, len(plan.suffix))
    key = (plan.sampler, plan.steps, repr(sorted(plan.options.items())), plan.seq_len, config.protocol,
           config.seed, config.num_samples, tuple(plan.prefix), tuple(plan.suffix),
           None if clamp is None else (tuple(clamp.mask.tolist()), tuple(clamp.ids.tolist())))
    return Prepared(plan, clamp, key)
