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

from lightning.pytorch.strategies import ModelParallelStrategy
from torch import Tensor, nn
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
    fully_shard(backbone, mesh=mesh)
    # The losses call ``hidden`` and then the output layer themselves (in chunks), so
    # ``hidden`` must gather the root's weights as ``forward`` does. The root keeps them
    # gathered until its backward ends, which covers those output-layer calls.
    register_fsdp_forward_method(backbone, "hidden")
    return backbone


def reshard(module: nn.Module) -> None:
    """Put every FSDP unit in ``module`` back to its shards (FSDP2 leaves the root's
    weights gathered after a forward without backward, e.g. in evaluation)."""
    from torch.distributed.fsdp import FSDPModule

    for m in module.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def full_state_dict(module: nn.Module) -> dict[str, Tensor]:
    """``module.state_dict()`` with whole tensors; gathers FSDP shards, so under FSDP
    every rank must call it."""
    reshard(module)
    return {k: v.full_tensor() if isinstance(v, DTensor) else v
            for k, v in module.state_dict().items()}
