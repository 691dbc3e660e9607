"""Corpora: the :class:`Corpus` type, the built-in corpus and local text files.

A :class:`Corpus` is a named source of documents per split with a fingerprint that
changes whenever its content would, so caches built from it can be keyed on it. The
names users pick from (this module's ``builtin``, the Hugging Face corpora of ``hf.py``)
are gathered in :mod:`duo.data.catalog`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from duo.data.builtin import builtin_documents

__all__ = [
    "Corpus",
    "CorpusFactory",
    "CorpusOptions",
    "builtin_corpus",
    "hash_split",
    "is_path_like",
    "local_corpus",
    "piece_split",
    "read_local_documents",
]

SPLITS = ("train", "validation")


@dataclass(frozen=True)
class Corpus:
    """A named collection of documents per split.

    ``fingerprint`` identifies the content (and how it is split); ``default_tokenizer``
    is what :func:`duo.data.get_tokenizer` uses when the config names none.
    """

    name: str
    fingerprint: str
    default_tokenizer: str
    reader: Callable[[str], Sequence[str]] = field(repr=False, compare=False)
    splits: tuple[str, ...] = SPLITS

    def documents(self, split: str) -> Sequence[str]:
        """Documents of ``split`` in a fixed order (a lazy sequence for big corpora)."""
        if split not in self.splits:
            raise ValueError(f"corpus {self.name!r} has no split {split!r}; pick one of {list(self.splits)}")
        return self.reader(split)


@dataclass(frozen=True)
class CorpusOptions:
    """Options every corpus constructor receives; each uses the ones that apply to it.

    ``data_files`` points a Hugging Face corpus at local files in the hub's format (one
    entry per hub split, e.g. ``{"train": "owt.jsonl"}``), which is also how tests run
    offline. ``overrides`` replaces fields of a Hugging Face corpus spec
    (``path``, ``config``, ``revision``, ``holdout``, ...).
    """

    text_field: str | None = None
    val_fraction: float = 0.03
    data_files: Mapping[str, str | Sequence[str]] | None = None
    cache_dir: str | None = None
    detokenize: bool = True
    overrides: Mapping[str, Any] | None = None


CorpusFactory = Callable[[CorpusOptions], Corpus]


def _bucket(doc: str) -> float:
    # sha256, not hash(): the split must not change with PYTHONHASHSEED or across processes.
    digest = hashlib.sha256(doc.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def hash_split(docs: Sequence[str], split: str, val_fraction: float) -> list[str]:
    """Deterministic train/validation split by a stable hash of each document.

    A document goes to validation when its hash falls below ``val_fraction``. A small
    corpus whose hashes all miss still gets one validation document (the lowest hash),
    so every corpus with two or more documents has both splits and they never overlap.
    """
    buckets = [_bucket(doc) for doc in docs]
    is_val = [b < val_fraction for b in buckets]
    if not any(is_val) and len(docs) >= 2:
        is_val[min(range(len(docs)), key=buckets.__getitem__)] = True
    want_val = split == "validation"
    return [doc for doc, v in zip(docs, is_val) if v == want_val]


# Local corpora with fewer documents than this are split by paragraph (see piece_split).
SMALL_CORPUS_DOCS = 200
# A paragraph longer than the validation target and than this many characters is split
# into its lines, so that no single piece decides the size of the validation split.
_LINE_SPLIT_CHARS = 1000
_PARAGRAPH = re.compile(r"\n[ \t\r\f\v]*\n")


def piece_split(docs: Sequence[str], val_fraction: float) -> dict[str, list[str]] | None:
    """Train/validation split of a small corpus by pieces of its documents, so that a
    folder of a few files still holds out about ``val_fraction`` of its text.

    Each document is cut into paragraphs (blank-line separated); a paragraph longer than
    the validation target and than 1,000 characters into its lines. The pieces whose
    stable hash is lowest go to validation until they hold at least ``val_fraction`` of
    the characters; a piece's side depends only on its text, so repeated pieces never sit
    on both sides. Each document is reassembled from its pieces on either side (paragraphs
    joined by a blank line, lines by a newline). Deterministic. ``None`` when the pieces
    cannot be split (fewer than two distinct ones).
    """
    paragraphs = [[p.strip() for p in _PARAGRAPH.split(doc) if p.strip()] for doc in docs]
    total = sum(len(p) for paras in paragraphs for p in paras)
    target = val_fraction * total
    # (document, paragraph, text) of every piece
    pieces: list[tuple[int, int, str]] = []
    for d, paras in enumerate(paragraphs):
        for k, para in enumerate(paras):
            if len(para) > max(target, _LINE_SPLIT_CHARS):
                pieces.extend((d, k, line.strip()) for line in para.split("\n") if line.strip())
            else:
                pieces.append((d, k, para))
    sizes: dict[float, int] = {}
    bucket_of = {}
    for _, _, text in pieces:
        b = bucket_of.setdefault(text, _bucket(text))
        sizes[b] = sizes.get(b, 0) + len(text)
    if len(sizes) < 2:
        return None
    held, cutoff = 0, -1.0
    for b in sorted(sizes)[:-1]:  # the highest-hash piece always stays in train
        cutoff, held = b, held + sizes[b]
        if held >= target:
            break
    out: dict[str, list[str]] = {}
    for split in SPLITS:
        want_val = split == "validation"
        parts: dict[int, dict[int, list[str]]] = {}
        for d, k, text in pieces:
            if (bucket_of[text] <= cutoff) == want_val:
                parts.setdefault(d, {}).setdefault(k, []).append(text)
        out[split] = ["\n\n".join("\n".join(lines) for lines in paras.values()) for _, paras in sorted(parts.items())]
    return out


def _content_fingerprint(kind: str, docs: Sequence[str], *extra: object) -> str:
    h = hashlib.sha256(json.dumps([kind, *map(str, extra)]).encode())
    for doc in docs:
        h.update(hashlib.sha256(doc.encode("utf-8")).digest())
    return h.hexdigest()


def _split_corpus(name: str, docs: Sequence[str], kind: str, val_fraction: float, tokenizer: str,
                  by_pieces: bool = False) -> Corpus:
    split_docs = piece_split(docs, val_fraction) if by_pieces else None
    if split_docs is None:
        split_docs = {split: hash_split(docs, split, val_fraction) for split in SPLITS}
        fingerprint = _content_fingerprint(kind, docs, val_fraction)
    else:  # another split of the same text: another fingerprint, so caches are rebuilt
        fingerprint = _content_fingerprint(kind, docs, val_fraction, "pieces-v1")
    return Corpus(name, fingerprint, tokenizer, reader=split_docs.__getitem__)


def builtin_corpus(options: CorpusOptions) -> Corpus:
    return _split_corpus("builtin", builtin_documents(), "builtin", options.val_fraction, "bpe")


def _not_utf8(path: Path, err: UnicodeDecodeError, offset: int = 0, lineno: int | None = None) -> ValueError:
    """One line naming the file (and line), the byte offset in the file and the byte."""
    where = f"{str(path)!r}" + (f" line {lineno}" if lineno is not None else "")
    bad = err.object[err.start:err.start + 1]
    return ValueError(f"{where} is not UTF-8 text (byte {offset + err.start}: {bad!r}); "
                      "convert it, e.g. iconv -f latin1 -t utf-8")


def _read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise _not_utf8(path, err) from None


def _read_jsonl(path: Path, text_field: str) -> list[str]:
    docs = []
    with path.open("rb") as f:  # bytes, so a decoding error knows its line
        offset = 0
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise _not_utf8(path, err, offset, lineno) from None
            offset += len(raw)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{path}:{lineno} is not valid JSON ({exc.msg}); write one JSON object per line"
                ) from None
            if not isinstance(record, dict) or text_field not in record:
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise ValueError(f"{path}:{lineno} has no text field {text_field!r} (has {keys}); set text_field")
            docs.append(str(record[text_field]))
    return docs


def read_local_documents(path: str | Path, text_field: str = "text") -> list[str]:
    """Documents of a local corpus.

    A ``.txt`` file holds documents separated by blank lines; a directory holds one
    document per ``.txt`` file (recursively, in sorted path order); a ``.jsonl`` file
    holds one JSON object per line with the text under ``text_field``.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"corpus path {str(path)!r} does not exist; pass an existing .txt/.jsonl file or directory"
        )
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise ValueError(f"corpus directory {str(path)!r} has no .txt files; add some or pass a file")
        docs = [_read_utf8(p).strip() for p in files]
    elif path.suffix == ".txt":
        docs = [d.strip() for d in _PARAGRAPH.split(_read_utf8(path))]
    elif path.suffix == ".jsonl":
        docs = _read_jsonl(path, text_field)
    else:
        raise ValueError(f"unsupported corpus file {str(path)!r}; use .txt, .jsonl or a directory of .txt files")
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise ValueError(f"corpus {str(path)!r} is empty; add text (documents separated by blank lines)")
    return docs


def local_corpus(path: Path, options: CorpusOptions) -> Corpus:
    text_field = options.text_field or "text"
    docs = read_local_documents(path, text_field)
    # The resolved path names the corpus, so "./a.txt" and "/abs/a.txt" share cache entries.
    return _split_corpus(str(path.resolve()), docs, f"local:{text_field}", options.val_fraction, "bpe",
                         by_pieces=len(docs) < SMALL_CORPUS_DOCS)


def is_path_like(name: str) -> bool:
    """Whether ``name`` was meant as a file path (so a miss is FileNotFoundError, not unknown name)."""
    return any(ch in name for ch in "/\\") or name.startswith((".", "~")) or Path(name).suffix in (".txt", ".jsonl")
