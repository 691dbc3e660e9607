"""Measuring what autograd keeps for backward."""

from __future__ import annotations

from typing import Callable

import torch


def saved_tensor_bytes(fn: Callable[[], object]) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn()`` runs
    (counted with saved-tensor hooks; a storage saved twice counts once)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())
