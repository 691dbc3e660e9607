"""Tokenizers behind one small interface, saved and restored as plain JSON.

Three kinds: any Hugging Face tokenizer (``transformers.AutoTokenizer``), a byte-level
BPE trained here with the ``tokenizers`` library, and a character tokenizer for text8.
Each knows its BOS / EOS / PAD ids and how many ids the model must support, and saves to
a directory with ``duo_tokenizer.json`` beside the backend files, so a checkpoint finds
its tokenizer and loading it never runs code.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import numpy as np

__all__ = [
    "BPETokenizer",
    "CharTokenizer",
    "HFTokenizer",
    "META_FILE",
    "TEXT8_ALPHABET",
    "TOKENIZER_KINDS",
    "TextTokenizer",
    "load_tokenizer",
]

META_FILE = "duo_tokenizer.json"
TEXT8_ALPHABET = "abcdefghijklmnopqrstuvwxyz "


def _write_json_atomic(path: Path, obj: object) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


class TextTokenizer(ABC):
    """The interface the rest of duo uses; ``encode`` never adds special tokens."""

    kind: ClassVar[str]

    def __init__(self, name: str, bos_id: int, eos_id: int, pad_id: int, vocab_size: int):
        self.name = name
        self.bos_id = int(bos_id)
        self.eos_id = int(eos_id)
        self.pad_id = int(pad_id)
        self.vocab_size = int(vocab_size)  # ids the model's embedding must cover
        for label, idx in (("bos", self.bos_id), ("eos", self.eos_id), ("pad", self.pad_id)):
            assert 0 <= idx < self.vocab_size, f"{label}_id {idx} outside vocabulary {self.vocab_size}"

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    @abstractmethod
    def _serialize(self) -> str:
        """A string that determines every encoding; its hash is the cache identity."""

    @abstractmethod
    def _save_backend(self, directory: Path) -> dict:
        """Write backend files; return extra metadata for ``duo_tokenizer.json``."""

    @property
    def fingerprint(self) -> str:
        if not hasattr(self, "_fingerprint"):
            ids = f"{self.kind}|{self.bos_id}|{self.eos_id}|{self.pad_id}|{self.vocab_size}|"
            self._fingerprint = hashlib.sha256((ids + self._serialize()).encode()).hexdigest()
        return self._fingerprint

    def save(self, directory: str | Path) -> Path:
        """Save to ``directory``; the metadata file is written last so a partial save is not loadable."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        extra = self._save_backend(directory)
        meta = dict(
            kind=self.kind,
            name=self.name,
            bos_id=self.bos_id,
            eos_id=self.eos_id,
            pad_id=self.pad_id,
            vocab_size=self.vocab_size,
            **extra,
        )
        _write_json_atomic(directory / META_FILE, meta)
        return directory

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, "
            f"bos_id={self.bos_id}, eos_id={self.eos_id}, pad_id={self.pad_id})"
        )


