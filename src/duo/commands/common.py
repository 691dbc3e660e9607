"""What the commands share: ``key=value`` parsing into typed dataclasses, the device."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import torch

from ..utils.typed_config import ConfigError, coerce, parse_value


def _is_text(tp: Any) -> bool:
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    return str in args


def parse_args(args: list[str], command: str, *sections: Any) -> tuple[Any, ...]:
    """``key=value`` strings -> one instance per dataclass in ``sections`` (a class, or an
    instance whose values are the command's defaults). Keys are unique across sections.
    Text fields keep the raw text (a prompt "123" stays a string); the others are YAML
    scalars checked against their type. Each section's ``validate()`` runs once, here."""
    owners: dict[str, tuple[int, Any]] = {}
    for i, section in enumerate(sections):
        cls = section if isinstance(section, type) else type(section)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            assert f.name not in owners, f"{f.name} is declared by two sections of duo {command}"
            owners[f.name] = (i, hints[f.name])
    values: list[dict[str, Any]] = [{} for _ in sections]
    for arg in args:
        key, sep, text = arg.partition("=")
        if not sep:
            raise ConfigError(f"argument {arg!r} is not key=value; e.g. duo {command} checkpoint=runs/<run>")
        if key not in owners:
            raise ConfigError(f"unknown key {key!r} for duo {command}; valid keys: {', '.join(owners)}")
        i, tp = owners[key]
        values[i][key] = (text or None) if _is_text(tp) else coerce(parse_value(text), tp, key)
    out = []
    for section, given in zip(sections, values):
        obj = section(**given) if isinstance(section, type) else dataclasses.replace(section, **given)
        out.append(obj.validate() if hasattr(obj, "validate") else obj)
    return tuple(out)


def require_checkpoint(checkpoint: str | None, command: str) -> str:
    if not checkpoint:
        raise ConfigError(f"duo {command} needs checkpoint=<a run directory, .ckpt, folder or hf:<repo>>")
    return checkpoint


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available; use device=cpu or device=auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:<index>") from None
