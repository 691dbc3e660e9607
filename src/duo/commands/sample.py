"""``duo sample checkpoint=<run> [sampler=... steps=... num_samples=... prefix="..." ...]``

Prints the samples and saves them as JSONL (``<run>/samples/`` or ``out=``); on a
terminal a progress bar over batches x steps runs on stderr (``duo -q``: none). The sampling
keys are the fields of :class:`duo.samplers.SamplingConfig`; sampler and steps default to
what a distilled checkpoint recorded, else the method's default sampler.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..samplers import SamplingConfig
from .common import parse_args, require_checkpoint, resolve_device


@dataclass
class SampleArgs:
    checkpoint: str | None = None  # a run directory, .ckpt, model folder or hf:<repo> (required)
    device: str = "auto"  # auto (cuda when available), cpu, cuda, cuda:<index>
    out: str | None = None  # JSONL file for the samples; None = <run>/samples/sample-<sampler>-...jsonl
    intermediates: bool = False  # also save every denoising state (.intermediates.pt)
    use_ema: bool = True  # sample with the EMA weights (false: the raw weights)


def help_text() -> str:
    from .common import command_help

    return command_help("sample", "usage: duo sample checkpoint=<run> [key=value ...]\n\n"
                        "Prints the samples, then saves them as JSONL.", SampleArgs, SamplingConfig)


def _default_out(loaded, sampler: str, steps: int | None, seed: int) -> Path:
    from ..evaluation import run_dir_of

    return run_dir_of(loaded.path) / "samples" / f"sample-{sampler}-{steps or 'default'}steps-seed{seed}.jsonl"


def main(args: list[str]) -> int:
    from ..checkpoints import load_checkpoint
    from ..cli import show_progress
    from ..evaluation import plan_sampling, sample
    from ..utils.io import atomic_torch_save, atomic_write_text

    a, sampling = parse_args(args, "sample", SampleArgs, SamplingConfig)
    require_checkpoint(a.checkpoint, "sample")
    if sampling.num_samples < 1:
        raise ValueError(f"num_samples={sampling.num_samples} must be >= 1")
    device = resolve_device(a.device)
    loaded = load_checkpoint(a.checkpoint, use_ema=a.use_ema, device=device)
    plan = plan_sampling(loaded, sampling)
    gen = sample(loaded, plan, device=device, return_intermediates=a.intermediates, progress=show_progress())
    out = Path(a.out) if a.out else _default_out(loaded, plan.sampler, plan.steps, sampling.seed)
    settings = {"checkpoint": str(loaded.path), "sampler": plan.sampler, "steps": plan.steps, "seed": sampling.seed,
                "options": {k: list(v) if isinstance(v, tuple) else v for k, v in plan.options.items()},
                "prefix": sampling.prefix, "suffix": sampling.suffix, "nfe": gen.nfe,
                "protocol": sampling.protocol}
    lines = [json.dumps({"index": i, "text": text, "tokens": ids, **settings})
             for i, (text, ids) in enumerate(zip(gen.texts, gen.tokens.tolist()))]
    for i, text in enumerate(gen.texts):
        print(f"--- sample {i} ---\n{text}")
    atomic_write_text(out, "\n".join(lines) + "\n")
    if gen.intermediates is not None:
        states = out.with_name(out.stem + ".intermediates.pt")
        # (states, B, L) ids from the prior to the end; a full disk gives the path and the cause
        atomic_torch_save(torch.stack(gen.intermediates).to(torch.int32), states)
        print(f"denoising states: {states}")
    if gen.lengths is not None:  # semi-autoregressive: windows of the model's context
        print(f"lengths before the first EOS: {gen.lengths}")
    print(f"{len(gen.texts)} samples x {gen.tokens.shape[1]} tokens, {plan.sampler} sampler, {plan.steps or 'default'} "
          f"steps, nfe {gen.nfe} ({sampling.protocol} protocol), {gen.tokens_per_second:.1f} tokens/s; "
          f"saved to {out}")
    return 0
