"""Evaluation data: a corpus split packed with the CHECKPOINT's tokenizer (never a new BPE)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data import Corpus, PackedDataset, check_fits_model, default_cache_dir, get_corpus, pack_split

ALL = "all"  # every document of the corpus: how a local file is read for zero-shot


@dataclass(frozen=True)
class EvalData:
    dataset: PackedDataset
    corpus: str
    split: str


def _whole(corpus: Corpus) -> Corpus:
    """The corpus as one split holding all its documents (train + validation for local files)."""

    def read(split: str):
        docs: list[str] = []
        for name in corpus.splits:
            docs.extend(corpus.documents(name))
        return docs

    return Corpus(corpus.name, corpus.fingerprint, corpus.default_tokenizer, reader=read, splits=(ALL,))


def cache_root(data) -> Path:
    """The checkpoint's data cache when it exists here, else the default (a checkpoint may
    come from another machine)."""
    if data.cache_dir and Path(data.cache_dir).expanduser().is_dir():
        return Path(data.cache_dir).expanduser()
    return default_cache_dir()


def open_corpus(loaded, name_or_path: str | None) -> Corpus:
    """A corpus by name or path; the checkpoint's own corpus keeps its training options, so
    its validation split is the one held out during training."""
    data = loaded.cfg.data
    name = name_or_path or data.corpus
    root = cache_root(data)
    if name == data.corpus:
        return get_corpus(
            name, text_field=data.text_field, val_fraction=data.val_fraction, data_files=data.data_files,
            cache_dir=str(root / "hf-datasets") if data.data_files else None,
            detokenize=data.detokenize, overrides=data.hf_overrides,
        )
    return get_corpus(name)


def default_split(corpus: Corpus, name_or_path: str | None, loaded) -> str:
    """``validation`` (the registered corpora map it to their held-out split: the test set
    for LM1B, AG News and LAMBADA, as in MDLM); ``all`` for a local file that the model was
    not trained on."""
    name = name_or_path or loaded.cfg.data.corpus
    is_local = Path(name).expanduser().exists()
    if is_local and name != loaded.cfg.data.corpus:
        return ALL
    return "validation" if "validation" in corpus.splits else corpus.splits[-1]


def eval_data(
    loaded,
    corpus: str | None = None,
    split: str | None = None,
    *,
    seq_len: int | None = None,
    packing: str | None = None,
    max_documents: int | None = None,
    show_progress: bool = False,
) -> EvalData:
    """Pack ``split`` of ``corpus`` (default: the checkpoint's corpus) for ``loaded``.

    ``seq_len`` / ``packing`` default to the checkpoint's; results are cached like training data.
    """
    data = loaded.cfg.data
    source = open_corpus(loaded, corpus)
    split = split or default_split(source, corpus, loaded)
    if split == ALL:
        source = _whole(source)
    elif split not in source.splits:
        raise ValueError(f"corpus {source.name!r} has no split {split!r}; pick one of {[*source.splits, ALL]}")
    seq_len = seq_len or data.seq_len
    check_fits_model(loaded.tokenizer, loaded.method.vocab_size, seq_len, loaded.cfg.model.max_seq_len)
    root = cache_root(data)
    entry = pack_split(
        source, split, loaded.tokenizer, packing=packing or data.packing, seq_len=seq_len, cache_dir=root,
        max_documents=max_documents, show_progress=show_progress,
    )
    return EvalData(PackedDataset(entry), source.name, split)
