"""From a :class:`DataConfig` to datasets: corpus -> tokenizer -> packed, cached rows."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from duo.data.cache import CacheEntry, RowWriter, cache_key, default_cache_dir, entry_dir, load_or_build
from duo.data.config import DataConfig
from duo.data.catalog import get_corpus
from duo.data.corpora import Corpus
from duo.data.dataset import PackedDataset
from duo.data.packing import PACKERS
from duo.data.sampler import ResumableDataLoader, build_dataloader
from duo.data.tokenization import TextTokenizer
from duo.data.tokenizer_sources import get_tokenizer

__all__ = ["DataBundle", "build_data", "check_fits_model", "pack_split"]

PIPELINE_VERSION = 1  # bump when tokenization or packing changes what lands in the cache


def _batched(items: Iterable[str], n: int) -> Iterator[list[str]]:
    it = iter(items)
    while batch := list(itertools.islice(it, n)):
        yield batch


def pack_split(
    corpus: Corpus,
    split: str,
    tokenizer: TextTokenizer,
    *,
    packing: str = "wrap",
    seq_len: int = 128,
    cache_dir: str | Path | None = None,
    max_documents: int | None = None,
    show_progress: bool = True,
    batch_documents: int = 512,
) -> CacheEntry:
    """Tokenize and pack one split into the cache (or open it if already there)."""
    if packing not in PACKERS:
        raise ValueError(f"unknown packing {packing!r}; pick one of {sorted(PACKERS)}")
    parts = {
        "pipeline": PIPELINE_VERSION,
        "corpus": corpus.name,
        "corpus_fingerprint": corpus.fingerprint,
        "split": split,
        "tokenizer": tokenizer.name,
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "packing": packing,
        "seq_len": seq_len,
        "max_documents": max_documents,
    }
    key = cache_key(parts)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    directory = entry_dir(root / "packed", f"{corpus.name}-{split}-{packing}{seq_len}", key)
    packer_cls = PACKERS[packing]
    # uint16 halves the disk and page-cache footprint for every vocabulary up to 65,536.
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32)

    def build(writer: RowWriter) -> dict:
        docs: Sequence[str] = corpus.documents(split)
        total = len(docs) if max_documents is None else min(len(docs), max_documents)
        packer = packer_cls(seq_len, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
        skipped = 0
        with tqdm(total=total, unit="doc", desc=f"{corpus.name}/{split}", disable=not show_progress) as bar:
            for batch in _batched(itertools.islice(docs, total), batch_documents):
                texts = [d for d in batch if d.strip()]  # blank lines (WikiText has many) are not documents
                skipped += len(batch) - len(texts)
                rows = packer.add(tokenizer.encode_batch(texts))
                if len(rows.tokens):
                    writer.write(rows.tokens, rows.lengths)
                bar.update(len(batch))
        stats = packer.finish()
        if stats.num_rows == 0:
            raise ValueError(
                f"corpus {corpus.name!r} split {split!r} gives no row of seq_len={seq_len} "
                f"({stats.num_tokens} tokens); lower seq_len or add text"
            )
        return {**parts, "stats": dataclasses.asdict(stats), "skipped_blank_documents": skipped}

    return load_or_build(directory, key, build, seq_len=seq_len, dtype=dtype, with_lengths=packer_cls.needs_lengths)


def check_seq_len(seq_len: int, model_max_len: int) -> None:
    """The length check that needs no tokenizer: run before any data is built."""
    if seq_len > model_max_len:
        raise ValueError(
            f"data.seq_len={seq_len} exceeds the model's maximum length {model_max_len} (valid: 1 to "
            f"{model_max_len}); lower data.seq_len or raise model.max_seq_len"
        )


def check_fits_model(tokenizer: TextTokenizer, model_vocab_size: int, seq_len: int, model_max_len: int) -> None:
    """Raise a one-line ValueError when the data cannot feed a model of this shape."""
    if tokenizer.vocab_size > model_vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} ids but the model embeds only "
            f"{model_vocab_size}; build the model with vocab_size >= {tokenizer.vocab_size} or use a smaller tokenizer"
        )
    check_seq_len(seq_len, model_max_len)


@dataclass(frozen=True)
class DataBundle:
    """Everything training needs from the data layer."""

    train: PackedDataset
    validation: PackedDataset
    tokenizer: TextTokenizer
    config: DataConfig
    rank: int = 0
    world_size: int = 1

    def train_loader(self, batch_size: int) -> ResumableDataLoader:
        """Shuffled, sharded for this rank, resumable; drops uneven tails."""
        return build_dataloader(
            self.train,
            batch_size,
            shuffle=True,
            seed=self.config.seed,
            rank=self.rank,
            world_size=self.world_size,
            num_workers=self.config.num_workers,
            drop_last=True,
        )

    def validation_loader(self, batch_size: int) -> ResumableDataLoader:
        """In order, sharded for this rank; pads (repeats) rows so ranks stay in step."""
        return build_dataloader(
            self.validation,
            batch_size,
            shuffle=False,
            rank=self.rank,
            world_size=self.world_size,
            num_workers=self.config.num_workers,
            drop_last=False,
        )


def build_data(cfg: DataConfig, *, rank: int = 0, world_size: int = 1) -> DataBundle:
    """Corpus, tokenizer and cached train/validation datasets for ``cfg``.

    Every rank may call this at once: the cache lets one process build while the others
    wait. Only rank 0 shows progress bars.
    """
    cfg.validate()
    root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    show = cfg.show_progress and rank == 0
    corpus = get_corpus(
        cfg.corpus,
        text_field=cfg.text_field,
        val_fraction=cfg.val_fraction,
        data_files=cfg.data_files,
        # Arrow files made from local data_files belong with our cache, not ~/.cache/huggingface.
        cache_dir=str(root / "hf-datasets") if cfg.data_files else None,
        detokenize=cfg.detokenize,
        overrides=cfg.hf_overrides,
    )
    for split in ("train", "validation"):
        if split not in corpus.splits:
            raise ValueError(
                f"corpus {corpus.name!r} has no {split!r} split (only {list(corpus.splits)}); train on another corpus"
            )
    tokenizer = get_tokenizer(
        cfg.tokenizer or corpus.default_tokenizer,
        corpus=corpus,
        vocab_size=cfg.vocab_size,
        cache_dir=root,
        max_documents=cfg.max_documents,
        show_progress=show,
    )
    datasets = {
        split: PackedDataset(
            pack_split(
                corpus,
                split,
                tokenizer,
                packing=cfg.packing,
                seq_len=cfg.seq_len,
                cache_dir=root,
                max_documents=cfg.max_documents,
                show_progress=show,
            )
        )
        for split in ("train", "validation")
    }
    return DataBundle(datasets["train"], datasets["validation"], tokenizer, cfg, rank, world_size)
