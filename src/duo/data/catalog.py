"""The corpora users pick by name: the built-in corpus, the papers' Hugging Face corpora
and any registered by the user; ``hf:<dataset>`` and local paths are resolved here too.

This module sits above ``corpora.py`` and ``hf.py`` and gathers their constructors, so
neither imports the other for registration.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Mapping, Sequence

from duo.data.corpora import Corpus, CorpusFactory, CorpusOptions, builtin_corpus, is_path_like, local_corpus
from duo.data.hf import HF_CORPORA, generic_hf_corpus, hf_corpus

__all__ = ["CORPORA", "corpus_names", "get_corpus", "register_corpus"]

CORPORA: dict[str, CorpusFactory] = {
    "builtin": builtin_corpus,
    **{name: functools.partial(hf_corpus, spec) for name, spec in HF_CORPORA.items()},
}


def register_corpus(name: str, factory: CorpusFactory | None = None):
    """Register ``factory`` under ``name``; usable as a decorator."""

    def add(fn: CorpusFactory) -> CorpusFactory:
        if name in CORPORA:
            raise ValueError(f"corpus {name!r} is already registered; pick another name")
        CORPORA[name] = fn
        return fn

    return add(factory) if factory is not None else add


def corpus_names() -> list[str]:
    """Registered corpus names, sorted."""
    return sorted(CORPORA)


def get_corpus(
    name_or_path: str,
    *,
    text_field: str | None = None,
    val_fraction: float = 0.03,
    data_files: Mapping[str, str | Sequence[str]] | None = None,
    cache_dir: str | None = None,
    detokenize: bool = True,
    overrides: Mapping[str, Any] | None = None,
) -> Corpus:
    """A registered corpus, ``hf:<dataset>`` for any Hugging Face dataset, or a local path."""
    options = CorpusOptions(text_field, val_fraction, data_files, cache_dir, detokenize, overrides)
    if name_or_path in CORPORA:
        return CORPORA[name_or_path](options)
    if name_or_path.startswith("hf:"):
        return generic_hf_corpus(name_or_path[3:], options)
    path = Path(name_or_path).expanduser()
    if path.exists():
        return local_corpus(path, options)
    if is_path_like(name_or_path):
        raise FileNotFoundError(
            f"corpus path {name_or_path!r} does not exist; pass an existing .txt/.jsonl file or directory, "
            f"or one of {corpus_names()}"
        )
    raise ValueError(
        f"unknown corpus {name_or_path!r}; pick one of {corpus_names()}, a local .txt/.jsonl file or "
        "directory, or 'hf:<dataset>'"
    )
