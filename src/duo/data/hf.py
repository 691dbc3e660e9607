"""Hugging Face datasets: the corpora of the diffusion-LM papers (named in ``catalog.py``).

Every load goes through :func:`load_hf_split`. Given ``data_files`` it reads local files
in the hub's format with a packaged builder (json / parquet / text / csv), which needs no
network; otherwise it calls ``datasets.load_dataset`` on the hub id.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from duo.data.corpora import Corpus, CorpusOptions
from duo.data.detokenizers import get_detokenizer

__all__ = ["HF_CORPORA", "HFCorpusSpec", "HFDocuments", "generic_hf_corpus", "hf_corpus", "load_hf_split"]

_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text", ".csv": "csv", ".arrow": "arrow"}
_PLAIN_SPLITS = {"train": "train", "validation": "validation", "test": "test"}


@dataclass(frozen=True)
class HFCorpusSpec:
    """Where a corpus lives on the hub and how to read it.

    ``splits`` maps our split names to hub split expressions; ``{holdout}`` in one is
    replaced by ``holdout`` (OpenWebText has only a train split, so its last documents
    are held out for validation).
    """

    name: str
    path: str
    config: str | None = None
    text_field: str = "text"
    splits: Mapping[str, str] = field(default_factory=lambda: dict(_PLAIN_SPLITS))
    detokenizer: str | None = None
    tokenizer: str = "gpt2"
    revision: str | None = None
    holdout: int = 0


HF_CORPORA: dict[str, HFCorpusSpec] = {
    spec.name: spec
    for spec in [
        HFCorpusSpec(
            "openwebtext",
            "Skylion007/openwebtext",
            splits={"train": "train[:-{holdout}]", "validation": "train[-{holdout}:]"},
            holdout=100_000,
        ),
        HFCorpusSpec(
            "lm1b",
            "billion-word-benchmark/lm1b",
            splits={"train": "train", "validation": "test"},
            detokenizer="lm1b",
            tokenizer="bert-base-uncased",
        ),
        HFCorpusSpec("wikitext-2", "Salesforce/wikitext", "wikitext-2-raw-v1", detokenizer="wikitext"),
        HFCorpusSpec("wikitext-103", "Salesforce/wikitext", "wikitext-103-raw-v1", detokenizer="wikitext"),
        HFCorpusSpec("ptb", "ptb-text-only/ptb_text_only", "penn_treebank", text_field="sentence", detokenizer="ptb"),
        HFCorpusSpec(
            "lambada", "EleutherAI/lambada_openai", "en", splits={"validation": "test"}, detokenizer="lambada"
        ),
        HFCorpusSpec("ag_news", "fancyzhx/ag_news", splits={"train": "train", "validation": "test"}),
        HFCorpusSpec(
            "scientific_papers_pubmed",
            "armanc/scientific_papers",
            "pubmed",
            text_field="article",
            detokenizer="scientific_papers",
        ),
        HFCorpusSpec(
            "scientific_papers_arxiv",
            "armanc/scientific_papers",
            "arxiv",
            text_field="article",
            detokenizer="scientific_papers",
        ),
        HFCorpusSpec("text8", "afmck/text8", tokenizer="char"),
    ]
}


def _builder_for(data_files: Mapping[str, str | Sequence[str]]) -> str:
    suffixes = set()
    for files in data_files.values():
        for f in [files] if isinstance(files, (str, os.PathLike)) else files:
            suffixes.add(Path(f).suffix)
    if len(suffixes) != 1 or (suffix := suffixes.pop()) not in _BUILDERS:
        raise ValueError(f"data_files must all share one of the suffixes {sorted(_BUILDERS)}; got {sorted(suffixes)}")
    return _BUILDERS[suffix]


def load_hf_split(
    path: str,
    config: str | None,
    split: str,
    *,
    data_files: Mapping[str, str | Sequence[str]] | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
):
    """One split of a Hugging Face dataset, from the hub or from local ``data_files``."""
    import datasets

    if data_files:
        for files in data_files.values():
            for f in [files] if isinstance(files, (str, os.PathLike)) else files:
                if not Path(f).exists():
                    raise FileNotFoundError(f"data file {str(f)!r} does not exist; fix data_files")
        files = {
            k: [str(v)] if isinstance(v, (str, os.PathLike)) else [str(x) for x in v] for k, v in data_files.items()
        }
        return datasets.load_dataset(_builder_for(files), data_files=files, split=split, cache_dir=cache_dir)
    return datasets.load_dataset(path, config, split=split, revision=revision, cache_dir=cache_dir)


class HFDocuments(Sequence[str]):
    """The text column of a ``datasets.Dataset``, detokenized lazily while iterating."""

    def __init__(self, dataset, text_field: str, detokenize: Callable[[str], str] | None):
        if text_field not in dataset.column_names:
            raise ValueError(f"dataset has no text field {text_field!r} (has {dataset.column_names}); set text_field")
        self._ds = dataset.select_columns([text_field])
        self._field = text_field
        self._detok = detokenize

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, i):  # type: ignore[override]
        text = self._ds[i][self._field]
        return self._detok(text) if self._detok else text

    def __iter__(self) -> Iterator[str]:
        # Batched reads from Arrow are much faster than row-by-row indexing.
        for batch in self._ds.iter(batch_size=1024):
            for text in batch[self._field]:
                yield self._detok(text) if self._detok else text


def _files_fingerprint(data_files: Mapping[str, str | Sequence[str]] | None) -> list[Any]:
    if not data_files:
        return []
    out = []
    for split, files in sorted(data_files.items()):
        for f in [files] if isinstance(files, (str, os.PathLike)) else files:
            p = Path(f).resolve()
            st = p.stat() if p.exists() else None
            # Size + mtime is the cheap stand-in for content; hashing terabytes is not cheap.
            out.append([split, str(p), st and st.st_size, st and st.st_mtime_ns])
    return out


def hf_corpus(spec: HFCorpusSpec, options: CorpusOptions) -> Corpus:
    """Build the :class:`Corpus` for ``spec``, applying ``options`` (local files, overrides)."""
    if options.overrides:
        known = {f.name for f in dataclasses.fields(HFCorpusSpec)} - {"name"}
        bad = sorted(set(options.overrides) - known)
        if bad:
            raise ValueError(f"unknown overrides {bad} for corpus {spec.name!r}; pick from {sorted(known)}")
        spec = dataclasses.replace(spec, **options.overrides)
    text_field = options.text_field or spec.text_field
    detok = get_detokenizer(spec.detokenizer) if (spec.detokenizer and options.detokenize) else None
    expressions = {ours: expr.format(holdout=spec.holdout) for ours, expr in spec.splits.items()}
    identity = [dataclasses.asdict(spec), text_field, bool(detok), _files_fingerprint(options.data_files)]
    fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()

    @functools.lru_cache(maxsize=None)
    def read(split: str) -> HFDocuments:
        ds = load_hf_split(
            spec.path,
            spec.config,
            expressions[split],
            data_files=options.data_files,
            revision=spec.revision,
            cache_dir=options.cache_dir,
        )
        return HFDocuments(ds, text_field, detok)

    return Corpus(spec.name, fingerprint, spec.tokenizer, reader=read, splits=tuple(expressions))


def generic_hf_corpus(name: str, options: CorpusOptions) -> Corpus:
    """Any hub dataset: ``"owner/name"`` or ``"owner/name:config"`` with train/validation splits."""
    if not name:
        raise ValueError("corpus 'hf:' needs a dataset id, e.g. 'hf:roneneldan/TinyStories'")
    path, _, config = name.partition(":")
    spec = HFCorpusSpec(f"hf:{name}", path, config or None, splits={"train": "train", "validation": "validation"})
    return hf_corpus(spec, options)
