"""A torch ``Dataset`` over a cache entry's memory-mapped rows."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from duo.data.cache import CacheEntry, open_entry

__all__ = ["PackedDataset"]


class PackedDataset(Dataset):
    """Rows of a packed corpus as ``dict(input_ids=LongTensor[L], attention_mask=LongTensor[L])``.

    ``attention_mask`` is 1 on real tokens and 0 on padding (all ones for wrap packing).
    The memory map is reopened lazily in each DataLoader worker instead of being pickled.
    """

    def __init__(self, entry: CacheEntry):
        self.directory: Path = entry.directory
        self.meta: dict = entry.meta
        self._entry: CacheEntry | None = entry

    @property
    def entry(self) -> CacheEntry:
        if self._entry is None:
            entry = open_entry(self.directory, self.meta["key"])
            if entry is None:
                raise FileNotFoundError(f"cache entry {str(self.directory)!r} vanished or changed; rebuild the data")
            self._entry = entry
        return self._entry

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_entry": None}

    def __len__(self) -> int:
        return int(self.meta["arrays"]["tokens"]["shape"][0])

    @property
    def seq_len(self) -> int:
        return int(self.meta["arrays"]["tokens"]["shape"][1])

    def _rows(self, index: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        entry = self.entry
        ids = torch.from_numpy(entry.tokens[index].astype(np.int64))
        if entry.lengths is None:
            mask = torch.ones_like(ids)
        else:
            lengths = torch.from_numpy(np.asarray(entry.lengths[index], dtype=np.int64))
            mask = (torch.arange(self.seq_len) < lengths[..., None]).long()
        return {"input_ids": ids, "attention_mask": mask}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} rows")
        return self._rows(int(index))

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        # DataLoader hands a whole batch of indices here: one fancy-indexed read of the
        # memmap instead of B small ones, then split back into per-sample dicts.
        batch = self._rows(np.asarray(indices, dtype=np.int64))
        return [{k: v[i] for k, v in batch.items()} for i in range(len(indices))]
