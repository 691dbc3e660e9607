"""Exponential moving average of the weights (used for validation and sampling).

The state dict follows the published Duo/MDLM checkpoints' ``ema`` entry:
``decay``, ``num_updates``, ``shadow_params`` (a list in ``parameters()`` order).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


class EMA:
    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.num_updates = 0
        self.shadow = [p.detach().clone().float() for p in module.parameters()]

    def check_matches(self, module: nn.Module) -> None:
        """One-line error when ``module``'s parameters no longer have the shadows' shapes.

        A sharding strategy (FSDP with ``use_orig_params``) turns each parameter into a
        flat view of this rank's shard once it wraps the model; averaging those against
        full-shape shadows, and saving one rank's shards as the EMA, would be wrong.
        """
        params = list(module.parameters())
        if len(params) != len(self.shadow) or any(
            p.shape != s.shape for p, s in zip(params, self.shadow)
        ):
            raise RuntimeError(
                "the EMA of the weights needs unsharded parameters, but the training strategy "
                "sharded them (strategy=fsdp?); use trainer.strategy=ddp or set trainer.ema=0"
            )

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.num_updates += 1
        # Warm-up of the decay keeps early averages from being dominated by the init.
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        params = [p.detach().float() for p in module.parameters()]
        torch._foreach_lerp_(self.shadow, params, 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        for s, p in zip(self.shadow, module.parameters()):
            p.copy_(s.to(p.dtype))

    @contextmanager
    def swapped_in(self, module: nn.Module) -> Iterator[None]:
        """Run a block with the EMA weights, restoring the trained ones afterwards."""
        backup = [p.detach().clone() for p in module.parameters()]
        self.copy_to(module)
        try:
            yield
        finally:
            with torch.no_grad():
                for b, p in zip(backup, module.parameters()):
                    p.copy_(b)

    def to(self, device: torch.device) -> "EMA":
        self.shadow = [s.to(device) for s in self.shadow]
        return self

    def state_dict(self) -> dict:
        return {
            "decay": self.decay,
            "num_updates": self.num_updates,
            "shadow_params": [s.clone() for s in self.shadow],
        }

    def load_state_dict(self, state: dict) -> None:
        shadow = state["shadow_params"]
        if len(shadow) != len(self.shadow) or any(
            a.shape != b.shape for a, b in zip(shadow, self.shadow)
        ):
            raise ValueError("EMA state does not match the model's parameters (another model size?)")
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        self.shadow = [s.detach().clone().float().to(self.shadow[0].device) for s in shadow]
