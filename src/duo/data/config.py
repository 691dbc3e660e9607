"""The typed configuration of the data layer, validated once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

__all__ = ["DataConfig"]


@dataclass
class DataConfig:
    """What to train on and how to cut it into sequences.

    ``corpus`` is a registered name (see ``duo.data.corpus_names()``), ``hf:<dataset>``,
    or a local .txt/.jsonl file or directory. ``tokenizer`` None means the corpus's
    default (a BPE of ``vocab_size`` trained on the corpus for built-in and local text).
    ``data_files`` points a Hugging Face corpus at local files in the hub's format;
    ``hf_overrides`` changes its spec (``path``, ``config``, ``revision``, ``holdout``...).
    ``max_documents`` caps documents per split for quick runs. ``cache_dir`` None means
    ``$DUO_CACHE`` or ``~/.cache/duo``.
    """

    corpus: str = "builtin"
    tokenizer: str | None = None
    vocab_size: int = 4096
    seq_len: int = 128
    packing: str = "wrap"
    text_field: str | None = None
    data_files: Mapping[str, str | Sequence[str]] | None = None
    hf_overrides: Mapping[str, Any] | None = None
    val_fraction: float = 0.03
    max_documents: int | None = None
    detokenize: bool = True
    cache_dir: str | None = None
    num_workers: int = 0
    seed: int = 0
    show_progress: bool = True

    def validate(self) -> "DataConfig":
        """Raise a one-line ValueError naming the first bad field; return self."""
        from duo.data.catalog import CORPORA, corpus_names, is_path_like
        from duo.data.packing import PACKERS
        from duo.data.tokenizer_sources import MIN_BPE_VOCAB

        if not self.corpus:
            raise ValueError(f"data.corpus is empty; pick one of {corpus_names()} or a path")
        known = self.corpus in CORPORA or self.corpus.startswith("hf:")
        if not known and not is_path_like(self.corpus):
            from pathlib import Path

            if not Path(self.corpus).expanduser().exists():
                raise ValueError(
                    f"unknown data.corpus {self.corpus!r}; pick one of {corpus_names()}, a local path, or 'hf:<dataset>'"
                )
        if self.packing not in PACKERS:
            raise ValueError(f"unknown data.packing {self.packing!r}; pick one of {sorted(PACKERS)}")
        if self.seq_len < 2:
            raise ValueError(f"data.seq_len={self.seq_len} is too short; use at least 2 (room for BOS and EOS)")
        if self.vocab_size < MIN_BPE_VOCAB:
            raise ValueError(
                f"data.vocab_size={self.vocab_size} is too small for a byte-level BPE; use at least {MIN_BPE_VOCAB}"
            )
        if not 0.0 < self.val_fraction < 0.5:
            raise ValueError(f"data.val_fraction={self.val_fraction} must be in (0, 0.5)")
        if self.max_documents is not None and self.max_documents < 1:
            raise ValueError(f"data.max_documents={self.max_documents} must be >= 1 or None")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers={self.num_workers} must be >= 0")
        if self.text_field is not None and not self.text_field:
            raise ValueError("data.text_field is empty; name the field holding the text, or None for the default")
        return self
