"""Fully sharded data parallel training: ``trainer.strategy=fsdp``.

Each DiT block is one FSDP2 unit (``torch.distributed.fsdp.fully_shard``) and the rest
of the backbone (embeddings, time embedding, output layer) is the root unit, so a rank
holds ``1 / world`` of the weights, gradients and optimiser state between uses. FSDP2
keeps every parameter's name and global shape (parameters become ``DTensor`` shards),
so the EMA can average shard by shard and checkpoints keep the published layout.

Checkpoints are gathered into one ordinary file on rank 0 (the same file a DDP run
writes, readable by ``duo sample`` on one device), not one file per rank.
"""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.tensor import DTensor


class FSDPStrategy(ModelParallelStrategy):
    """Lightning's FSDP2 strategy with every process in one data-parallel group (no
    tensor parallelism) and single-file checkpoints. Works on CPU (gloo) and GPU (nccl)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(data_parallel_size=1, tensor_parallel_size=1,
                         save_distributed_checkpoint=False, **kwargs)

    def setup_environment(self) -> None:
        # The world is known only now (devices x nodes, set by the Trainer).
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()


def shard_backbone(backbone: nn.Module, mesh) -> nn.Module:
    """Shard ``backbone`` in place over the 1-D device ``mesh``: one unit per block, then
    the root. Idempotent."""
    from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method

    if isinstance(backbone, FSDPModule):
        return backbone
    for block in backbone.blocks:
        fully_shard(block, mesh=mesh)
    # The losses call ``hidden`` and then the output layer themselves (in chunks, again
    # in backward under activation checkpointing), so ``hidden`` must gather the root's
    # weights as ``forward`` does, and the root must keep them gathered after it (until
    # its backward ends, or the next reshard): the output layer is the root's.
    fully_shard(backbone, mesh=mesh, reshard_after_forward=False)
    register_fsdp_forward_method(backbone, "hidden")
    return backbone


def reshard(module: nn.Module) -> None:
    """Put every FSDP unit in ``module`` back to its shards (FSDP2 leaves the root's
    weights gathered after a forward without backward, e.g. in evaluation)."""
    from torch.distributed.fsdp import FSDPModule

    for m in module.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


@torch.no_grad()
def copy_gathered(dst: nn.Module, src: nn.Module) -> None:
    """Copy ``src``'s weights (possibly FSDP shards) into the whole model ``dst``, one
    tensor at a time, so no second full copy of the model is ever allocated. Under FSDP
    this gathers shards: every rank must call it."""
    reshard(src)
    target = dst.state_dict()
    source = src.state_dict()
    if source.keys() != target.keys():
        key = sorted(source.keys() ^ target.keys())[0]
        raise ValueError(f"copy_gathered: {key!r} is in only one of the two models; "
                         "copy between models built from the same config")
    for key, value in source.items():
        target[key].copy_(value.full_tensor() if isinstance(value, DTensor) else value)
