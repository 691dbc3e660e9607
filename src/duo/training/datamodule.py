"""LightningDataModule over :mod:`duo.data`: cached, packed corpora and resumable loaders.

The training loader is a stateful ``ResumableDataLoader``; Lightning stores its state in
every checkpoint, so a resumed run continues with the batch it would have seen next.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import lightning.pytorch as pl
from torch import nn

from ..data import build_data, build_dataloader, check_fits_model
from ..config import TrainConfig


class TextDataModule(pl.LightningDataModule):
    def __init__(self, cfg: TrainConfig, micro_batch_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.micro_batch_size = micro_batch_size
        self.bundle = None

    def prepare_data(self) -> None:
        # Builds the tokenizer and the on-disk cache once; safe on many ranks (file lock).
        if self.bundle is None:
            self.bundle = build_data(self.cfg.data)

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()

    @property
    def tokenizer(self):
        self.prepare_data()
        return self.bundle.tokenizer

    def tokenizer_files(self) -> dict[str, str]:
        """The tokenizer as plain text files, embedded in checkpoints so that a checkpoint
        alone is enough to sample from."""
        with tempfile.TemporaryDirectory() as tmp:
            self.tokenizer.save(tmp)
            return {p.name: p.read_text() for p in Path(tmp).iterdir() if p.is_file()}

    def check_model(self, backbone: nn.Module) -> None:
        cfg = backbone.config
        check_fits_model(self.tokenizer, cfg.vocab_size, self.cfg.data.seq_len, cfg.max_seq_len)

    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def train_dataloader(self):
        rank, world = self._rank_world()
        return build_dataloader(
            self.bundle.train, self.micro_batch_size, shuffle=True, seed=self.cfg.data.seed,
            rank=rank, world_size=world, num_workers=self.cfg.data.num_workers, drop_last=True,
        )

    def val_dataloader(self):
        rank, world = self._rank_world()
        return build_dataloader(
            self.bundle.validation, self.micro_batch_size, shuffle=False,
            rank=rank, world_size=world, num_workers=0, drop_last=False,
        )
