"""Tokenizers: BPE round-trips and is deterministic; every kind saves and restores."""

import json

import pytest

from duo.data import CharTokenizer, get_corpus, get_tokenizer, load_tokenizer, train_bpe

TEXTS = [
    "Return a new list containing all items from the iterable in ascending order.",
    "Unicode: naïve café, 日本語, emoji 🙂 and\ttabs\n\nnew  lines  ",
    "",
    " leading space and trailing ",
]


@pytest.fixture(autouse=True)
def _no_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DUO_CACHE", str(tmp_path / "duo-cache"))


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    corpus = get_corpus("builtin")
    return train_bpe(corpus, 512, cache_dir=tmp_path_factory.mktemp("cache"), show_progress=False)


def test_bpe_round_trips_any_text(bpe):
    assert bpe.vocab_size == 512
    assert len({bpe.bos_id, bpe.eos_id, bpe.pad_id}) == 3
    for text in TEXTS:
        ids = bpe.encode(text)
        assert all(0 <= i < bpe.vocab_size for i in ids)
        assert bpe.decode(ids) == text
    assert bpe.encode_batch(TEXTS) == [bpe.encode(t) for t in TEXTS]
    # Merges compress English: far fewer tokens than bytes.
    assert len(bpe.encode(TEXTS[0])) < len(TEXTS[0].encode()) / 2.5


def test_bpe_training_is_deterministic_and_cached(bpe, tmp_path, monkeypatch):
    import duo.data.tokenizer_sources as sources

    corpus = get_corpus("builtin")
    again = train_bpe(corpus, 512, cache_dir=tmp_path, show_progress=False)
    assert again.fingerprint == bpe.fingerprint and again.name == bpe.name
    monkeypatch.setattr(sources, "_train_backend", lambda *a: pytest.fail("retrained instead of loading the cache"))
    cached = train_bpe(corpus, 512, cache_dir=tmp_path, show_progress=False)
    assert cached.fingerprint == bpe.fingerprint
    with pytest.raises(ValueError, match="vocab_size=100 is too small"):
        train_bpe(corpus, 100, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="pass corpus="):
        get_tokenizer("bpe", cache_dir=tmp_path)


def test_save_and_load_restore_the_same_tokenizer(bpe, tmp_path):
    for tok in (bpe, CharTokenizer()):
        directory = tok.save(tmp_path / tok.kind)
        meta = json.loads((directory / "duo_tokenizer.json").read_text())
        assert meta["kind"] == tok.kind and meta["vocab_size"] == tok.vocab_size
        loaded = load_tokenizer(directory)
        assert type(loaded) is type(tok) and loaded.fingerprint == tok.fingerprint
        assert (loaded.bos_id, loaded.eos_id, loaded.pad_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
        assert get_tokenizer(str(directory)).fingerprint == tok.fingerprint
    with pytest.raises(FileNotFoundError, match="duo_tokenizer.json missing"):
        load_tokenizer(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_tokenizer(str(tmp_path / "nothing"))


def test_char_tokenizer_for_text8():
    tok = get_tokenizer("char")
    assert tok.vocab_size == 27 + 3 and (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)
    ids = tok.encode("hello world")
    assert min(ids) >= 3 and tok.decode(ids) == "hello world"
    assert tok.decode([0, *ids, 1, 2], skip_special_tokens=True) == "hello world"
    with pytest.raises(ValueError, match="character 'H' is not in the tokenizer alphabet"):
        tok.encode("Hello")


def _hf_dir(tmp_path, kind):
    """A local Hugging Face tokenizer directory shaped like GPT-2 or BERT (no network)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>"] if kind == "gpt2" else ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(TEXTS * 5, trainer)
    if kind == "gpt2":
        hf = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    else:
        hf = PreTrainedTokenizerFast(
            tokenizer_object=backend,
            pad_token="[PAD]",
            unk_token="[UNK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        )
    hf.add_tokens(["<extra_added>"])  # added tokens count toward the ids the model must embed
    hf.save_pretrained(str(tmp_path / kind))
    return tmp_path / kind, hf


def test_hugging_face_tokenizers_from_local_directories(tmp_path):
    gpt2_dir, gpt2_hf = _hf_dir(tmp_path, "gpt2")
    tok = get_tokenizer(str(gpt2_dir))
    eot = gpt2_hf.convert_tokens_to_ids("<|endoftext|>")
    assert tok.kind == "hf" and tok.bos_id == tok.eos_id == tok.pad_id == eot  # GPT-2 convention
    assert tok.vocab_size == len(gpt2_hf) and tok.vocab_size > gpt2_hf.vocab_size
    assert tok.decode(tok.encode(TEXTS[0])) == TEXTS[0]
    restored = load_tokenizer(tok.save(tmp_path / "saved"))
    assert restored.fingerprint == tok.fingerprint and restored.encode(TEXTS[0]) == tok.encode(TEXTS[0])

    bert_dir, bert_hf = _hf_dir(tmp_path, "bert")
    tok = get_tokenizer(str(bert_dir))
    ids = bert_hf.convert_tokens_to_ids(["[CLS]", "[SEP]", "[PAD]"])
    assert [tok.bos_id, tok.eos_id, tok.pad_id] == ids  # CLS/SEP stand in for BOS/EOS, as in MDLM


def test_unreachable_hub_tokenizer_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="cannot load tokenizer 'no-such-org/no-such-tokenizer'") as err:
        get_tokenizer("no-such-org/no-such-tokenizer")
    assert "\n" not in str(err.value)
