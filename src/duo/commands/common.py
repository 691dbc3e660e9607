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


def _is_path(arg: str) -> bool:
    """A path (no ``=``, or one inside a path such as ``runs/lr=3e-4``), not ``key=value``."""
    key, sep, _ = arg.partition("=")
    return not sep or key.startswith(("/", ".", "~")) or "/" in key


def parse_positional(args: list[str], command: str, n_positional: int, usage: str, *sections: Any,
                     extra: tuple[str, ...] = ()) -> tuple[list[str], tuple[Any, ...], dict[str, str]]:
    """``SRC OUT key=value ...``: the ``n_positional`` paths (else ``ValueError("usage: ...")``),
    the ``key=value`` rest through :func:`parse_args` into ``sections``, and the raw text of
    the ``extra`` keys (the command's own, outside any section)."""
    positional = [a for a in args if _is_path(a)]
    keyed = [a for a in args if not _is_path(a)]
    given = {k: v for k, _, v in (a.partition("=") for a in keyed) if k in extra}
    if len(positional) != n_positional:
        raise ValueError(f"usage: {usage}")
    return positional, parse_args([a for a in keyed if a.partition("=")[0] not in given], command, *sections), given


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


# ----------------------------------------------------------------------------
# Per-command help: every key with its type, default and one line


def _field_comments(cls: type) -> dict[str, str]:
    """Comments beside (or just above) each field in the class source: the help text."""
    import inspect
    import re

    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        above: list[str] = []
        for line in lines:
            stripped = line.strip()
            if stripped.startswith("#"):
                above.append(stripped.lstrip("#").strip())
                continue
            m = re.match(r"\s+(\w+)\s*:\s*[^=#]+?(?:=.*?)?(?:#\s*(.*))?$", line)
            if m and not stripped.startswith(("def ", "return", "@")):
                text = m.group(2) or " ".join(above)
                if text:
                    out[m.group(1)] = text
            above = []
    return out


# Help for fields whose class carries no comment beside them (by field name).
KEY_HELP = {
    "schedule": "noise schedule alpha(t) (loglinear, linear, cosine, ...)",
    "eps": "smallest time t sampled in training (avoids t = 0)",
    "curriculum_k": "topk curriculum: tokens kept per position",
    "alpha_min": "curriculum: lowest alpha-tilde of the Gaussian range",
    "alpha_max": "curriculum: highest alpha-tilde of the Gaussian range",
    "gamma_min": "curriculum: lower end of the log-SNR grid of the T(gamma) fit",
    "gamma_max": "curriculum: upper end of the log-SNR grid of the T(gamma) fit",
    "poly_fit_degree": "degree of the polynomial fit of T(gamma)",
    "hidden_size": "width D of the transformer, divisible by n_heads",
    "cond_dim": "width C of the time conditioning",
    "n_heads": "attention heads H",
    "n_blocks": "transformer blocks N",
    "dropout": "dropout rate in [0, 1)",
    "mlp_ratio": "MLP width as a multiple of hidden_size",
    "causal": "causal attention (the autoregressive baseline)",
    "time_conditioning": "condition the network on the noise level",
    "seq_len": "tokens per sequence (data: at most model.max_seq_len)",
    "packing": "how documents become rows: pack (concatenate and cut) or pad/wrap variants",
    "text_field": "JSON / dataset field holding the text",
    "val_fraction": "share of a local or built-in corpus held out for validation, (0, 1)",
    "detokenize": "undo the corpus's tokenisation artefacts (lm1b, ptb, ...)",
    "num_workers": "data loader worker processes (0 = load in the main process)",
    "seed": "random seed",
    "show_progress": "progress bars while the tokenizer and cache are built",
    "max_steps": "optimiser steps to train for (>= 1)",
    "lr": "peak learning rate (> 0)",
    "warmup_steps": "linear warm-up steps (>= 0)",
    "lr_schedule": "after warm-up: constant or cosine decay",
    "min_lr_ratio": "cosine: final learning rate as a fraction of lr, [0, 1]",
    "weight_decay": "AdamW weight decay (>= 0)",
    "beta1": "AdamW beta1 in [0, 1)",
    "beta2": "AdamW beta2 in [0, 1)",
    "grad_clip": "gradient norm clip (0 = off)",
    "val_every": "validate every N optimiser steps",
    "val_batches": "validation batches each time",
    "val_passes": "times drawn per validation sequence (null = enough for 1,024 draws)",
    "ckpt_every": "write checkpoints/step_N.ckpt every N steps (last.ckpt too)",
    "log_every": "log metrics every N steps",
    "accelerator": "auto, cpu, gpu/cuda, mps, tpu",
    "devices": "auto, -1 (all), a count >= 1, or a list of device indices",
    "num_nodes": "machines (>= 1)",
    "loggers": "any of csv, tensorboard, wandb",
    "compile": "torch.compile the backbone",
    "progress_bar": "show the training progress bar (-q turns it off)",
}


def _from_docstring(cls: type, name: str) -> str:
    """The sentence of the class docstring that names ``name`` (``name`` or name:)."""
    import re

    doc = " ".join((cls.__doc__ or "").split())
    for sentence in re.split(r"(?<=[.;])\s+", doc):
        if f"``{name}``" in sentence or re.match(rf"{name}\s*:", sentence):
            return sentence
    return ""


def _default_text(f: dataclasses.Field, instance: Any = None) -> str:
    if instance is not None:
        value = getattr(instance, f.name)
    elif f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return "required"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value) \
        if isinstance(value, str) else str(value)


def describe_keys(section: Any, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """``(key, type, default, help)`` for each field of a dataclass (class or instance)."""
    from ..utils.typed_config import _type_name

    cls = section if isinstance(section, type) else type(section)
    instance = None if isinstance(section, type) else section
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    rows = []
    for f in dataclasses.fields(cls):
        text = f.metadata.get("help") or comments.get(f.name, "")
        text = text or _from_docstring(cls, f.name) or KEY_HELP.get(f.name, "")
        rows.append((prefix + f.name, _type_name(hints[f.name]).replace("NoneType", "None"),
                     _default_text(f, instance), text))
    return rows


def format_keys(rows: list[tuple[str, str, str, str]]) -> str:
    if not rows:
        return ""
    kw = max(len(r[0]) for r in rows)
    tw = min(max(len(r[1]) for r in rows), 28)
    out = []
    for key, tp, default, text in rows:
        line = f"  {key:<{kw}}  {tp:<{tw}}  default {default}"
        out.append(line + (f"  -- {text}" if text else ""))
    return "\n".join(out)


def command_help(command: str, usage: str, *sections: Any) -> str:
    """The text of ``duo <command> --help``: usage, then every key."""
    rows = [row for section in sections for row in describe_keys(section)]
    return f"{usage}\n\nkeys (key=value):\n{format_keys(rows)}\n"
