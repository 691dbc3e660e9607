"""An on-disk cache of packed token arrays, safe against crashes and concurrent builders.

Each entry is a directory holding raw arrays (``tokens.bin``: rows x seq_len, and for
"pad" packing ``lengths.bin``) read back with ``np.memmap``, plus ``meta.json``. The
invariants:

* Only ``meta.json`` makes an entry visible, and it is renamed into place last, after
  the data files are written, fsynced and renamed. Readers also check every file size
  against the metadata, so a half-written or truncated entry is never read.
* Builders take an exclusive ``fcntl.flock`` on the entry's lock file, so when several
  processes (DDP ranks) ask at once one builds and the others wait, then read.
* Temporary files carry a ``.tmp-`` infix. A crashed builder leaves only those behind;
  the next builder (holding the lock, hence the only writer) deletes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

try:
    import fcntl
except ImportError:  # Windows: no flock; a single process still works
    fcntl = None

__all__ = [
    "CACHE_FORMAT",
    "CacheEntry",
    "RowWriter",
    "cache_key",
    "default_cache_dir",
    "entry_dir",
    "file_lock",
    "load_or_build",
    "open_entry",
]

CACHE_FORMAT = 1
META = "meta.json"
TMP = ".tmp-"


def default_cache_dir() -> Path:
    """``$DUO_CACHE`` if set, else ``~/.cache/duo``."""
    return Path(os.environ.get("DUO_CACHE") or Path.home() / ".cache" / "duo").expanduser()


def cache_key(parts: Mapping[str, Any]) -> str:
    """A stable hash of everything that determines an entry's content."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class CacheEntry:
    """A readable cache entry: ``tokens`` (N, L) and, for pad packing, ``lengths`` (N,)."""

    directory: Path
    meta: dict
    tokens: np.ndarray
    lengths: np.ndarray | None

    @property
    def num_rows(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.tokens.shape[1])


def _open_array(directory: Path, spec: Mapping[str, Any]) -> np.ndarray | None:
    path = directory / spec["file"]
    shape = tuple(spec["shape"])
    dtype = np.dtype(spec["dtype"])
    expected = int(np.prod(shape)) * dtype.itemsize
    if not path.is_file() or path.stat().st_size != expected or expected == 0:
        return None
    return np.memmap(path, dtype=dtype, mode="r", shape=shape)


def open_entry(directory: Path, key: str) -> CacheEntry | None:
    """The entry in ``directory`` if it is complete and built for ``key``, else None."""
    try:
        meta = json.loads((directory / META).read_text(encoding="utf-8"))
        if meta.get("format") != CACHE_FORMAT or meta.get("key") != key:
            return None
        arrays = {name: _open_array(directory, spec) for name, spec in meta["arrays"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if any(a is None for a in arrays.values()) or "tokens" not in arrays:
        return None
    return CacheEntry(directory, meta, arrays["tokens"], arrays.get("lengths"))


class RowWriter:
    """Appends packed rows to temporary files; :meth:`commit` makes them an entry."""

    def __init__(self, directory: Path, seq_len: int, dtype: np.dtype, with_lengths: bool):
        self.directory = directory
        self.seq_len = seq_len
        self.dtype = np.dtype(dtype)
        self.num_rows = 0
        tag = f"{TMP}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        names = ["tokens"] + (["lengths"] if with_lengths else [])
        self._tmp = {name: directory / f"{name}.bin{tag}" for name in names}
        self._files = {name: open(path, "wb") for name, path in self._tmp.items()}

    def write(self, rows: np.ndarray, lengths: np.ndarray | None = None) -> None:
        assert rows.ndim == 2 and rows.shape[1] == self.seq_len, rows.shape
        assert (lengths is not None) == ("lengths" in self._files)
        self._files["tokens"].write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        if lengths is not None:
            assert lengths.shape == (rows.shape[0],)
            self._files["lengths"].write(np.ascontiguousarray(lengths, dtype=np.int32).tobytes())
        self.num_rows += rows.shape[0]

    def commit(self, meta: dict) -> None:
        """fsync and rename the data files, then write and rename ``meta.json`` last."""
        arrays = {}
        for name, f in self._files.items():
            f.flush()
            os.fsync(f.fileno())
            f.close()
            final = self.directory / f"{name}.bin"
            os.replace(self._tmp[name], final)
            shape = [self.num_rows, self.seq_len] if name == "tokens" else [self.num_rows]
            dtype = self.dtype if name == "tokens" else np.dtype(np.int32)
            arrays[name] = {"file": final.name, "shape": shape, "dtype": dtype.str}
        tmp_meta = self.directory / f"{META}{TMP}{os.getpid()}"
        with open(tmp_meta, "w", encoding="utf-8") as f:
            json.dump({**meta, "arrays": arrays}, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_meta, self.directory / META)
        _fsync_dir(self.directory)

    def abort(self) -> None:
        for name, f in self._files.items():
            f.close()
            self._tmp[name].unlink(missing_ok=True)


def _clean(directory: Path) -> None:
    # Called with the lock held, so every temp file here belongs to a dead builder.
    for path in directory.iterdir():
        if TMP in path.name or path.name == META:
            path.unlink(missing_ok=True)


def entry_dir(root: Path, label: str, key: str) -> Path:
    """``root/<label>-<key prefix>``, with the label made filesystem-safe."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_")[:80]
    return root / f"{slug}-{key[:16]}"


def load_or_build(
    directory: Path,
    key: str,
    build: Callable[[RowWriter], dict],
    *,
    seq_len: int,
    dtype: np.dtype,
    with_lengths: bool,
) -> CacheEntry:
    """Open the entry in ``directory`` or build it with ``build(writer) -> metadata``."""
    entry = open_entry(directory, key)
    if entry is not None:
        return entry
    directory.mkdir(parents=True, exist_ok=True)
    with file_lock(directory / "lock"):
        entry = open_entry(directory, key)  # another process may have built it while we waited
        if entry is not None:
            return entry
        _clean(directory)
        writer = RowWriter(directory, seq_len, dtype, with_lengths)
        try:
            meta = build(writer)
            writer.commit({**meta, "format": CACHE_FORMAT, "key": key})
        except BaseException:
            writer.abort()
            raise
    entry = open_entry(directory, key)
    assert entry is not None, f"cache entry {directory} unreadable right after commit"
    return entry
