"""``duo sample checkpoint=<run> [sampler=... steps=... num_samples=... prefix="..." ...]``

Prints the samples and saves them as JSONL (``<run>/samples/`` or ``out=``). Sampler and
steps default to what a distilled checkpoint recorded, else the method's default sampler.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..utils.typed_config import ConfigError, coerce, parse_value


@dataclass
class SampleArgs:
    checkpoint: str | None = None
    sampler: str | None = None
    steps: int | None = None
    num_samples: int = 4
    batch_size: int | None = None
    seq_len: int | None = None
    seed: int = 0
    prefix: str | None = None
    suffix: str | None = None
    top_p: float | None = None
    top_k: int | None = None
    eta: float | None = None  # psi: re-noising rate of the ReMDM kappa rules
    kappa: float | None = None  # psi: a constant kappa instead
    kappa_mode: str = "remdm-rescale"  # psi: remdm-rescale | remdm-cap | remdm-const
    temperature: float | None = None  # ar only
    device: str = "auto"
    out: str | None = None
    intermediates: bool = False
    use_ema: bool = True


def _is_text(tp: Any) -> bool:
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    return str in args


def parse_args(cls: type, args: list[str], command: str):
    """``key=value`` strings -> dataclass ``cls``. Text fields keep the raw text (a prompt
    "123" stays a string); the others are YAML scalars checked against their type."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values: dict[str, Any] = {}
    for arg in args:
        key, sep, text = arg.partition("=")
        if not sep:
            raise ConfigError(f"argument {arg!r} is not key=value; e.g. duo {command} checkpoint=runs/<run>")
        if key not in names:
            raise ConfigError(f"unknown key {key!r} for duo {command}; valid keys: {', '.join(names)}")
        if _is_text(hints[key]):
            values[key] = text if text else None
        else:
            values[key] = coerce(parse_value(text), hints[key], key)
    if not values.get("checkpoint"):
        raise ConfigError(f"duo {command} needs checkpoint=<a run directory or .ckpt>")
    return cls(**values)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available; use device=cpu or device=auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:<index>") from None


def check_steps(steps: int | None) -> None:
    if steps is not None and steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")


def sampler_options(sampler: str, a) -> dict[str, Any]:
    """Sampler dataclass fields from the command's keys; keys of another sampler are errors."""
    options: dict[str, Any] = {}
    if a.top_p is not None:
        options["top_p"] = a.top_p
    if a.top_k is not None:
        options["top_k"] = a.top_k
    if (a.eta is not None or a.kappa is not None) and sampler != "psi":
        raise ValueError(f"eta/kappa apply to sampler=psi, not {sampler!r}; add sampler=psi or drop them")
    if a.eta is not None and a.kappa is not None:
        raise ValueError("pass eta (ReMDM re-noising rate) or kappa (a constant), not both")
    if a.eta is not None:
        options["rule"] = (a.kappa_mode, a.eta)
    elif a.kappa is not None:
        options["rule"] = ("kappa", a.kappa)
    if a.temperature is not None:
        if sampler != "ar":
            raise ValueError(f"temperature applies to sampler=ar, not {sampler!r}; drop it")
        options["temperature"] = a.temperature
    return options


def pick_sampler(loaded, sampler: str | None, steps: int | None) -> tuple[str, int | None]:
    """The requested sampler and steps, else the checkpoint's recorded defaults."""
    from ..generation import resolve_sampler

    meta = loaded.metadata or {}
    name = resolve_sampler(loaded.method, sampler or meta.get("sampler"))
    if steps is None and sampler in (None, meta.get("sampler")):
        steps = meta.get("steps")
    return name, steps


def check_lengths(loaded, seq_len: int, prefix: list[int], suffix: list[int]) -> None:
    limit = loaded.cfg.model.max_seq_len
    if seq_len < 1 or seq_len > limit:
        raise ValueError(f"seq_len={seq_len} must be in [1, {limit}] (the model's maximum length)")
    bos = 1 if loaded.method.process.autoregressive else 0
    if bos + len(prefix) + len(suffix) > seq_len:
        raise ValueError(f"prefix/suffix of {bos + len(prefix) + len(suffix)} tokens is longer than the "
                         f"sequence (seq_len={seq_len}); shorten it or raise seq_len")


def _default_out(loaded, sampler: str, steps: int | None, seed: int) -> Path:
    from ..evaluation import run_dir_of

    return run_dir_of(loaded.path) / "samples" / f"sample-{sampler}-{steps or 'default'}steps-seed{seed}.jsonl"


def main(args: list[str]) -> int:
    from ..checkpoints import load_checkpoint
    from ..evaluation import generate_batched
    from ..utils.io import atomic_path, atomic_write_text

    a = parse_args(SampleArgs, args, "sample")
    check_steps(a.steps)
    device = resolve_device(a.device)
    loaded = load_checkpoint(a.checkpoint, use_ema=a.use_ema, device=device)
    sampler, steps = pick_sampler(loaded, a.sampler, a.steps)
    options = sampler_options(sampler, a)
    tok = loaded.tokenizer
    prefix = tok.encode(a.prefix) if a.prefix else []
    suffix = tok.encode(a.suffix) if a.suffix else []
    seq_len = a.seq_len or loaded.cfg.data.seq_len
    check_lengths(loaded, seq_len, prefix, suffix)
    gen = generate_batched(
        loaded, num_samples=a.num_samples, batch_size=a.batch_size, seed=a.seed, seq_len=seq_len,
        sampler=sampler, steps=steps, options=options, device=device,
        prefix=torch.tensor(prefix, dtype=torch.long, device=device) if prefix else None,
        suffix=torch.tensor(suffix, dtype=torch.long, device=device) if suffix else None,
        return_intermediates=a.intermediates,
    )
    out = Path(a.out) if a.out else _default_out(loaded, sampler, steps, a.seed)
    settings = {"checkpoint": str(loaded.path), "sampler": sampler, "steps": steps, "seed": a.seed,
                "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
                "prefix": a.prefix, "suffix": a.suffix, "nfe": gen.nfe}
    lines = [json.dumps({"index": i, "text": text, "tokens": ids, **settings})
             for i, (text, ids) in enumerate(zip(gen.texts, gen.tokens.tolist()))]
    atomic_write_text(out, "\n".join(lines) + "\n")
    for i, text in enumerate(gen.texts):
        print(f"--- sample {i} ---\n{text}")
    if gen.intermediates is not None:
        states = out.with_name(out.stem + ".intermediates.pt")
        with atomic_path(states) as tmp:  # (steps + 1, B, L) ids from the prior to the end
            torch.save(torch.stack(gen.intermediates).to(torch.int32), tmp)
        print(f"denoising states: {states}")
    print(f"{len(gen.texts)} samples x {seq_len} tokens, {sampler} sampler, nfe {gen.nfe}, "
          f"{gen.tokens_per_second:.1f} tokens/s; saved to {out}")
    return 0
