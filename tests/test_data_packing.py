"""Packing identities: wrap keeps every token in order; pad masks exactly the padding."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duo.data import PACKERS, pack

BOS, EOS, PAD = 0, 1, 2
docs_strategy = st.lists(st.lists(st.integers(3, 99), max_size=40), max_size=25)


def _stream(docs):
    return [t for d in docs for t in (BOS, *d, EOS)]


@settings(max_examples=60, deadline=None)
@given(docs=docs_strategy, seq_len=st.integers(2, 33))
def test_wrap_loses_no_token(docs, seq_len):
    result = pack(docs, "wrap", seq_len, bos_id=BOS, eos_id=EOS, pad_id=PAD)
    rows, stats = result.rows, result.stats
    stream = _stream(docs)
    assert rows.lengths is None and rows.tokens.shape == (len(stream) // seq_len, seq_len)
    # The rows are the BOS/doc/EOS stream, in order, cut every seq_len tokens...
    assert rows.tokens.reshape(-1).tolist() == stream[: rows.tokens.size]
    # ...and only the final partial row is dropped.
    assert stats.num_tokens == len(stream) == stats.kept_tokens + stats.dropped_tokens
    assert stats.dropped_tokens < seq_len and stats.num_documents == len(docs)


@settings(max_examples=60, deadline=None)
@given(docs=docs_strategy, seq_len=st.integers(2, 33))
def test_pad_masks_exactly_the_padding(docs, seq_len):
    result = pack(docs, "pad", seq_len, bos_id=BOS, eos_id=EOS, pad_id=PAD)
    rows, stats = result.rows, result.stats
    assert rows.tokens.shape == (len(docs), seq_len)
    for row, n, doc in zip(rows.tokens, rows.lengths, docs):
        full = [BOS, *doc, EOS]
        assert n == min(len(full), seq_len)
        assert row[:n].tolist() == full[:n]
        assert (row[n:] == PAD).all()
    assert stats.num_tokens == sum(len(d) + 2 for d in docs) == stats.kept_tokens + stats.dropped_tokens
    assert stats.kept_tokens == int(rows.lengths.sum())


def test_streaming_matches_one_shot():
    rng = np.random.default_rng(0)
    docs = [rng.integers(3, 50, size=rng.integers(0, 30)).tolist() for _ in range(200)]
    packer = PACKERS["wrap"](16, BOS, EOS, PAD)
    parts = [packer.add(docs[i : i + 7]).tokens for i in range(0, len(docs), 7)]
    one = pack(docs, "wrap", 16, bos_id=BOS, eos_id=EOS, pad_id=PAD)
    assert np.array_equal(np.concatenate(parts), one.rows.tokens)
    assert packer.finish() == one.stats


def test_pad_mask_is_right_when_pad_equals_eos():
    # GPT-2 uses <|endoftext|> for EOS and PAD: the mask must come from lengths, not ids.
    result = pack([[5, 6]], "pad", 6, bos_id=9, eos_id=9, pad_id=9)
    assert result.rows.tokens.tolist() == [[9, 5, 6, 9, 9, 9]] and result.rows.lengths.tolist() == [4]


def test_pack_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown packing 'zip'.*pad.*wrap"):
        pack([[3]], "zip", 8, bos_id=BOS, eos_id=EOS, pad_id=PAD)
    with pytest.raises(ValueError, match="seq_len=1 is too short"):
        pack([[3]], "wrap", 1, bos_id=BOS, eos_id=EOS, pad_id=PAD)
