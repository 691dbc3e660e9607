"""Exponential moving average of the weights (used for validation and sampling).

The state dict follows the published Duo/MDLM checkpoints' ``ema`` entry:
``decay``, ``num_updates``, ``shadow_params`` (a list in ``parameters()`` order).

Under ``trainer.strategy=fsdp`` the parameters are ``DTensor`` shards; the shadows then
are shards laid out like them, so averaging is local to each rank, and the state dict
gathers them into full tensors (the same checkpoint a single device writes).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, distribute_tensor

from .sharding import reshard


def _local(t: Tensor) -> Tensor:
    """This rank's part of ``t`` (``t`` itself unless it is a DTensor)."""
    return t.to_local() if isinstance(t, DTensor) else t


def _laid_out_like(full: Tensor, ref: Tensor) -> Tensor:
    """``full`` (a whole tensor, equal on every rank) placed like ``ref``, in float32."""
    full = full.detach().float()
    if isinstance(ref, DTensor):
        # Every rank holds the same full tensor: each keeps its slice, no communication.
        return distribute_tensor(full.to(ref.device), ref.device_mesh, ref.placements,
                                 src_data_rank=None)
    return full.to(ref.device).clone()


def _params(module: nn.Module) -> list[Tensor]:
    reshard(module)
    return list(module.parameters())


class EMA:
    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.num_updates = 0
        self.shadow = [p.detach().clone().float() for p in _params(module)]

    def align(self, module: nn.Module) -> None:
        """Lay the shadows out like ``module``'s parameters (device; shards under FSDP).

        Call once the strategy has placed the model. Parameters whose shapes no longer
        match (a strategy that flattens them, such as Lightning's FSDP1 variants) give a
        one-line error instead of a silently wrong average.
        """
        params = _params(module)
        if len(params) != len(self.shadow) or any(
            p.shape != s.shape for p, s in zip(params, self.shadow)
        ):
            raise RuntimeError(
                "the EMA of the weights needs parameters of their original shapes, but the "
                "training strategy flattened them; use trainer.strategy=fsdp or ddp, or set trainer.ema=0"
            )
        self.shadow = [
            s if isinstance(s, DTensor) == isinstance(p, DTensor) and s.device == p.device
            else _laid_out_like(s.full_tensor() if isinstance(s, DTensor) else s, p)
            for s, p in zip(self.shadow, params)
        ]

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.num_updates += 1
        # Warm-up of the decay keeps early averages from being dominated by the init.
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        params = [_local(p).detach().float() for p in _params(module)]
        torch._foreach_lerp_([_local(s) for s in self.shadow], params, 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        for s, p in zip(self.shadow, _params(module)):
            _local(p).copy_(_local(s))

    @contextmanager
    def swapped_in(self, module: nn.Module) -> Iterator[None]:
        """Run a block with the EMA weights, restoring the trained ones afterwards."""
        backup = [_local(p).detach().clone() for p in _params(module)]
        self.copy_to(module)
        try:
            yield
        finally:
            with torch.no_grad():
                for b, p in zip(backup, _params(module)):
                    _local(p).copy_(b)

    def state_dict(self) -> dict:
        """Full tensors. Under FSDP this gathers the shards (call it on every rank) one
        at a time into CPU memory, so the accelerator never holds a whole extra model."""
        return {
            "decay": self.decay,
            "num_updates": self.num_updates,
            "shadow_params": [s.full_tensor().cpu() if isinstance(s, DTensor) else s.clone()
                              for s in self.shadow],
        }

    def load_state_dict(self, state: dict) -> None:
        shadow = state["shadow_params"]
        if len(shadow) != len(self.shadow) or any(
            a.shape != b.shape for a, b in zip(shadow, self.shadow)
        ):
            raise ValueError("EMA state does not match the model's parameters (another model size?)")
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        self.shadow = [_laid_out_like(new, old) for new, old in zip(shadow, self.shadow)]
