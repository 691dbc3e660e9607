"""Generative perplexity and unigram entropy of samples (MATH.md section 9).

Gen PPL: decode the samples to text, re-tokenize with the judge as ``BOS text EOS``, and
report ``exp`` of the judge's mean next-token NLL over every token after BOS. Always
report it with the samples' entropy: a low Gen PPL with a low entropy is mode collapse.

``protocol="paper"`` scores as the official Duo code does (MATH.md 11): the texts keep
``<|endoftext|>`` (decode them with :func:`decode_keeping_eos`), are re-tokenized with no
BOS or EOS added, truncated to ``max_length`` and padded with EOS to the longest, split
into chunks of the judge's context; in each chunk the first token is never scored and a
token counts when it is not EOS or is the chunk's first EOS (:func:`paper_token_mask`).
Gen PPL = exp(sum of NLL * mask / sum of mask) over all texts. The official code pads
each generated batch separately: pass one batch per call to match it exactly.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..generation import decode
from ..samplers.grid import check_protocol
from .judges import EvalLM

# A judge fails the round trip when it drops more than this share of a sample's characters
# or maps more than this share of its tokens to the unknown token.
MAX_LOSS = 0.05


@dataclass
class GenPPLResult:
    gen_ppl: float
    mean_nll: float
    num_tokens: int
    num_samples: int
    judge: str = ""
    protocol: str = "ours"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def unigram_entropy(tokens: Tensor | Sequence[Sequence[int]]) -> float:
    """Entropy (nats) of the token-id frequencies within each sample, averaged over samples.

    ``tokens``: (B, L) ids or a list of id lists. All-identical tokens give 0; n distinct
    ids, each equally often, give ``log n``.
    """
    rows = tokens.tolist() if isinstance(tokens, Tensor) else [list(r) for r in tokens]
    if not rows:
        raise ValueError("unigram_entropy got no samples; pass a (B, L) tensor with B >= 1")
    total = 0.0
    for row in rows:
        if not row:
            continue
        n = len(row)
        total -= sum(c / n * math.log(c / n) for c in Counter(row).values())
    return total / len(rows)


def _normalise(text: str) -> str:
    # Case and spacing are what uncased / word-level tokenizers legitimately change.
    return "".join(text.lower().split())


def _chars_lost(original: str, round_trip: str) -> float:
    a, b = Counter(_normalise(original)), Counter(_normalise(round_trip))
    return sum((a - b).values()) / max(sum(a.values()), 1)


def decode_keeping_eos(tokenizer, tokens: Tensor, mask_id: int | None = None) -> list[str]:
    """Texts of (B, L) ids with special tokens (``<|endoftext|>``) kept in the text, as the
    official code decodes samples for ``protocol="paper"``; ids the tokenizer does not know
    (the mask) are dropped."""
    return decode(tokenizer, tokens, mask_id, keep_special=True)


def encode_for_judge(judge: EvalLM, texts: Sequence[str], max_length: int | None = None,
                     protocol: str = "ours") -> list[list[int]]:
    """``BOS ids EOS`` per text (``protocol="paper"``: the ids alone), checking that the
    judge's tokenizer can represent it."""
    check_protocol(protocol)
    paper = protocol == "paper"
    out = []
    for i, text in enumerate(texts):
        try:
            ids = judge.encode(text)
        except ValueError as err:
            raise ValueError(f"judge {judge.name!r} cannot encode sample {i}: {err}") from None
        unk = sum(1 for t in ids if judge.unk_id is not None and t == judge.unk_id) / max(len(ids), 1)
        # Under "paper" the text holds EOS markers that the round trip drops by design.
        lost = 0.0 if paper else _chars_lost(text, judge.decode(ids))
        if unk > MAX_LOSS or lost > MAX_LOSS:
            raise ValueError(
                f"judge {judge.name!r} cannot encode the samples: sample {i} maps {unk:.0%} of its tokens to "
                f"unknown and loses {lost:.0%} of its characters; use a judge whose tokenizer covers the text "
                "(e.g. an ar run trained with the sampled model's tokenizer)"
            )
        if not paper:
            ids = ([judge.bos_id] if judge.bos_id is not None else []) + ids
            ids += [judge.eos_id] if judge.eos_id is not None else []
        out.append(ids[:max_length] if max_length else ids)
    return out


def paper_token_mask(chunk: Tensor, eos_id: int) -> Tensor:
    """Which targets of a chunk (B, T) the official code scores: (B, T - 1) bool, entry j
    for token j + 1 predicted from tokens <= j; a token counts when it is not EOS or is
    the first EOS of the chunk (its cumulative EOS count, from position 0, is 1)."""
    eos = chunk == eos_id
    first = eos.long().cumsum(-1) == 1
    return (first | ~eos)[:, 1:]


