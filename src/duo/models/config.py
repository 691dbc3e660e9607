"""Typed configuration and named presets for the DiT backbone."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class ModelConfig:
    """Size and variant of a :class:`~duo.models.dit.DiT`.

    ``vocab_size`` is normally overwritten with the tokenizer's size when the model is
    built. ``causal=True`` gives the autoregressive baseline, which has no time
    conditioning (and, as in the published AR checkpoints, no ``sigma_map`` and no
    ``adaLN_modulation`` layers), so it requires ``time_conditioning=False``.
    ``time_conditioning=False`` on a bidirectional model keeps ``sigma_map`` (the
    published MDLM layout) but feeds it ``sigma = 0``.
    """

    vocab_size: int = 50258
    hidden_size: int = 768
    cond_dim: int = 128
    n_heads: int = 12
    n_blocks: int = 12
    # Rotary embeddings have no hard length limit; the cap exists so an over-long
    # input fails with a clear message instead of silently extrapolating.
    max_seq_len: int = 1024
    dropout: float = 0.1
    mlp_ratio: int = 4
    causal: bool = False
    time_conditioning: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads

    def validate(self) -> "ModelConfig":
        """Raise a one-line ``ValueError`` for an inconsistent config; return self."""
        for name in ("vocab_size", "hidden_size", "cond_dim", "n_heads", "n_blocks",
                     "max_seq_len", "mlp_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model.{name}={value!r} must be a positive integer")
        if self.hidden_size % self.n_heads:
            raise ValueError(
                f"model.hidden_size={self.hidden_size} is not divisible by "
                f"model.n_heads={self.n_heads}; choose sizes with hidden_size % n_heads == 0"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"model head dim hidden_size/n_heads={self.head_dim} must be even for "
                "rotary embeddings; change hidden_size or n_heads"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout={self.dropout!r} must lie in [0, 1)")
        if self.causal and self.time_conditioning:
            raise ValueError(
                "model.causal=True has no time conditioning; set model.time_conditioning=False"
            )
        return self


MODEL_PRESETS: dict[str, ModelConfig] = {
    # Trains in CPU-minutes on a 4096-token byte-BPE vocabulary at L = 128 (~2M params).
    "tiny": ModelConfig(vocab_size=4096, hidden_size=128, cond_dim=64, n_heads=4,
                        n_blocks=4, max_seq_len=128, dropout=0.0),
    # The papers' 170M model (GPT-2 vocabulary plus a mask token).
    "small": ModelConfig(vocab_size=50258, hidden_size=768, cond_dim=128, n_heads=12,
                         n_blocks=12, max_seq_len=1024, dropout=0.1),
    "medium": ModelConfig(vocab_size=50258, hidden_size=1024, cond_dim=128, n_heads=16,
                          n_blocks=24, max_seq_len=1024, dropout=0.1),
}


def get_model_config(name: str, **overrides: Any) -> ModelConfig:
    """Copy of preset ``name`` with ``overrides`` applied, validated."""
    if name not in MODEL_PRESETS:
        raise ValueError(
            f"unknown model preset {name!r}; valid presets: {', '.join(sorted(MODEL_PRESETS))}"
        )
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"unknown model config field(s) {', '.join(unknown)}; valid fields: "
            f"{', '.join(sorted(fields))}"
        )
    return dataclasses.replace(MODEL_PRESETS[name], **overrides).validate()
