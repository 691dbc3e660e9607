"""build_data end to end, config validation and the model-fit check."""

import pytest
import torch

from duo.data import BPETokenizer, DataConfig, build_data, check_fits_model, load_tokenizer


@pytest.fixture(autouse=True)
def _no_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DUO_CACHE", str(tmp_path / "duo-cache"))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def test_builtin_end_to_end_and_instant_second_run(cache_dir, tmp_path, monkeypatch):
    cfg = DataConfig(vocab_size=512, seq_len=64, cache_dir=cache_dir, show_progress=False)
    bundle = build_data(cfg)
    assert isinstance(bundle.tokenizer, BPETokenizer) and bundle.tokenizer.vocab_size == 512
    assert len(bundle.train) > 20 * len(bundle.validation) > 0
    batch = next(iter(bundle.train_loader(batch_size=8)))
    assert batch["input_ids"].shape == (8, 64) and batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"].all() and int(batch["input_ids"].max()) < 512
    stats = bundle.train.meta["stats"]
    assert stats["num_tokens"] == stats["kept_tokens"] + stats["dropped_tokens"] and stats["dropped_tokens"] < 64
    val_batches = list(bundle.validation_loader(batch_size=16))
    assert sum(len(b["input_ids"]) for b in val_batches) == len(bundle.validation)

    # The second run trains nothing and tokenizes nothing.
    import duo.data.tokenizer_sources as sources

    monkeypatch.setattr(sources, "_train_backend", lambda *a: pytest.fail("BPE retrained"))
    monkeypatch.setattr(BPETokenizer, "encode_batch", lambda *a: pytest.fail("corpus re-tokenized"))
    again = build_data(cfg)
    assert torch.equal(again.train[5]["input_ids"], bundle.train[5]["input_ids"])

    # A checkpoint's saved tokenizer is the same tokenizer.
    restored = load_tokenizer(bundle.tokenizer.save(tmp_path / "run" / "tokenizer"))
    assert restored.fingerprint == bundle.tokenizer.fingerprint


def test_pad_packing_and_ranks(cache_dir):
    cfg = DataConfig(vocab_size=512, seq_len=32, packing="pad", cache_dir=cache_dir, show_progress=False)
    ranks = [build_data(cfg, rank=r, world_size=2) for r in range(2)]
    item = ranks[0].train[0]
    n = int(item["attention_mask"].sum())
    assert item["attention_mask"].tolist() == [1] * n + [0] * (32 - n)
    assert item["input_ids"][0] == ranks[0].tokenizer.bos_id
    firsts = [next(iter(b.train_loader(batch_size=4)))["input_ids"] for b in ranks]
    assert not torch.equal(firsts[0], firsts[1])  # each rank reads its own shard


def test_local_corpus_too_small_for_seq_len(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("short one\n\nshort two\n\nshort three")
    cfg = DataConfig(
        corpus=str(path), tokenizer="char", seq_len=512, cache_dir=str(tmp_path / "c"), show_progress=False
    )
    with pytest.raises(ValueError, match="no row of seq_len=512.*lower seq_len or add text"):
        build_data(cfg)
    assert not list((tmp_path / "c" / "packed").glob("*/meta.json"))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("corpus", "nonsense", "unknown data.corpus 'nonsense'; pick one of .*builtin"),
        ("packing", "zip", "unknown data.packing 'zip'"),
        ("seq_len", 1, "data.seq_len=1 is too short"),
        ("vocab_size", 10, "data.vocab_size=10 is too small"),
        ("val_fraction", 0.0, "data.val_fraction=0.0 must be in"),
        ("max_documents", 0, "data.max_documents=0 must be"),
        ("num_workers", -1, "data.num_workers=-1"),
    ],
)
def test_config_errors_are_one_line(field, value, message):
    with pytest.raises(ValueError, match=message) as err:
        DataConfig(**{field: value}).validate()
    assert "\n" not in str(err.value)


def test_missing_corpus_path(tmp_path):
    cfg = DataConfig(corpus=str(tmp_path / "nope.txt"), cache_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        build_data(cfg)


def test_check_fits_model():
    from duo.data import CharTokenizer

    tok = CharTokenizer()
    check_fits_model(tok, model_vocab_size=30, seq_len=128, model_max_len=128)
    with pytest.raises(
        ValueError, match="has 30 ids but the model embeds only 29; build the model with vocab_size >= 30"
    ):
        check_fits_model(tok, model_vocab_size=29, seq_len=128, model_max_len=128)
    with pytest.raises(ValueError, match="seq_len=256 exceeds the model's maximum length 128"):
        check_fits_model(tok, model_vocab_size=30, seq_len=256, model_max_len=128)
