"""Where tokenizers come from: trained BPE, text8 characters, or Hugging Face.

:func:`get_tokenizer` resolves a name through ``TOKENIZER_SOURCES`` (tokenizers duo
builds itself), then a directory written by ``TextTokenizer.save``, then
``transformers.AutoTokenizer`` (hub name or local directory).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

from duo.data.cache import default_cache_dir, entry_dir, file_lock
from duo.data.corpora import Corpus
from duo.data.tokenization import META_FILE, BPETokenizer, CharTokenizer, HFTokenizer, TextTokenizer, load_tokenizer

__all__ = ["DEFAULT_BPE_VOCAB", "MIN_BPE_VOCAB", "TOKENIZER_SOURCES", "get_tokenizer", "train_bpe"]

# 4096 merges keep common words whole on ~1.5 MB of English, so a tiny model writes real
# words early, while the embedding stays small enough for CPU training.
DEFAULT_BPE_VOCAB = 4096
MIN_BPE_VOCAB = 256 + 3  # every byte plus BOS / EOS / PAD
_BPE_RECIPE = "bytelevel-bpe-v1"


def _train_backend(corpus: Corpus, vocab_size: int, max_documents: int | None, show_progress: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    # No normalizer and a byte-level alphabet: any string round-trips exactly.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BPETokenizer.BOS, BPETokenizer.EOS, BPETokenizer.PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        # The Rust progress bar writes bare newlines when stderr is not a terminal (logs,
        # CI, pipes): a run's first screen would open with blank lines.
        show_progress=show_progress and sys.stderr.isatty(),
    )
    docs = corpus.documents("train")  # never validation: the tokenizer must not see held-out text
    n = len(docs) if max_documents is None else min(len(docs), max_documents)
    texts = (doc for i, doc in zip(range(n), docs) if doc.strip())
    tok.train_from_iterator(texts, trainer, length=n)
    return tok


def train_bpe(
    corpus: Corpus,
    vocab_size: int = DEFAULT_BPE_VOCAB,
    *,
    cache_dir: str | Path | None = None,
    max_documents: int | None = None,
    show_progress: bool = True,
) -> BPETokenizer:
    """A byte-level BPE trained on ``corpus``'s train split, cached under ``cache_dir``.

    Training is deterministic, and the result is stored once per (corpus content,
    vocab_size, max_documents); concurrent callers wait for the first one.
    """
    if vocab_size < MIN_BPE_VOCAB:
        raise ValueError(f"vocab_size={vocab_size} is too small for a byte-level BPE; use at least {MIN_BPE_VOCAB}")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    parts = [_BPE_RECIPE, corpus.fingerprint, vocab_size, max_documents]
    key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()
    final = entry_dir(root / "tokenizers", f"bpe{vocab_size}-{corpus.name}", key)
    if (final / META_FILE).is_file():
        return load_tokenizer(final)  # type: ignore[return-value]
    with file_lock(final.with_name(final.name + ".lock")):
        if (final / META_FILE).is_file():
            return load_tokenizer(final)  # type: ignore[return-value]
        backend = _train_backend(corpus, vocab_size, max_documents, show_progress)
        tok = BPETokenizer(backend, f"bpe{vocab_size}-{corpus.name}-{key[:8]}")
        # Save to a temp directory and rename it: a crash never leaves a half-saved tokenizer.
        tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tok.save(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    return tok


TokenizerSource = Callable[..., TextTokenizer]


def _bpe_source(corpus: Corpus | None, **kwargs) -> TextTokenizer:
    if corpus is None:
        raise ValueError("tokenizer 'bpe' is trained on a corpus; pass corpus=get_corpus(...)")
    return train_bpe(corpus, **kwargs)


def _char_source(corpus: Corpus | None, **kwargs) -> TextTokenizer:
    return CharTokenizer()


TOKENIZER_SOURCES: dict[str, TokenizerSource] = {"bpe": _bpe_source, "char": _char_source}


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def get_tokenizer(
    name_or_path: str,
    *,
    corpus: Corpus | None = None,
    vocab_size: int = DEFAULT_BPE_VOCAB,
    cache_dir: str | Path | None = None,
    max_documents: int | None = None,
    show_progress: bool = True,
) -> TextTokenizer:
    """``"bpe"`` (trained on ``corpus``), ``"char"`` (text8), a saved directory, or a HF name/path."""
    if name_or_path in TOKENIZER_SOURCES:
        return TOKENIZER_SOURCES[name_or_path](
            corpus, vocab_size=vocab_size, cache_dir=cache_dir, max_documents=max_documents, show_progress=show_progress
        )
    path = Path(name_or_path).expanduser()
    if (path / META_FILE).is_file():
        return load_tokenizer(path)
    if path.is_dir():
        return HFTokenizer.from_pretrained(str(path))
    if _looks_like_path(name_or_path):
        raise FileNotFoundError(
            f"tokenizer path {name_or_path!r} does not exist; pass a saved tokenizer directory, "
            f"a Hugging Face name, or one of {sorted(TOKENIZER_SOURCES)}"
        )
    return HFTokenizer.from_pretrained(name_or_path)
