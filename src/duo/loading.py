"""A model ready to use: the run configuration, method, backbone and tokenizer, built from
a configuration and a state dict (whatever file they came from).

Both ``duo.checkpoints`` (the library's own files) and ``duo.interop`` (published
artifacts) end here, so a loaded model is the same object whatever its source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import TrainConfig
from .methods import build_method
from .models import strip_prefix


@dataclass
class LoadedModel:
    cfg: TrainConfig
    method: Any
    backbone: nn.Module
    tokenizer: Any
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def algo(self) -> str:
        return self.cfg.algo


def ema_counters(ema: Any) -> dict[str, Any] | None:
    """``{"decay", "num_updates"}`` of a checkpoint's EMA entry (duo's and the official
    layout share these names), or None without one: what carrying an EMA on needs besides
    the shadow weights, which the loaded backbone holds."""
    if not isinstance(ema, dict):
        return None
    return {"decay": ema.get("decay"), "num_updates": int(ema.get("num_updates", 0) or 0)}


def build_loaded(cfg: TrainConfig, tokenizer, state_dict: dict, ema: dict | None, path: Path,
                 metadata: dict | None = None, use_ema: bool = True,
                 model_vocab_size: int | None = None) -> LoadedModel:
    backbone, method = build_method(cfg, tokenizer.vocab_size, model_vocab_size=model_vocab_size)
    weights = strip_prefix(state_dict, "backbone.")
    missing, unexpected = backbone.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {str(path)!r} does not fit the {cfg.algo}/{cfg.model_preset} model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); check algo and model settings"
        )
    if use_ema and ema is not None:
        shadow = ema["shadow_params"]
        params = list(backbone.parameters())
        if len(shadow) != len(params):
            raise ValueError(f"EMA in {str(path)!r} has {len(shadow)} tensors for {len(params)} parameters")
        with torch.no_grad():
            for p, s in zip(params, shadow):
                p.copy_(s.to(p.dtype))
    metadata = dict(metadata or {})
    if metadata.get("masked_logit_ids") and hasattr(method, "masked_logit_ids"):
        method.masked_logit_ids = tuple(int(i) for i in metadata["masked_logit_ids"])  # published AR
    if ema_counters(ema) is not None:
        metadata.setdefault("ema", ema_counters(ema))
    backbone.eval()
    return LoadedModel(cfg, method, backbone, tokenizer, path, metadata)
