"""Hugging Face corpora, read offline from local files in each hub dataset's format."""

import json

import pytest

from duo.data import HF_CORPORA, DataConfig, build_data, get_corpus, get_detokenizer
from duo.data.detokenizers import lambada, lm1b, ptb, wikitext


@pytest.fixture(autouse=True)
def _no_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DUO_CACHE", str(tmp_path / "duo-cache"))


def _write(path, rows):
    """Write rows as .jsonl or .parquet (the hub's own format) depending on the suffix."""
    if path.suffix == ".parquet":
        import datasets

        datasets.Dataset.from_list(rows).to_parquet(str(path))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _docs(corpus, split):
    return list(corpus.documents(split))


def test_detokenizers():
    assert (
        wikitext("the 1 @,@ 000 @-@ year war ( long ) , was n't 3 @.@ 5 km")
        == "the 1,000-year war (long), wasn't 3.5 km"
    )
    assert wikitext(" = = Gameplay = = ") == " == Gameplay == "
    assert (
        ptb("the company 's <unk> shares rose N % , analysts said") == "the company's ? shares rose N%, analysts said"
    )
    assert lm1b('He said : " I do n\'t know . " See http : / / x.org') == 'He said: "I don\'t know." See http://x.org'
    assert lambada("\u201cHi,\u201d  she said. ") == '"Hi," she said.'
    with pytest.raises(ValueError, match="unknown detokenizer 'nope'.*wikitext"):
        get_detokenizer("nope")


def test_openwebtext_holds_out_its_last_documents(tmp_path):
    rows = [{"text": f"web page {i}"} for i in range(12)]
    files = {"train": _write(tmp_path / "owt.parquet", rows)}
    corpus = get_corpus("openwebtext", data_files=files, cache_dir=str(tmp_path / "hf"), overrides={"holdout": 3})
    assert _docs(corpus, "train") == [r["text"] for r in rows[:9]]
    assert _docs(corpus, "validation") == [r["text"] for r in rows[9:]]
    assert corpus.default_tokenizer == "gpt2"
    assert HF_CORPORA["openwebtext"].holdout == 100_000


# corpus -> (hub splits written, text field, raw text, detokenized text, default tokenizer)
CASES = {
    "lm1b": (("train", "test"), "text", "I do n't know .", "I don't know.", "bert-base-uncased"),
    "wikitext-2": (("train", "validation", "test"), "text", " a 3 @.@ 5 km road ", " a 3.5 km road ", "gpt2"),
    "wikitext-103": (("train", "validation", "test"), "text", " it 's 1 @,@ 000 ", " it's 1,000 ", "gpt2"),
    "ptb": (("train", "validation", "test"), "sentence", "the <unk> 's price", "the ?'s price", "gpt2"),
    "ag_news": (("train", "test"), "text", "Stocks rise , again .", "Stocks rise , again .", "gpt2"),
    "scientific_papers_pubmed": (
        ("train", "validation", "test"),
        "article",
        "cells ( n = 5 ) .",
        "cells (n = 5).",
        "gpt2",
    ),
    "scientific_papers_arxiv": (
        ("train", "validation", "test"),
        "article",
        "we use @xmath0 .",
        "we use @xmath0.",
        "gpt2",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_registered_corpus_reads_hub_format(name, tmp_path):
    hub_splits, field, raw, clean, tokenizer = CASES[name]
    spec = HF_CORPORA[name]
    assert spec.text_field == field
    files = {}
    for split in hub_splits:
        rows = [{field: f"{split} {i} {raw}", "label": i, "other": "x"} for i in range(4)]
        files[split] = _write(tmp_path / f"{name}-{split}.parquet", rows)
    corpus = get_corpus(name, data_files=files, cache_dir=str(tmp_path / "hf"))
    assert corpus.default_tokenizer == tokenizer
    val_source = "test" if "validation" not in hub_splits else "validation"
    assert _docs(corpus, "train") == [f"train {i} {clean}" for i in range(4)]
    assert _docs(corpus, "validation") == [f"{val_source} {i} {clean}" for i in range(4)]
    raw_corpus = get_corpus(name, data_files=files, cache_dir=str(tmp_path / "hf"), detokenize=False)
    assert _docs(raw_corpus, "train")[0] == f"train 0 {raw}"
    # The cache must not mix detokenized and raw text (ag_news has no detokenizer).
    assert (raw_corpus.fingerprint != corpus.fingerprint) == (spec.detokenizer is not None)


def test_lambada_is_validation_only(tmp_path):
    files = {"test": _write(tmp_path / "lambada.jsonl", [{"text": "\u201cYes,\u201d he said"}] * 3)}
    corpus = get_corpus("lambada", data_files=files, cache_dir=str(tmp_path / "hf"))
    assert corpus.splits == ("validation",)
    assert _docs(corpus, "validation") == ['"Yes," he said'] * 3
    cfg = DataConfig(corpus="lambada", data_files=files, tokenizer="char", cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="no 'train' split"):
        build_data(cfg)


def test_text8_builds_with_the_character_tokenizer(tmp_path):
    text = {s: " ".join(["anarchism originated as a term of abuse"] * n) for s, n in (("train", 60), ("validation", 8))}
    files = {s: _write(tmp_path / f"text8-{s}.jsonl", [{"text": t}]) for s, t in text.items()}
    cfg = DataConfig(
        corpus="text8",
        data_files=files,
        hf_overrides={"revision": "main"},  # ignored for local files, but must reach the spec
        seq_len=64,
        cache_dir=str(tmp_path / "c"),
        show_progress=False,
    )
    bundle = build_data(cfg)
    assert bundle.tokenizer.vocab_size == 30
    rows = bundle.train.entry.tokens
    stream = "".join(bundle.tokenizer.decode(r, skip_special_tokens=True) for r in rows)
    assert stream in text["train"] and len(stream) >= len(text["train"]) - 64
    assert (tmp_path / "c" / "hf-datasets").is_dir()  # HF's arrow files stay in our cache dir


def test_hf_errors_name_the_fix(tmp_path):
    files = {"train": _write(tmp_path / "owt.jsonl", [{"body": "x"}] * 5)}
    corpus = get_corpus("openwebtext", data_files=files, cache_dir=str(tmp_path / "hf"), overrides={"holdout": 1})
    with pytest.raises(ValueError, match="no text field 'text'.*body"):
        corpus.documents("train")
    with pytest.raises(ValueError, match="unknown overrides \\['holdut'\\]"):
        get_corpus("openwebtext", overrides={"holdut": 1})
    missing = get_corpus("openwebtext", data_files={"train": str(tmp_path / "none.jsonl")}, cache_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="none.jsonl"):
        missing.documents("train")
    generic = get_corpus(
        "hf:json",
        data_files={"train": files["train"], "validation": files["train"]},
        text_field="body",
        cache_dir=str(tmp_path / "hf"),
    )
    assert _docs(generic, "validation") == ["x"] * 5
