"""Model FLOPs of a training step, counted strictly, for MFU reporting.

The DiT has three kinds of parameters, and they cost different amounts per step:

- per-token layers (each block's LayerNorms, attention projections and MLP, the final
  LayerNorm and the output projection) run once for every token;
- per-sequence layers (the time embedding ``sigma_map`` and every ``adaLN_modulation``,
  the blocks' and the final layer's) map the conditioning ``c`` of shape (B, C) and
  run once per sequence, whatever its length;
- the input embedding ``vocab_embed.embedding`` is a lookup for token ids, no matmul.

A matmul parameter costs 2 FLOPs forward and 4 backward each time its layer runs
(Kaplan et al. 2020; PaLM appendix B), so a step with B sequences of length L costs
``6 P_tok B L + 6 P_seq B`` for the parameters plus ``12 n_blocks L D`` per token for the
attention scores QK^T and the value mix (2 * 2 L D forward per block and token, times 3
with backward; the causal variant is counted the same way, as PaLM does). Earlier MFU
figures counted ``6 (P_tok + P_seq)`` per token, about 5% too many for ``small`` at
L = 1024: see :func:`loose_flops_per_token`.

The output projection counts K rows (the vocabulary), not the rows CUDA pads it to.
This is the network's work on token ids: the full-relaxation curriculum's dense input mix
(about 4 K D more per token) and distillation's teacher forward (about a third more) are
not counted, so MFU logged in those phases understates the work done.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from duo.models.config import ModelConfig
from duo.models.dit import DiT

INPUT_EMBEDDING = "vocab_embed.embedding"


def is_per_sequence(name: str) -> bool:
    """Whether parameter ``name`` of a DiT belongs to a layer that runs once per sequence
    (the time embedding ``sigma_map`` or an ``adaLN_modulation``)."""
    return name.startswith("sigma_map.") or ".adaLN_modulation." in f".{name}"


@dataclass(frozen=True)
class FlopCount:
    """Training FLOPs (forward + backward) of a DiT at sequence length ``seq_len``.

    ``per_token_params`` excludes the input embedding and the per-sequence layers and
    includes the output projection; ``per_sequence_params`` are the ``sigma_map`` and
    ``adaLN_modulation`` parameters; ``embedding_params`` (the lookup table) cost nothing.
    """

    seq_len: int
    per_token_params: int
    per_sequence_params: int
    embedding_params: int
    dense_per_token: float
    """6 x per-token parameters: FLOPs of the per-token layers for one token."""
    attention_per_token: float
    """12 n_blocks L D: attention scores and value mix for one token."""
    per_sequence: float
    """6 x per-sequence parameters: FLOPs of the per-sequence layers for one sequence."""

    @property
    def per_token(self) -> float:
        """All FLOPs of a step divided by its tokens: the per-sequence share is spread
        over the L tokens of the sequence."""
        return self.dense_per_token + self.attention_per_token + self.per_sequence / self.seq_len

    def step(self, batch: int) -> float:
        """Training FLOPs of one step over ``batch`` sequences of length ``seq_len``."""
        if batch < 1:
            raise ValueError(f"batch={batch} must be >= 1")
        tokens = batch * self.seq_len
        return tokens * (self.dense_per_token + self.attention_per_token) + batch * self.per_sequence


def flop_count(config: ModelConfig, seq_len: int) -> FlopCount:
    """The strict :class:`FlopCount` of a DiT built from ``config`` at length ``seq_len``."""
    if seq_len < 1:
        raise ValueError(f"seq_len={seq_len} must be >= 1")
    # The meta device gives the exact shapes for any config without allocating weights.
    with torch.device("meta"):
        params = dict(DiT(config).named_parameters())
    embedding = params[INPUT_EMBEDDING].numel()
    per_seq = sum(p.numel() for name, p in params.items() if is_per_sequence(name))
    per_tok = sum(p.numel() for p in params.values()) - embedding - per_seq
    return FlopCount(
        seq_len=seq_len,
        per_token_params=per_tok,
        per_sequence_params=per_seq,
        embedding_params=embedding,
        dense_per_token=6.0 * per_tok,
        attention_per_token=12.0 * config.n_blocks * seq_len * config.hidden_size,
        per_sequence=6.0 * per_seq,
    )


def training_flops(config: ModelConfig, batch: int, seq_len: int) -> float:
    """Training FLOPs (forward + backward) of one step with ``batch`` sequences of length
    ``seq_len``, per-sequence layers counted once per sequence."""
    return flop_count(config, seq_len).step(batch)


def loose_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """The count MFU was reported with before the strict one: ``6 N + 12 n_blocks L D``
    with N every non-embedding parameter, per-sequence layers included as if they ran
    per token. Kept to restate old MFU figures (multiply by strict / loose)."""
    c = flop_count(config, seq_len)
    return 6.0 * (c.per_token_params + c.per_sequence_params) + c.attention_per_token


# Dense bf16/fp16 tensor-core peaks (TFLOP/s) by a substring of the device name.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "4090": 165.0}


def peak_tflops(device: torch.device | str, precision: str) -> float | None:
    """The dense half-precision peak of a known CUDA device under bf16/fp16 precision,
    else None (CPU, fp32, an unknown card): MFU is then not reported."""
    device = torch.device(device)
    if device.type != "cuda" or "16" not in str(precision):  # bf16-mixed, 16-mixed, bf16-true, ...
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)