def _paper_rows(ids: list[list[int]], eos_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad with EOS to the longest: ids and attention mask (N, T) int64."""
    width = max(len(r) for r in ids)
    out = torch.full((len(ids), width), eos_id, dtype=torch.long)
    attn = torch.zeros((len(ids), width), dtype=torch.long)
    for r, row in enumerate(ids):
        out[r, :len(row)] = torch.tensor(row, dtype=torch.long)
        attn[r, :len(row)] = 1
    return out, attn


@torch.no_grad()
def _paper_generative_perplexity(texts: Sequence[str], judge: EvalLM, batch_size: int,
                                 max_length: int | None, device, pad_group: int | None) -> GenPPLResult:
    if judge.eos_id is None:
        raise ValueError(f"judge {judge.name!r} has no EOS token; protocol='paper' needs one "
                         "(use protocol='ours')")
    encoded = encode_for_judge(judge, texts, max_length, "paper")
    size = int(judge.context_size)
    if size < 2:
        raise ValueError(f"judge context size {size} is too short; it must be >= 2")
    group = pad_group or len(encoded)
    padded = [_paper_rows(encoded[g:g + group], judge.eos_id) for g in range(0, len(encoded), group)]
    batches = [(ids[i:i + batch_size], attn[i:i + batch_size])
               for ids, attn in padded for i in range(0, ids.shape[0], batch_size)]
    nll_sum, count = 0.0, 0
    for rows, masks in batches:
        for chunk, chunk_attn in zip(rows.split(size, dim=-1), masks.split(size, dim=-1)):
            if chunk.shape[1] < 2:
                continue  # a one-token chunk has nothing to score
            keep = paper_token_mask(chunk, judge.eos_id)
            if device is not None:
                chunk, chunk_attn, keep = chunk.to(device), chunk_attn.to(device), keep.to(device)
            logits = judge.logits(chunk, chunk_attn).float()
            nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), chunk[:, 1:], reduction="none")
            nll_sum += float(nll[keep].double().sum())
            count += int(keep.sum())
    if count == 0:
        raise ValueError("the samples give no token to score; generate longer samples")
    mean = nll_sum / count
    return GenPPLResult(math.exp(min(mean, 700.0)), mean, count, len(texts), judge.name, "paper")


def _windows(ids: list[int], size: int) -> list[list[int]]:
    """Windows of at most ``size`` ids overlapping by one, so every id after the first is
    predicted exactly once, with as much context as the judge allows."""
    if size < 2:
        raise ValueError(f"judge context size {size} is too short; it must be >= 2")
    out, start = [], 0
    while start < len(ids) - 1:
        out.append(ids[start:start + size])
        start += size - 1
    return out


@torch.no_grad()
def generative_perplexity(
    texts: Sequence[str],
    judge: EvalLM,
    *,
    batch_size: int = 8,
    max_length: int | None = None,
    device: torch.device | str | None = None,
    protocol: str = "ours",
    pad_group: int | None = None,
) -> GenPPLResult:
    """``exp`` of the judge's mean NLL per token over the re-tokenized texts.

    ``device``: where the ids go (default: the judge's ``device`` attribute, if any).
    ``max_length`` truncates each re-tokenized text (BOS and EOS included); longer texts
    are scored in windows of the judge's context size. ``protocol="paper"``: the
    official scoring (see the module docstring); ``max_length`` is then the official
    truncation length (the sampled sequence length), and ``pad_group`` texts at a time
    are padded to their longest (the official code pads each generated batch on its own;
    None: all together).
    """
    check_protocol(protocol)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if not texts:
        raise ValueError("generative_perplexity got no texts; generate some samples first")
    device = device if device is not None else getattr(judge, "device", None)
    if protocol == "paper":
        return _paper_generative_perplexity(texts, judge, batch_size, max_length, device, pad_group)
    windows = [w for ids in encode_for_judge(judge, texts, max_length) for w in _windows(ids, judge.context_size)]
    if not windows:
        raise ValueError("the samples give no token to score; generate longer samples")
    nll_sum, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        width = max(len(w) for w in chunk)
        ids = torch.full((len(chunk), width), judge.pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, w in enumerate(chunk):
            ids[r, :len(w)] = torch.tensor(w)
            mask[r, :len(w)] = 1
        if device is not None:
            ids, mask = ids.to(device), mask.to(device)
        logits = judge.logits(ids, mask).float()
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
        keep = mask[:, 1:].bool()
        nll_sum += float(nll[keep].double().sum())
        count += int(keep.sum())
    mean = nll_sum / count
    return GenPPLResult(math.exp(min(mean, 700.0)), mean, count, len(texts), judge.name)
