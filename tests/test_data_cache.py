"""The packed-data cache: reused without re-tokenizing, never read half-written, one builder."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from duo.data import CharTokenizer, default_cache_dir, get_corpus, pack_split
from duo.data.cache import load_or_build, open_entry

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex".split()


@pytest.fixture(autouse=True)
def _no_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DUO_CACHE", str(tmp_path / "duo-cache"))


@pytest.fixture
def corpus_path(tmp_path):
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.choice(WORDS, size=rng.integers(5, 60))) for _ in range(300)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(docs))
    return path


class CountingTokenizer(CharTokenizer):
    """A character tokenizer that counts (and can fail) batch encodes."""

    def __init__(self, fail_after=None):
        super().__init__()
        self.calls = 0
        self.fail_after = fail_after

    def encode_batch(self, texts):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("simulated crash mid-write")
        return super().encode_batch(texts)


def _pack(corpus_path, cache_dir, tok, **kw):
    kw = {"packing": "wrap", "seq_len": 32, "show_progress": False, "batch_documents": 16, **kw}
    return pack_split(get_corpus(str(corpus_path)), "train", tok, cache_dir=cache_dir, **kw)


def test_second_run_reads_the_cache_without_tokenizing(corpus_path, tmp_path):
    first_tok = CountingTokenizer()
    first = _pack(corpus_path, tmp_path, first_tok)
    assert first_tok.calls > 1 and first.num_rows > 100 and first.tokens.dtype == np.uint16
    again_tok = CountingTokenizer(fail_after=0)
    again = _pack(corpus_path, tmp_path, again_tok)
    assert again_tok.calls == 0
    assert isinstance(again.tokens, np.memmap) and np.array_equal(again.tokens, first.tokens)
    stats = again.meta["stats"]
    assert stats["num_tokens"] == stats["kept_tokens"] + stats["dropped_tokens"]
    # Anything that changes the content gets its own entry.
    assert _pack(corpus_path, tmp_path, CountingTokenizer(), seq_len=16).directory != first.directory
    assert _pack(corpus_path, tmp_path, CountingTokenizer(), packing="pad").lengths is not None


def _assert_clean_rebuild(corpus_path, cache_dir, expected):
    tok = CountingTokenizer()
    rebuilt = _pack(corpus_path, cache_dir, tok)
    assert tok.calls > 0, "expected a rebuild"
    assert np.array_equal(rebuilt.tokens, expected)
    assert not [p for p in rebuilt.directory.iterdir() if ".tmp-" in p.name]


def test_exception_mid_write_leaves_nothing_readable(corpus_path, tmp_path):
    reference = _pack(corpus_path, tmp_path / "ref", CountingTokenizer())
    with pytest.raises(RuntimeError, match="simulated crash"):
        _pack(corpus_path, tmp_path / "c", CountingTokenizer(fail_after=3))
    (entry_dir,) = (tmp_path / "c" / "packed").iterdir()
    assert not (entry_dir / "meta.json").exists()
    assert open_entry(entry_dir, reference.meta["key"]) is None
    _assert_clean_rebuild(corpus_path, tmp_path / "c", reference.tokens)


def test_leftovers_of_a_hard_crash_are_ignored_and_cleaned(corpus_path, tmp_path):
    reference = _pack(corpus_path, tmp_path / "ref", CountingTokenizer())
    entry_dir = tmp_path / "c" / "packed" / reference.directory.name
    entry_dir.mkdir(parents=True)
    half = (reference.directory / "tokens.bin").read_bytes()[: reference.tokens.nbytes // 2]
    (entry_dir / "tokens.bin.tmp-99999-deadbeef").write_bytes(half)
    (entry_dir / "tokens.bin").write_bytes(half)  # renamed, but metadata never written
    (entry_dir / "meta.json.tmp-99999").write_text("{")
    _assert_clean_rebuild(corpus_path, tmp_path / "c", reference.tokens)


def test_truncated_data_behind_valid_metadata_is_never_read(corpus_path, tmp_path):
    reference = _pack(corpus_path, tmp_path, CountingTokenizer())
    expected, directory, key = np.array(reference.tokens), reference.directory, reference.meta["key"]
    del reference  # truncating a file under a live memmap is undefined behaviour
    data = directory / "tokens.bin"
    data.write_bytes(data.read_bytes()[:-10])
    assert open_entry(directory, key) is None
    _assert_clean_rebuild(corpus_path, tmp_path, expected)


def test_builder_killed_mid_write(corpus_path, tmp_path):
    marker = tmp_path / "writing"
    script = textwrap.dedent(f"""
        import time
        from duo.data import CharTokenizer, get_corpus, pack_split
        class Slow(CharTokenizer):
            calls = 0
            def encode_batch(self, texts):
                self.calls += 1
                if self.calls == 3:
                    open({str(marker)!r}, "w").close()
                    time.sleep(60)
                return super().encode_batch(texts)
        pack_split(get_corpus({str(corpus_path)!r}), "train", Slow(), packing="wrap", seq_len=32,
                   cache_dir={str(tmp_path)!r}, show_progress=False, batch_documents=16)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 60
        while not marker.exists():
            assert proc.poll() is None and time.time() < deadline, "builder exited early"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    (entry_dir,) = (tmp_path / "packed").iterdir()
    assert [p.name for p in entry_dir.iterdir() if ".tmp-" in p.name]
    assert not (entry_dir / "meta.json").exists()
    reference = _pack(corpus_path, tmp_path / "ref", CountingTokenizer())
    _assert_clean_rebuild(corpus_path, tmp_path, reference.tokens)


def test_concurrent_builders_build_once(tmp_path):
    builds, results = [], []

    def build(writer):
        builds.append(1)
        time.sleep(0.3)  # long enough that every other caller arrives mid-build
        writer.write(np.arange(12).reshape(3, 4))
        return {}

    def worker():
        entry = load_or_build(tmp_path / "e", "key", build, seq_len=4, dtype=np.uint16, with_lengths=False)
        results.append(np.array(entry.tokens))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and len(results) == 4
    assert all(np.array_equal(r, np.arange(12).reshape(3, 4)) for r in results)


def test_default_cache_dir_honours_duo_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DUO_CACHE", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("DUO_CACHE")
    assert default_cache_dir().parts[-2:] == (".cache", "duo")
