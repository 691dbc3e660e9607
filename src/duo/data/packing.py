"""Sequence packing: documents of token ids -> fixed-length rows.

* ``wrap``: every document becomes ``BOS doc EOS``; these are concatenated and cut into
  rows of exactly ``seq_len``. No token is lost except the final partial row.
* ``pad``: one document per row, truncated or right-padded to ``seq_len``; its length
  gives the attention mask (PAD may equal EOS, as for GPT-2, so the mask cannot be
  recovered from the ids).

Packers are streaming: feed batches of documents with ``add`` and call ``finish`` for the
:class:`PackStats`, whose counts satisfy ``num_tokens == kept_tokens + dropped_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["PACKERS", "PackResult", "PackStats", "PackedRows", "PadPacker", "WrapPacker", "pack"]

Ids = Sequence[int] | np.ndarray


@dataclass(frozen=True)
class PackedRows:
    """Rows ``tokens`` (N, L) int64 and, for pad packing, ``lengths`` (N,) of real tokens."""

    tokens: np.ndarray
    lengths: np.ndarray | None = None


@dataclass(frozen=True)
class PackStats:
    """Token accounting of one packing pass.

    ``num_tokens`` counts every id produced, BOS/EOS included; ``kept_tokens`` are those
    that landed in rows (padding excluded); ``dropped_tokens`` are the final partial row
    (wrap) or truncated tails (pad).
    """

    num_documents: int
    num_tokens: int
    num_rows: int
    kept_tokens: int
    dropped_tokens: int


class WrapPacker:
    """Concatenate ``BOS doc EOS`` for every document and cut rows of ``seq_len``."""

    needs_lengths = False

    def __init__(self, seq_len: int, bos_id: int, eos_id: int, pad_id: int):
        self.seq_len = seq_len
        self._bos = np.array([bos_id], dtype=np.int64)
        self._eos = np.array([eos_id], dtype=np.int64)
        self._rest = np.empty(0, dtype=np.int64)
        self._docs = self._tokens = self._rows = 0

    def add(self, docs: Sequence[Ids]) -> PackedRows:
        parts = [self._rest]
        for doc in docs:
            parts += [self._bos, np.asarray(doc, dtype=np.int64), self._eos]
        self._docs += len(docs)
        stream = np.concatenate(parts)
        self._tokens += len(stream) - len(self._rest)
        n = len(stream) // self.seq_len
        self._rows += n
        self._rest = stream[n * self.seq_len :].copy()
        return PackedRows(stream[: n * self.seq_len].reshape(n, self.seq_len))

    def finish(self) -> PackStats:
        kept = self._rows * self.seq_len
        return PackStats(self._docs, self._tokens, self._rows, kept, len(self._rest))


class PadPacker:
    """One ``BOS doc EOS`` per row, truncated or padded with PAD to ``seq_len``."""

    needs_lengths = True

    def __init__(self, seq_len: int, bos_id: int, eos_id: int, pad_id: int):
        self.seq_len = seq_len
        self._bos, self._eos, self._pad = bos_id, eos_id, pad_id
        self._docs = self._tokens = self._kept = 0

    def add(self, docs: Sequence[Ids]) -> PackedRows:
        rows = np.full((len(docs), self.seq_len), self._pad, dtype=np.int64)
        lengths = np.empty(len(docs), dtype=np.int64)
        for i, doc in enumerate(docs):
            ids = np.concatenate([[self._bos], np.asarray(doc, dtype=np.int64), [self._eos]])
            n = min(len(ids), self.seq_len)
            rows[i, :n] = ids[:n]
            lengths[i] = n
            self._tokens += len(ids)
        self._docs += len(docs)
        self._kept += int(lengths.sum())
        return PackedRows(rows, lengths)

    def finish(self) -> PackStats:
        return PackStats(self._docs, self._tokens, self._docs, self._kept, self._tokens - self._kept)


@dataclass(frozen=True)
class PackResult:
    rows: PackedRows
    stats: PackStats


PACKERS: dict[str, type[WrapPacker] | type[PadPacker]] = {"wrap": WrapPacker, "pad": PadPacker}


def pack(docs: Sequence[Ids], packing: str, seq_len: int, *, bos_id: int, eos_id: int, pad_id: int) -> PackResult:
    """Pack ``docs`` in memory in one call (the cache streams through the packers instead)."""
    if packing not in PACKERS:
        raise ValueError(f"unknown packing {packing!r}; pick one of {sorted(PACKERS)}")
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len} is too short; use at least 2 (room for BOS and EOS)")
    packer = PACKERS[packing](seq_len, bos_id, eos_id, pad_id)
    rows = packer.add(docs)
    return PackResult(rows, packer.finish())
