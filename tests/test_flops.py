"""The strict FLOP count of duo.models.flops against a count by hand."""

import pytest

from duo.models import ModelConfig, build_model, count_parameters, flops_per_token
from duo.models.flops import flop_count, is_per_sequence, loose_flops_per_token, training_flops

K, D, C, H, NB = 37, 32, 16, 4, 2


def _cfg(**overrides) -> ModelConfig:
    base = dict(vocab_size=K, hidden_size=D, cond_dim=C, n_heads=H, n_blocks=NB,
                max_seq_len=16, dropout=0.0)
    base.update(overrides)
    return ModelConfig(**base).validate()


# Parameter counts from the layer shapes of the published checkpoint layout
# (DESIGN.md, "Checkpoint compatibility").
BLOCK_PER_TOKEN = (
    D              # norm1.weight [D]
    + 3 * D * D    # attn_qkv.weight [3D, D], no bias
    + D * D        # attn_out.weight [D, D], no bias
    + D            # norm2.weight [D]
    + 4 * D * D + 4 * D  # mlp.0 [4D, D] + [4D]
    + D * 4 * D + D      # mlp.2 [D, 4D] + [D]
)
FINAL_PER_TOKEN = D + K * D + K  # norm_final [D], linear [K, D] + [K]
PER_TOKEN = NB * BLOCK_PER_TOKEN + FINAL_PER_TOKEN
PER_SEQUENCE = (
    C * 256 + C + C * C + C       # sigma_map.mlp.0 [C, 256] + [C], .mlp.2 [C, C] + [C]
    + NB * (6 * D * C + 6 * D)    # blocks.{n}.adaLN_modulation [6D, C] + [6D]
    + 2 * D * C + 2 * D           # output_layer.adaLN_modulation [2D, C] + [2D]
)
EMBEDDING = K * D                 # vocab_embed.embedding [K, D]: a lookup


def test_parameter_split_equals_the_hand_count():
    c = flop_count(_cfg(), 16)
    assert (c.per_token_params, c.per_sequence_params, c.embedding_params) == (
        PER_TOKEN, PER_SEQUENCE, EMBEDDING)
    assert PER_TOKEN + PER_SEQUENCE + EMBEDDING == count_parameters(build_model(_cfg()))


@pytest.mark.parametrize("seq_len", [1, 16, 1024])
def test_flops_equal_the_hand_count(seq_len):
    cfg = _cfg(max_seq_len=max(seq_len, 16))
    c = flop_count(cfg, seq_len)
    attention = 12 * NB * seq_len * D
    assert c.dense_per_token == 6 * PER_TOKEN
    assert c.attention_per_token == attention
    assert c.per_sequence == 6 * PER_SEQUENCE
    per_token = 6 * PER_TOKEN + attention + 6 * PER_SEQUENCE / seq_len
    assert c.per_token == pytest.approx(per_token, rel=1e-15)
    assert flops_per_token(cfg, seq_len) == c.per_token
    for batch in (1, 3):
        step = batch * seq_len * (6 * PER_TOKEN + attention) + batch * 6 * PER_SEQUENCE
        assert training_flops(cfg, batch, seq_len) == step == c.step(batch)
        assert c.step(batch) == pytest.approx(batch * seq_len * c.per_token, rel=1e-15)
    assert loose_flops_per_token(cfg, seq_len) == 6 * (PER_TOKEN + PER_SEQUENCE) + attention


def test_per_sequence_layers_do_not_scale_with_length():
    cfg = _cfg(max_seq_len=4096)
    short, long = flop_count(cfg, 64), flop_count(cfg, 4096)
    assert short.per_sequence == long.per_sequence
    assert short.dense_per_token == long.dense_per_token
    assert long.attention_per_token == 64 * short.attention_per_token
    # Per-sequence FLOPs of a step depend on the batch only; the per-token part grows with L.
    seq_only = training_flops(cfg, 2, 4096) - 2 * 4096 * (long.dense_per_token + long.attention_per_token)
    assert seq_only == 2 * 6 * PER_SEQUENCE == training_flops(cfg, 2, 64) - 2 * 64 * (
        short.dense_per_token + short.attention_per_token)
    # Their share of the per-token count falls as 1 / L; the loose count kept it constant.
    assert long.per_token - long.dense_per_token - long.attention_per_token == pytest.approx(
        (short.per_token - short.dense_per_token - short.attention_per_token) / 64)
    assert loose_flops_per_token(cfg, 4096) - long.per_token == pytest.approx(
        6 * PER_SEQUENCE * (1 - 1 / 4096))


def test_which_layers_are_per_sequence():
    names = dict(build_model(_cfg()).named_parameters())
    per_seq = {n for n in names if is_per_sequence(n)}
    assert per_seq == {
        "sigma_map.mlp.0.weight", "sigma_map.mlp.0.bias", "sigma_map.mlp.2.weight",
        "sigma_map.mlp.2.bias", "output_layer.adaLN_modulation.weight",
        "output_layer.adaLN_modulation.bias",
        *(f"blocks.{n}.adaLN_modulation.{w}" for n in range(NB) for w in ("weight", "bias")),
    }


def test_causal_model_has_no_per_sequence_layers():
    cfg = _cfg(causal=True, time_conditioning=False)
    c = flop_count(cfg, 16)
    assert c.per_sequence_params == 0 and c.per_sequence == 0
    assert c.per_token_params == PER_TOKEN
    assert flops_per_token(cfg, 16) == loose_flops_per_token(cfg, 16) == 6 * PER_TOKEN + 12 * NB * 16 * D


def test_small_at_1024_is_about_five_percent_below_the_loose_count():
    cfg = ModelConfig(vocab_size=50257, hidden_size=768, cond_dim=128, n_heads=12, n_blocks=12)
    ratio = flops_per_token(cfg, 1024) / loose_flops_per_token(cfg, 1024)
    assert ratio == pytest.approx(0.95081, abs=1e-5)


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="seq_len"):
        flop_count(_cfg(), 0)
    with pytest.raises(ValueError, match="batch"):
        training_flops(_cfg(), 0, 16)
