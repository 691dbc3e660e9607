"""Typed dataclass configs: YAML files, presets and dotted ``key=value`` overrides.

Hydra-style selection without Hydra: ``algo=duo`` picks a method's config class,
``model=small`` a model preset, ``data=lm1b`` (or a path) a corpus; then
``algo.tau=1e-3``, ``model.hidden_size=256``, ``trainer.max_steps=100`` set fields.
Every value is type-checked against the dataclass annotation once, when the config is
built, so a typo fails before any work starts.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from .io import atomic_write_text


class ConfigError(ValueError):
    """A user error in a configuration (unknown key, wrong type, bad value)."""


# ----------------------------------------------------------------------------
# Generic dataclass <-> dict with type checking


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp`` (with int -> float widening)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"{key}={value!r} is not one of {_type_name(tp)}")
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            if arg is type(None) and value is None:
                return None
        for arg in get_args(tp):
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}={value!r} has the wrong type; expected {_type_name(tp)}")
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} must be a mapping ({_type_name(tp)})")
        key_tp, val_tp = get_args(tp) or (Any, Any)
        return {coerce(k, key_tp, key): coerce(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if origin in (list, tuple, collections.abc.Sequence):
        if isinstance(value, str) and origin is collections.abc.Sequence:
            raise ConfigError(f"{key}={value!r} must be a list ({_type_name(tp)})")
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} must be a list ({_type_name(tp)})")
        args = get_args(tp)
        item = args[0] if args else Any
        items = [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return from_dict(tp, value, prefix=f"{key}.")
        raise ConfigError(f"{key}={value!r} must be a mapping of {tp.__name__} fields")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is str:
        if isinstance(value, (str, Path)):
            return str(value)
    elif isinstance(value, tp):
        return value
    raise ConfigError(f"{key}={value!r} has the wrong type; expected {_type_name(tp)}")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]}; valid keys under "
            f"{prefix.rstrip('.') or 'the top level'}: {', '.join(names)}"
        )
    kwargs = {k: coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Plain-data (YAML/JSON-safe) view of a config dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def parse_value(text: str) -> Any:
    """``key=value`` right-hand sides are YAML scalars: ``1e-3``, ``true``, ``[1, 2]``, ``null``."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # YAML 1.1 reads "1e-3" as a string; numbers are what users mean.
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return value


def parse_overrides(args: typing.Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> nested dict ``{"a": {"b": 1}, "c": "x"}`` (order kept)."""
    out: dict[str, Any] = {}
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"argument {arg!r} is not key=value (e.g. trainer.max_steps=100)")
        key, text = arg.split("=", 1)
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"argument {arg!r} has an empty key")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                # "algo=mdlm algo.eps=..." keeps the selection under "_name".
                child = {} if child is None else {"_name": child}
                node[part] = child
            node = child
        last = parts[-1]
        value = parse_value(text)
        if isinstance(node.get(last), dict) and not isinstance(value, dict):
            node[last]["_name"] = value
        else:
            node[last] = value
    return out


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``update`` wins. A selection (``_name``) change drops the
    old section's fields, since they belong to another class."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            old = out[key]
            if "_name" in value and old.get("_name") not in (None, value["_name"]):
                old = {}
            out[key] = merge(old, value)
        else:
            out[key] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    return data


def save_yaml(data: dict[str, Any], path: str | Path) -> None:
    """Write YAML atomically (temp file, then rename)."""

    atomic_write_text(Path(path), yaml.safe_dump(data, sort_keys=False))
