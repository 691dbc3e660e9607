"""Samples at the end of training, drawn with the EMA weights and saved in the run."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

from ..config import end_sample_config
from ..generation import generate_text, resolve_sampler
from ..samplers import SAMPLERS
from ..utils.io import atomic_write_text


def sample_texts(module, tokenizer, sample_cfg, run_dir: Path | None) -> list[str]:
    """Samples with the EMA weights, saved under ``run_dir/samples`` unless it is None."""
    method = module.method
    sample_cfg = end_sample_config(module.cfg.algo, sample_cfg)
    sampler = sample_cfg.sampler
    if sampler is not None and method.process.kind not in SAMPLERS[sampler].processes:
        sampler = None  # e.g. a config's "ancestral" for an mdlm / ar run: the method's own default
    ema = module.ema.swapped_in(module.backbone) if module.ema is not None else nullcontext()
    name = resolve_sampler(method, sampler)
    with ema:
        gen = generate_text(
            method, tokenizer, num_samples=sample_cfg.num_samples,
            seq_len=sample_cfg.seq_len or module.cfg.data.seq_len, sampler=name, steps=sample_cfg.steps,
            seed=sample_cfg.seed, options=sample_cfg.options(name), protocol=sample_cfg.protocol,
            prompt=sample_cfg.prefix,
        )
    if run_dir is None:
        return gen.texts
    out = Path(run_dir) / "samples"
    atomic_write_text(out / f"step_{module.global_step}.json",
                      json.dumps({"step": module.global_step, "sampler": sampler or "default",
                                  "steps": sample_cfg.steps, "texts": gen.texts}, indent=1))
    return gen.texts
