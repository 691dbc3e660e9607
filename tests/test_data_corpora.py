"""Corpora: the built-in corpus is deterministic, splits are disjoint, local files load."""

import json

import pytest

from duo.data import CORPORA, corpus_names, get_corpus, register_corpus
from duo.data.builtin import builtin_documents
from duo.data.corpora import hash_split, read_local_documents


@pytest.fixture(autouse=True)
def _no_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DUO_CACHE", str(tmp_path / "duo-cache"))


def _digest(corpus):
    import hashlib

    h = hashlib.sha256()
    for split in ("train", "validation"):
        for doc in corpus.documents(split):
            h.update(doc.encode() + b"\0")
    return h.hexdigest()


def test_builtin_is_identical_across_calls_and_processes():
    a, b = get_corpus("builtin"), get_corpus("builtin")
    assert list(a.documents("train")) == list(b.documents("train"))
    assert a.fingerprint == b.fingerprint
    # Each collection runs in a fresh isolated interpreter with its own random hash seed,
    # so collecting twice compares two processes that differ in PYTHONHASHSEED.
    builtin_documents.cache_clear()
    assert _digest(get_corpus("builtin")) == _digest(a)


def test_builtin_size_and_disjoint_splits():
    corpus = get_corpus("builtin")
    train, val = list(corpus.documents("train")), list(corpus.documents("validation"))
    chars = sum(map(len, train)) + sum(map(len, val))
    assert 1_000_000 < chars < 2_500_000  # ~1.5 MB of English documentation
    assert not set(train) & set(val)
    assert 0.02 < len(val) / (len(train) + len(val)) < 0.05
    assert all(d.strip() for d in train + val)


def test_hash_split_is_stable_and_covers_every_document():
    docs = [f"document number {i}" for i in range(500)]
    train, val = hash_split(docs, "train", 0.1), hash_split(docs, "validation", 0.1)
    assert sorted(train + val) == sorted(docs)
    assert 20 < len(val) < 80
    # Order within a split follows the input; membership depends only on the text.
    assert hash_split(docs[::-1], "validation", 0.1) == val[::-1]
    # A tiny corpus still gets one validation document.
    assert len(hash_split(["a", "b"], "validation", 0.01)) == 1


def test_local_txt_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first doc\nstill first\n\n\n  second doc \n\n" + "\n\n".join(f"doc {i}" for i in range(40)))
    corpus = get_corpus(str(path))
    docs = list(corpus.documents("train")) + list(corpus.documents("validation"))
    assert "first doc\nstill first" in docs and "second doc" in docs
    assert len(docs) == 42
    assert corpus.default_tokenizer == "bpe"


def test_local_directory_and_jsonl(tmp_path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha\n\nstill alpha")  # one document per file
    (folder / "sub" / "b.txt").write_text("beta")
    (folder / "ignored.md").write_text("not text")
    assert read_local_documents(folder) == ["alpha\n\nstill alpha", "beta"]
    corpus = get_corpus(str(folder))  # a small corpus: split by paragraphs (tests/test_faults.py)
    parts = list(corpus.documents("train")) + list(corpus.documents("validation"))
    assert sorted(p for doc in parts for p in doc.split("\n\n")) == ["alpha", "beta", "still alpha"]

    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": f"text {i}", "id": i}) for i in range(10)))
    corpus = get_corpus(str(jsonl), text_field="body")
    assert len(corpus.documents("train")) + len(corpus.documents("validation")) == 10
    with pytest.raises(ValueError, match="no text field 'text'"):
        get_corpus(str(jsonl))


def test_fingerprint_follows_content(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("one\n\ntwo")
    before = get_corpus(str(path)).fingerprint
    path.write_text("one\n\nthree")
    assert get_corpus(str(path)).fingerprint != before
    assert get_corpus(str(path), val_fraction=0.2).fingerprint != get_corpus(str(path)).fingerprint


def test_bad_corpus_inputs(tmp_path):
    with pytest.raises(ValueError, match="unknown corpus 'nonsense'.*builtin.*openwebtext") as err:
        get_corpus("nonsense")
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        get_corpus(str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n")
    with pytest.raises(ValueError, match="is empty"):
        get_corpus(str(empty))
    (tmp_path / "nodocs").mkdir()
    with pytest.raises(ValueError, match="no .txt files"):
        get_corpus(str(tmp_path / "nodocs"))
    with pytest.raises(ValueError, match="no split 'test'"):
        get_corpus("builtin").documents("test")


def test_register_corpus_rejects_duplicates():
    assert set(corpus_names()) >= {
        "builtin",
        "openwebtext",
        "lm1b",
        "wikitext-2",
        "wikitext-103",
        "ptb",
        "lambada",
        "ag_news",
        "scientific_papers_pubmed",
        "scientific_papers_arxiv",
        "text8",
    }
    with pytest.raises(ValueError, match="already registered"):
        register_corpus("builtin", CORPORA["builtin"])
