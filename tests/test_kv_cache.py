"""Autoregressive decoding with a key/value cache equals recomputing the whole context."""

from __future__ import annotations

import pytest
import torch

from duo.models import ModelConfig, build_model
from duo.samplers.ar import generate_ar

K = 41


def _causal(seed: int = 0):
    cfg = ModelConfig(vocab_size=K, hidden_size=32, cond_dim=16, n_heads=4, n_blocks=2, max_seq_len=24,
                      causal=True, time_conditioning=False)
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    with torch.no_grad():  # the zero-initialised output layer would give uniform logits
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, 0.3)
    return model


class _Decoder:
    def __init__(self, model):
        self.model = model

    def new_cache(self, batch, max_len, device=None):
        return self.model.new_cache(batch, max_len, device)

    def decode(self, ids, cache):
        return self.model.decode(ids, cache)


def test_decode_in_pieces_equals_the_full_forward():
    model = _causal()
    ids = torch.randint(0, K, (3, 20), generator=torch.Generator().manual_seed(1))
    full = model(ids, None)
    cache = model.new_cache(3, 20)
    parts = [model.decode(ids[:, a:b], cache) for a, b in ((0, 7), (7, 8), (8, 15), (15, 20))]
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature, top_p, top_k", [(1.0, 1.0, 0), (0.0, 1.0, 0), (0.8, 0.9, 5)])
def test_cached_generation_equals_uncached_token_for_token(temperature, top_p, top_k):
    model = _causal(seed=3)
    common = dict(batch_size=4, seq_len=24, prefix=torch.tensor([5, 6, 7]), bos_id=1, seed=11,
                  temperature=temperature, top_p=top_p, top_k=top_k)
    plain = generate_ar(lambda x: model(x, None), **common)
    cached = generate_ar(lambda x: model(x, None), decoder=_Decoder(model), **common)
    assert torch.equal(plain.tokens, cached.tokens) and plain.nfe == cached.nfe == 20
    assert plain.tokens[:, :4].tolist() == [[1, 5, 6, 7]] * 4


def test_a_cache_needs_a_causal_model_and_room():
    bidirectional = build_model(ModelConfig(vocab_size=K, hidden_size=32, cond_dim=16, n_heads=4, n_blocks=1,
                                            max_seq_len=8))
    with pytest.raises(ValueError, match="needs a causal model"):
        bidirectional.new_cache(1, 8)
    model = _causal()
    cache = model.new_cache(1, 4)
    with pytest.raises(ValueError, match="exceed the cache's 4"):
        model.decode(torch.zeros(1, 5, dtype=torch.long), cache)


def test_the_ar_method_decodes_with_its_cache_and_its_logit_mask():
    from duo.config import build_config
    from duo.methods import build_method

    cfg = build_config(["algo=ar", "model.hidden_size=32", "model.cond_dim=16", "model.n_heads=4",
                        "model.n_blocks=2", "model.max_seq_len=24"])
    torch.manual_seed(0)
    backbone, method = build_method(cfg, K)
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, 0.3)
    backbone.eval()
    method.masked_logit_ids = (K - 1,)  # a published AR's extra id: never drawn
    common = dict(batch_size=3, seq_len=24, bos_id=1, seed=5)
    plain = generate_ar(method.next_token_logits, **common)
    cached = generate_ar(method.next_token_logits, decoder=method, **common)
    assert torch.equal(plain.tokens, cached.tokens)
    assert not (cached.tokens == K - 1).any()
    cache = method.new_cache(3, 24)
    torch.testing.assert_close(method.decode(plain.tokens, cache), method.next_token_logits(plain.tokens))
