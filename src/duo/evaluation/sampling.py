"""Sampling a loaded model from a :class:`SamplingConfig` (the one entry point behind
``duo sample``, ``duo eval`` and the Python API), in batches, with throughput, and the
sample-quality metrics (Gen PPL + entropy)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..generation import Generation, decode, generate_text, generate_tokens, pick_sampler, resolve_sampler
from ..samplers.semi_ar import check_semi_ar, semi_autoregressive
from ..samplers import SamplingConfig
from ..samplers.loop import Progress
from ..utils.seeding import derive_seed
from .genppl import GenPPLResult, decode_keeping_eos, generative_perplexity, unigram_entropy
from .judges import EvalLM


@dataclass
class SamplingStats:
    """``nfe``: network evaluations each sample saw; ``tokens_per_second`` over all batches."""

    sampler: str
    steps: int | None
    num_samples: int
    seq_len: int
    nfe: int
    seconds: float
    tokens_per_second: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _bar(progress: bool | Progress, calls: int, unit: str = "step") -> tuple[Progress, bool]:
    """The shared bar to use and whether this caller owns (closes) it."""
    if isinstance(progress, Progress):
        return progress, False
    return Progress(calls, enabled=bool(progress), unit=unit), True


def _batches(num_samples: int, batch_size: int | None, seed: int) -> list[tuple[int, int]]:
    """``(samples, seed)`` per batch of ``batch_size`` (None: all at once): batch ``i``
    uses ``derive_seed(seed, i)`` for ``i >= 1``, batch 0 ``seed`` itself."""
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be >= 1")
    batch_size = batch_size or num_samples
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    return [(min(batch_size, num_samples - start), seed if i == 0 else derive_seed(seed, i))
            for i, start in enumerate(range(0, num_samples, batch_size))]


def generate_batched(loaded, *, num_samples: int, batch_size: int | None = None, seed: int = 0,
                     progress: bool | Progress = False, **kwargs) -> Generation:
    """:func:`duo.generation.generate_text` in batches of ``batch_size``; batch ``i`` uses
    seed ``derive_seed(seed, i)`` for ``i >= 1`` (batch 0 matches an unbatched call with ``seed``).
    ``progress``: one bar over batches x steps (or a shared :class:`Progress`)."""
    batches = _batches(num_samples, batch_size, seed)
    method, tok = loaded.method, loaded.tokenizer
    # The AR sampler has its own per-call bar; its batches advance the shared one instead.
    ar = resolve_sampler(method, kwargs.get("sampler")) == "ar"
    bar, owned = _bar(progress, len(batches), "batch" if ar else "step")
    parts: list[Generation] = []
    try:
        for n, batch_seed in batches:
            if ar:
                bar.begin(1)
            parts.append(generate_text(method, tok, num_samples=n, seed=batch_seed,
                                       progress=False if ar else bar, **kwargs))
            if ar:
                bar.update()
    finally:
        if owned:
            bar.close()
    inter = None
    if all(p.intermediates is not None for p in parts):
        inter = [torch.cat(states) for states in zip(*(p.intermediates for p in parts))]
    return Generation(
        tokens=torch.cat([p.tokens for p in parts]), texts=[t for p in parts for t in p.texts],
        nfe=parts[0].nfe, seconds=sum(p.seconds for p in parts), intermediates=inter,
    )


def sampling_stats(gen: Generation, sampler: str, steps: int | None) -> SamplingStats:
    n, length = gen.tokens.shape
    return SamplingStats(sampler, steps, n, length, gen.nfe, gen.seconds, gen.tokens_per_second)


@dataclass
class SampleQuality:
    gen_ppl: GenPPLResult
    entropy: float
    stats: SamplingStats
    texts: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {**self.gen_ppl.to_dict(), "entropy": self.entropy, **self.stats.to_dict()}


@dataclass
class SamplingPlan:
    """A :class:`SamplingConfig` resolved against a loaded model, before any work: the
    sampler and steps (the checkpoint's recorded defaults where unset), its options, the
    sequence length and the encoded prefix / suffix."""

    config: SamplingConfig
    sampler: str
    steps: int | None
    options: dict[str, Any]
    seq_len: int
    prefix: list[int] = field(default_factory=list)
    suffix: list[int] = field(default_factory=list)
    length: int | None = None  # > seq_len: semi-autoregressive windows of seq_len tokens


def plan_sampling(loaded, config: SamplingConfig) -> SamplingPlan:
    """Every check that needs the model (sampler fits, lengths fit), none that costs time."""
    config.validate()
    sampler, steps = pick_sampler(loaded, config.sampler, config.steps)
    options = config.options(sampler)
    tok = loaded.tokenizer
    prefix = list(tok.encode(config.prefix)) if config.prefix else []
    suffix = list(tok.encode(config.suffix)) if config.suffix else []
    seq_len = config.seq_len or loaded.cfg.data.seq_len
    limit = loaded.cfg.model.max_seq_len
    if seq_len > limit:
        raise ValueError(f"seq_len={seq_len} must be in [1, {limit}] (the model's maximum length)")
    bos = 1 if loaded.method.process.autoregressive else 0
    if bos + len(prefix) + len(suffix) > seq_len:
        raise ValueError(f"prefix/suffix of {bos + len(prefix) + len(suffix)} tokens is longer than the "
                         f"sequence (seq_len={seq_len}); shorten it or raise seq_len")
    length = None
    if config.length is not None and config.length != seq_len:
        if config.length < seq_len:
            seq_len = config.length
        else:
            if not loaded.method.process.diffusion:
                raise ValueError(f"length={config.length} > seq_len={seq_len}: semi-autoregressive "
                                 "generation is for diffusion models; an AR model samples up to its maximum length")
            if suffix:
                raise ValueError("suffix= cannot be combined with semi-autoregressive generation (length > seq_len)")
            if config.seq_len is None:  # else validate() has checked it
                check_semi_ar(config.length, seq_len, config.stride)
            length = config.length
    return SamplingPlan(config, sampler, steps, options, seq_len, prefix, suffix, length)


def sample(loaded, config: SamplingConfig | SamplingPlan | None = None, *,
           device: torch.device | str | None = None, return_intermediates: bool = False,
           progress: bool | Progress = False) -> Generation:
    """Generate ``config.num_samples`` texts from a loaded model (see :class:`SamplingConfig`).
    ``progress``: one bar over every batch's steps (batches x windows x steps when
    semi-autoregressive) on stderr."""
    plan = config if isinstance(config, SamplingPlan) else plan_sampling(loaded, config or SamplingConfig())
    cfg = plan.config
    if cfg.num_samples < 1:
        raise ValueError(f"num_samples={cfg.num_samples} must be >= 1")
    device = torch.device(device) if device is not None else next(loaded.backbone.parameters()).device

    def ids(tokens: list[int]):
        return torch.tensor(tokens, dtype=torch.long, device=device) if tokens else None

    if plan.length is not None:
        return _semi_ar(loaded, plan, device, ids(plan.prefix), progress)
    return generate_batched(
        loaded, num_samples=cfg.num_samples, batch_size=cfg.batch_size, seed=cfg.seed, seq_len=plan.seq_len,
        sampler=plan.sampler, steps=plan.steps, options=plan.options, device=device,
        prefix=ids(plan.prefix), suffix=ids(plan.suffix), return_intermediates=return_intermediates,
        progress=progress, protocol=cfg.protocol,
    )


def _semi_ar(loaded, plan: SamplingPlan, device, prefix, progress: bool | Progress) -> Generation:
    """``plan.length`` tokens per sample in windows of ``plan.seq_len`` (see samplers.semi_ar)."""
    cfg, method, tok = plan.config, loaded.method, loaded.tokenizer
    batches = _batches(cfg.num_samples, cfg.batch_size, cfg.seed)
    parts, nfe, start = [], 0, time.perf_counter()
    windows = check_semi_ar(plan.length, plan.seq_len, cfg.stride)
    bar, owned = _bar(progress, len(batches) * windows)  # batches x windows x steps
    try:
        for n, batch_seed in batches:

            def window(clamp, seed, n=n):
                tokens, calls, _ = generate_tokens(
                    method, num_samples=n, seq_len=plan.seq_len, sampler=plan.sampler, steps=plan.steps,
                    seed=seed, prefix=prefix if clamp is None else None, clamp=clamp, options=plan.options,
                    device=device, progress=bar, protocol=cfg.protocol)
                return tokens, calls

            out = semi_autoregressive(window, batch_size=n, length=plan.length, context=plan.seq_len,
                                      stride=cfg.stride, seed=batch_seed, eos_id=getattr(tok, "eos_id", None))
            parts.append(out)
            nfe = out.nfe
    finally:
        if owned:
            bar.close()
    tokens = torch.cat([p.tokens for p in parts]).cpu()
    return Generation(tokens, decode(tok, tokens, getattr(method, "mask_id", None)), nfe,
                      time.perf_counter() - start, lengths=[n for p in parts for n in p.lengths])


def sample_quality(
    loaded,
    judge: EvalLM,
    config: SamplingConfig | SamplingPlan | None = None,
    *,
    judge_batch_size: int = 8,
    judge_max_length: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    **fields: Any,
) -> SampleQuality:
    """Generate, then score: Gen PPL under ``judge``, unigram entropy, throughput.

    ``config`` (or its fields as keywords, e.g. ``steps=64``) says what to generate. Under
    ``protocol="paper"`` the samples keep their EOS text and are scored as the official
    code scores them (MATH.md 11), each generated batch padded on its own (the judge runs
    ``judge_batch_size`` rows at a time either way)."""
    if config is None:
        config = SamplingConfig(**{"num_samples": 16, **fields})
    elif fields:
        raise ValueError(f"pass a SamplingConfig or its fields, not both (got {sorted(fields)})")
    plan = config if isinstance(config, SamplingPlan) else plan_sampling(loaded, config)
    gen = sample(loaded, plan, device=device, progress=progress)
    paper = plan.config.protocol == "paper"
    texts = decode_keeping_eos(loaded.tokenizer, gen.tokens, getattr(loaded.method, "mask_id", None)) \
        if paper else gen.texts
    if paper:
        # The official code pads each generated batch to its own longest text (a text with no
        # EOS of its own then scores the first pad), so each batch is scored by its own call;
        # the truncation length is the generated length (semi-AR: all windows).
        scored = generative_perplexity(texts, judge, batch_size=judge_batch_size,
                                       max_length=judge_max_length or plan.length or plan.seq_len, protocol="paper",
                                       pad_group=plan.config.batch_size or len(texts))
    else:
        scored = generative_perplexity(texts, judge, batch_size=judge_batch_size, max_length=judge_max_length)
    stats = sampling_stats(gen, plan.sampler, plan.steps)
    return SampleQuality(scored, unigram_entropy(gen.tokens), stats, gen.texts)
