"""Checkpoint writes that survive a crash: a temp file in the same directory, fsync,
then an atomic rename over the final name (the previous checkpoint stays loadable).
Each checkpoint carries a sha256 of its tensors in ``checkpoint["duo"]["checksum"]``,
checked whenever it is loaded."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..checkpoints import read_checkpoint
from ..utils.checksums import CHECKSUM_ALGORITHM, tensor_checksum
from ..utils.io import atomic_torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    def __init__(self) -> None:
        super().__init__()
        # (path, contents) of the checkpoint train() already read and verified to choose
        # where to resume: handed to Lightning without reading the file twice.
        self.preloaded: tuple[Path, dict[str, Any]] | None = None

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        meta = checkpoint.get("duo")
        if isinstance(meta, dict):
            checkpoint["duo"] = {**meta, "checksum": {"algorithm": CHECKSUM_ALGORITHM,
                                                      "digest": tensor_checksum(checkpoint)}}
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        path = Path(path)
        if self.preloaded is not None and self.preloaded[0] == path:
            ckpt, self.preloaded = self.preloaded[1], None
            return ckpt
        # Never run code from a checkpoint: tensors and plain containers only; a one-line
        # error for missing, truncated, damaged or code-carrying files.
        return read_checkpoint(path)

    def remove_checkpoint(self, path) -> None:
        if os.path.exists(path):
            os.remove(path)