class BPETokenizer(TextTokenizer):
    """A ``tokenizers.Tokenizer`` (byte-level BPE trained by :func:`duo.data.train_bpe`)."""

    kind = "bpe"
    BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"

    def __init__(self, backend, name: str):
        self._tok = backend
        ids = [backend.token_to_id(t) for t in (self.BOS, self.EOS, self.PAD)]
        if None in ids:
            raise ValueError(f"BPE tokenizer {name!r} lacks {self.BOS}/{self.EOS}/{self.PAD}; retrain it with duo")
        super().__init__(name, *ids, vocab_size=backend.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch_fast(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def _serialize(self) -> str:
        return self._tok.to_str()

    def _save_backend(self, directory: Path) -> dict:
        self._tok.save(str(directory / "tokenizer.json"))
        return {}

    @classmethod
    def _load(cls, directory: Path, meta: dict) -> "BPETokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(directory / "tokenizer.json")), meta["name"])


class CharTokenizer(TextTokenizer):
    """One id per character of a fixed alphabet, after BOS / EOS / PAD (ids 0, 1, 2)."""

    kind = "char"

    def __init__(self, alphabet: str = TEXT8_ALPHABET, name: str = "char"):
        if len(set(alphabet)) != len(alphabet) or not alphabet:
            raise ValueError(f"alphabet {alphabet!r} must be non-empty with distinct characters")
        self.alphabet = alphabet
        # A code-point lookup table: text8 splits are ~100M characters, too many for a dict loop.
        self._table = np.full(max(map(ord, alphabet)) + 1, -1, dtype=np.int64)
        self._table[[ord(ch) for ch in alphabet]] = np.arange(3, len(alphabet) + 3)
        super().__init__(name, 0, 1, 2, vocab_size=len(alphabet) + 3)

    def _encode_array(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4").astype(np.int64)
        ids = np.where(codes < len(self._table), self._table[np.minimum(codes, len(self._table) - 1)], -1)
        if (ids < 0).any():
            bad = text[int(np.argmax(ids < 0))]
            raise ValueError(
                f"character {bad!r} is not in the tokenizer alphabet {self.alphabet!r}; "
                "clean the text (text8 is lowercase a-z and space) or use another tokenizer"
            )
        return ids

    def encode(self, text: str) -> list[int]:
        return self._encode_array(text).tolist()

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:  # type: ignore[override]
        return [self._encode_array(t) for t in texts]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        specials = {0: "<bos>", 1: "<eos>", 2: "<pad>"}
        out = []
        for i in map(int, ids):
            if i >= 3:
                out.append(self.alphabet[i - 3])
            elif not skip_special_tokens:
                out.append(specials[i])
        return "".join(out)

    def _serialize(self) -> str:
        return self.alphabet

    def _save_backend(self, directory: Path) -> dict:
        return {"alphabet": self.alphabet}

    @classmethod
    def _load(cls, directory: Path, meta: dict) -> "CharTokenizer":
        return cls(meta["alphabet"], meta["name"])


def _special_ids(tok) -> tuple[int, int, int]:
    # GPT-2 has only <|endoftext|>: it serves as BOS, EOS and PAD, as in the papers.
    # BERT has no BOS/EOS: [CLS] and [SEP] take their place, as in MDLM's LM1B setup.
    bos = next((i for i in (tok.bos_token_id, tok.cls_token_id, tok.eos_token_id) if i is not None), None)
    eos = next((i for i in (tok.eos_token_id, tok.sep_token_id, tok.bos_token_id) if i is not None), None)
    pad = next((i for i in (tok.pad_token_id, eos) if i is not None), None)
    if bos is None or eos is None:
        raise ValueError(
            f"tokenizer {tok.name_or_path!r} has no BOS/EOS/CLS/SEP token; pick one that has, or use 'bpe'"
        )
    return bos, eos, pad


class HFTokenizer(TextTokenizer):
    """Any ``transformers`` tokenizer, by hub name or local directory."""

    kind = "hf"

    def __init__(self, tok, name: str):
        self._tok = tok
        # len() counts added tokens; tok.vocab_size does not, and the model must embed them all.
        super().__init__(name, *_special_ids(tok), vocab_size=len(tok))

    def encode(self, text: str) -> list[int]:
        return self._tok(text, add_special_tokens=False, verbose=False)["input_ids"]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._tok(list(texts), add_special_tokens=False, verbose=False)["input_ids"]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def _serialize(self) -> str:
        backend = getattr(self._tok, "backend_tokenizer", None)
        if backend is not None:
            return backend.to_str()
        return json.dumps(sorted(self._tok.get_vocab().items()))

    def _save_backend(self, directory: Path) -> dict:
        self._tok.save_pretrained(str(directory))
        return {}

    @classmethod
    def from_pretrained(cls, name_or_path: str) -> "HFTokenizer":
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(name_or_path)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(
                f"cannot load tokenizer {name_or_path!r} ({first}); check the name, the network, or pass a local directory"
            ) from None
        return cls(tok, name_or_path)

    @classmethod
    def _load(cls, directory: Path, meta: dict) -> "HFTokenizer":
        tok = cls.from_pretrained(str(directory))
        tok.name = meta["name"]
        return tok


TOKENIZER_KINDS: dict[str, Callable[[Path, dict], TextTokenizer]] = {
    BPETokenizer.kind: BPETokenizer._load,
    CharTokenizer.kind: CharTokenizer._load,
    HFTokenizer.kind: HFTokenizer._load,
}


def load_tokenizer(directory: str | Path) -> TextTokenizer:
    """Restore a tokenizer written by :meth:`TextTokenizer.save`."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"no tokenizer at {str(directory)!r} ({META_FILE} missing); pass the directory tokenizer.save() wrote"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        kind = meta["kind"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ValueError(f"{str(meta_path)!r} is corrupt; save the tokenizer again") from None
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"{str(meta_path)!r} has unknown kind {kind!r}; pick one of {sorted(TOKENIZER_KINDS)}")
    tok = TOKENIZER_KINDS[kind](directory, meta)
    for key in ("bos_id", "eos_id", "pad_id", "vocab_size"):
        if getattr(tok, key) != meta[key]:
            raise ValueError(
                f"{str(meta_path)!r} says {key}={meta[key]} but the tokenizer files give {getattr(tok, key)}; re-save it"
            )
    return tok
