"""Sampling in batches, with throughput, and the sample-quality metrics (Gen PPL + entropy)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..generation import Generation, generate_text, resolve_sampler
from .genppl import GenPPLResult, generative_perplexity, unigram_entropy
from ..utils.seeding import derive_seed
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


def generate_batched(loaded, *, num_samples: int, batch_size: int | None = None, seed: int = 0,
                     **kwargs) -> Generation:
    """:func:`duo.generation.generate_text` in batches of ``batch_size``; batch ``i`` uses
    seed ``derive_seed(seed, i)`` for ``i >= 1`` (batch 0 matches an unbatched call with ``seed``)."""
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be >= 1")
    batch_size = batch_size or num_samples
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    method, tok = loaded.method, loaded.tokenizer
    parts: list[Generation] = []
    for i, start in enumerate(range(0, num_samples, batch_size)):
        n = min(batch_size, num_samples - start)
        parts.append(generate_text(method, tok, num_samples=n, seed=seed if i == 0 else derive_seed(seed, i), **kwargs))
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


def sample_quality(
    loaded,
    judge: EvalLM,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    num_samples: int = 16,
    batch_size: int | None = None,
    seq_len: int | None = None,
    seed: int = 0,
    options: dict[str, Any] | None = None,
    judge_batch_size: int = 8,
    judge_max_length: int | None = None,
    device: torch.device | str | None = None,
) -> SampleQuality:
    """Generate, then score: Gen PPL under ``judge``, unigram entropy, throughput."""
    name = resolve_sampler(loaded.method, sampler)
    gen = generate_batched(loaded, num_samples=num_samples, batch_size=batch_size, seed=seed,
                           seq_len=seq_len or loaded.cfg.data.seq_len, sampler=name, steps=steps,
                           options=options, device=device)
    scored = generative_perplexity(gen.texts, judge, batch_size=judge_batch_size,
                                   max_length=judge_max_length)
    return SampleQuality(scored, unigram_entropy(gen.tokens), sampling_stats(gen, name, steps), gen.texts)
