"""DiT backbone: published checkpoint layout, input kinds, conditioning, causality."""

from __future__ import annotations

import math

import pytest
import torch

from duo.models import (
    MODEL_PRESETS, DiT, ModelConfig, build_model, count_parameters, flops_per_token,
    get_model_config, strip_prefix, timestep_embedding,
)
from duo.models.layers import Rotary, apply_rotary

K = 37  # tiny vocabulary for fast tests


def _cfg(**overrides) -> ModelConfig:
    base = dict(vocab_size=K, hidden_size=32, cond_dim=16, n_heads=4, n_blocks=2,
                max_seq_len=16, dropout=0.0)
    base.update(overrides)
    return ModelConfig(**base).validate()


def _randomised(cfg: ModelConfig, seed: int = 0) -> DiT:
    """A model whose zero-initialised layers (adaLN, output) are random too, so that
    conditioning and attention actually reach the logits."""
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, 0.3)
    return model


def published_layout(K: int, D: int, C: int, H: int, N: int) -> dict[str, tuple[int, ...]]:
    """The key -> shape table from DESIGN.md, written out independently of the code."""
    layout = {
        "vocab_embed.embedding": (K, D),
        "sigma_map.mlp.0.weight": (C, 256), "sigma_map.mlp.0.bias": (C,),
        "sigma_map.mlp.2.weight": (C, C), "sigma_map.mlp.2.bias": (C,),
        "rotary_emb.inv_freq": (D // H // 2,),
        "output_layer.norm_final.weight": (D,),
        "output_layer.linear.weight": (K, D), "output_layer.linear.bias": (K,),
        "output_layer.adaLN_modulation.weight": (2 * D, C),
        "output_layer.adaLN_modulation.bias": (2 * D,),
    }
    for n in range(N):
        p = f"blocks.{n}."
        layout.update({
            p + "norm1.weight": (D,),
            p + "attn_qkv.weight": (3 * D, D),
            p + "attn_out.weight": (D, D),
            p + "norm2.weight": (D,),
            p + "mlp.0.weight": (4 * D, D), p + "mlp.0.bias": (4 * D,),
            p + "mlp.2.weight": (D, 4 * D), p + "mlp.2.bias": (D,),
            p + "adaLN_modulation.weight": (6 * D, C),
            p + "adaLN_modulation.bias": (6 * D,),
        })
    return layout


def test_small_preset_matches_published_layout_exactly():
    cfg = get_model_config("small")
    assert (cfg.vocab_size, cfg.hidden_size, cfg.cond_dim, cfg.n_heads, cfg.n_blocks) == (
        50258, 768, 128, 12, 12)
    with torch.device("meta"):  # no 170M allocation
        model = DiT(cfg)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == published_layout(K=50258, D=768, C=128, H=12, N=12)
    assert 165e6 < count_parameters(model) < 175e6  # "170M"


def test_causal_layout_has_no_time_conditioning_layers():
    model = build_model(_cfg(causal=True, time_conditioning=False))
    keys = set(model.state_dict())
    assert not any("sigma_map" in k or "adaLN_modulation" in k for k in keys)
    full = published_layout(K=K, D=32, C=16, H=4, N=2)
    assert keys == {k for k in full if "sigma_map" not in k and "adaLN" not in k}


def test_zero_init_gives_zero_logits():
    model = build_model(_cfg()).eval()
    out = model(torch.randint(0, K, (2, 5)), torch.rand(2))
    assert out.dtype == torch.float32 and out.shape == (2, 5, K)
    assert torch.all(out == 0)


def test_state_dict_round_trip_strict_and_prefixed():
    cfg = _cfg()
    a, b = _randomised(cfg, seed=0), _randomised(cfg, seed=1)
    ids, sigma = torch.randint(0, K, (3, 9)), torch.rand(3)
    assert not torch.allclose(a(ids, sigma), b(ids, sigma))
    lightning = {f"backbone.{k}": v for k, v in a.state_dict().items()}
    lightning["noise.sigma_min"] = torch.tensor(0.0)  # unrelated key in a Lightning ckpt
    b.load_state_dict(strip_prefix(lightning, "backbone."), strict=True)
    assert torch.equal(a(ids, sigma), b(ids, sigma))
    assert strip_prefix(a.state_dict(), "backbone.").keys() == a.state_dict().keys()


def test_input_kinds_agree():
    model = _randomised(_cfg())
    ids, sigma = torch.randint(0, K, (2, 7)), torch.rand(2)
    ref = model(ids, sigma)
    one_hot = torch.nn.functional.one_hot(ids, K).float()
    torch.testing.assert_close(model(one_hot / 1e-4, sigma), ref, atol=1e-5, rtol=1e-5)
    ones = torch.ones(2, 7, 1)
    torch.testing.assert_close(model((ids[..., None], ones), sigma), ref, atol=1e-5, rtol=1e-5)
    others = torch.randint(0, K, (2, 7, 2))
    idx3 = torch.cat([others[..., :1], ids[..., None], others[..., 1:]], dim=-1)
    w3 = torch.tensor([0.0, 1.0, 0.0]).expand(2, 7, 3)
    torch.testing.assert_close(model((idx3, w3), sigma), ref, atol=1e-5, rtol=1e-5)


def test_logit_input_mixes_embeddings():
    """A uniform softmax embeds as the mean embedding row, like weights 1/K on all ids."""
    model = _randomised(_cfg())
    sigma = torch.rand(1)
    all_ids = torch.arange(K).expand(1, 3, K)
    via_topk = model((all_ids, torch.full((1, 3, K), 1.0 / K)), sigma)
    torch.testing.assert_close(model(torch.zeros(1, 3, K), sigma), via_topk,
                               atol=1e-5, rtol=1e-5)


def test_output_depends_on_sigma():
    model = _randomised(_cfg())
    ids = torch.randint(0, K, (2, 6))
    assert not torch.allclose(model(ids, torch.tensor([0.1, 0.1])),
                              model(ids, torch.tensor([2.0, 2.0])))
    # Per-row conditioning: changing row 1's sigma leaves row 0 alone.
    out1 = model(ids, torch.tensor([0.1, 0.1]))
    out2 = model(ids, torch.tensor([0.1, 3.0]))
    torch.testing.assert_close(out1[0], out2[0])


def test_without_time_conditioning_sigma_is_ignored():
    model = _randomised(_cfg(time_conditioning=False))
    assert "sigma_map.mlp.0.weight" in model.state_dict()  # MDLM layout keeps sigma_map
    ids = torch.randint(0, K, (2, 6))
    torch.testing.assert_close(model(ids), model(ids, torch.tensor([1.0, 2.0])))


@pytest.mark.parametrize("causal", [True, False])
def test_causality(causal):
    model = _randomised(_cfg(causal=causal, time_conditioning=not causal))
    sigma = None if causal else torch.rand(2)
    ids = torch.randint(0, K, (2, 10))
    changed = ids.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % K
    a, b = model(ids, sigma), model(changed, sigma)
    prefix_same = torch.allclose(a[:, :6], b[:, :6], atol=1e-6)
    assert prefix_same == causal
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_rotary_scores_depend_only_on_relative_position():
    rotary = Rotary(head_dim=8)
    cos, sin = rotary.cos_sin(32, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)  # float32 cos/sin: some draws miss float64 tolerances
    q, k = torch.randn(8, dtype=torch.float64, generator=g), torch.randn(8, dtype=torch.float64, generator=g)

    def at(vec, pos):  # place one vector at position pos, shaped (B=1, L=1, H=1, d)
        return apply_rotary(vec.view(1, 1, 1, 8), cos[pos:pos + 1].double(),
                            sin[pos:pos + 1].double()).flatten()

    score = torch.dot(at(q, 3), at(k, 7))
    for shift in (1, 5, 20):
        torch.testing.assert_close(torch.dot(at(q, 3 + shift), at(k, 7 + shift)), score)
    torch.testing.assert_close(at(q, 11).norm(), q.norm())  # a rotation
    torch.testing.assert_close(at(q, 0), q)  # position 0 is the identity


def test_rotary_is_rotate_half_not_interleaved():
    """Dimension i pairs with i + d/2 and turns by angle pos * inv_freq[i]."""
    rotary = Rotary(head_dim=8)
    cos, sin = rotary.cos_sin(4, torch.device("cpu"))
    x = torch.randn(1, 4, 1, 8)
    out = apply_rotary(x, cos, sin)
    pos, i = 3, 1
    angle = pos * rotary.inv_freq[i]
    a, b = x[0, pos, 0, i], x[0, pos, 0, i + 4]
    torch.testing.assert_close(out[0, pos, 0, i], a * torch.cos(angle) - b * torch.sin(angle))
    torch.testing.assert_close(out[0, pos, 0, i + 4], b * torch.cos(angle) + a * torch.sin(angle))


def test_rotary_of_queries_and_keys_at_once_matches_the_textbook_form():
    """The fused form equals ``x cos + rotate_half(x) sin``, per tensor or stacked (B, L, 2, H, d)."""
    rotary = Rotary(head_dim=8)
    cos, sin = rotary.cos_sin(5, torch.device("cpu"))
    qk = torch.randn(2, 5, 2, 3, 8)

    def textbook(x):
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos[None, :, None] + torch.cat((-x2, x1), dim=-1) * sin[None, :, None]

    both = apply_rotary(qk, cos, sin)
    for j in range(2):
        assert torch.equal(both[:, :, j], textbook(qk[:, :, j]))  # the same roundings
        torch.testing.assert_close(apply_rotary(qk[:, :, j], cos, sin), both[:, :, j])


def test_bidirectional_model_is_position_aware():
    """Rotary is the only position signal: reversing the input must not simply reverse
    the output (it would for attention without positions)."""
    model = _randomised(_cfg())
    ids, sigma = torch.randint(0, K, (1, 8)), torch.rand(1)
    assert not torch.allclose(model(ids.flip(1), sigma), model(ids, sigma).flip(1), atol=1e-4)


def test_rotary_buffer_values():
    model = build_model(_cfg())
    d = 32 // 4
    expected = torch.tensor([10000.0 ** (-2 * i / d) for i in range(d // 2)])
    torch.testing.assert_close(model.rotary_emb.inv_freq, expected)


def test_timestep_embedding_formula_cos_then_sin():
    sigma = torch.tensor([0.0, 0.7, 3.0])
    emb = timestep_embedding(sigma)
    assert emb.shape == (3, 256)
    for b, s in enumerate(sigma.tolist()):
        for j in (0, 1, 57, 127):
            f = math.exp(-math.log(10000.0) * j / 128)
            assert emb[b, j].item() == pytest.approx(math.cos(s * f), abs=1e-6)
            assert emb[b, 128 + j].item() == pytest.approx(math.sin(s * f), abs=1e-6)


def test_dropout_only_in_training():
    model = _randomised(_cfg(dropout=0.5))
    ids, sigma = torch.randint(0, K, (2, 6)), torch.rand(2)
    torch.testing.assert_close(model(ids, sigma), model(ids, sigma))
    model.train()
    assert not torch.allclose(model(ids, sigma), model(ids, sigma))


def test_cpu_bf16_autocast_runs_close():
    model = _randomised(_cfg())
    ids, sigma = torch.randint(0, K, (2, 6)), torch.rand(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, sigma)
    assert out.dtype == torch.float32
    ref = model(ids, sigma)
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


@pytest.mark.parametrize("bad, match", [
    (lambda: torch.randint(0, K, (2, 17)), "sequence length 17"),
    (lambda: torch.zeros(2, 6, K + 1), f"{K + 1} classes"),
    (lambda: torch.zeros(2, 6, 4, 4), "rank 4"),
    (lambda: torch.zeros(2, 6), "integer token ids"),
    (lambda: torch.zeros(2, 6, K, dtype=torch.long), "float logits"),
    (lambda: torch.full((2, 6), K), "vocabulary has 37"),
    (lambda: (torch.zeros(2, 6, 3, dtype=torch.long), torch.ones(2, 6, 2)), "must both"),
    (lambda: (torch.full((2, 6, 1), -1), torch.ones(2, 6, 1)), r"span \[-1"),
])
def test_bad_inputs_raise_one_line_errors(bad, match):
    model = build_model(_cfg())
    with pytest.raises(ValueError, match=match) as info:
        model(bad(), torch.rand(2))
    assert "\n" not in str(info.value)


def test_bad_sigma():
    model = build_model(_cfg())
    ids = torch.randint(0, K, (2, 6))
    with pytest.raises(ValueError, match="sigma is required"):
        model(ids)
    with pytest.raises(ValueError, match=r"shape \(2, 1\)"):
        model(ids, torch.rand(2, 1))


@pytest.mark.parametrize("overrides, match", [
    (dict(hidden_size=30), "not divisible"),
    (dict(hidden_size=12, n_heads=4), "must be even"),
    (dict(n_blocks=0), "n_blocks=0"),
    (dict(dropout=1.0), "dropout"),
    (dict(causal=True), "time_conditioning=False"),
])
def test_config_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        _cfg(**overrides)


def test_presets_registry():
    with pytest.raises(ValueError, match="valid presets: medium, small, tiny"):
        get_model_config("huge")
    with pytest.raises(ValueError, match="unknown model config field"):
        get_model_config("tiny", width=3)
    cfg = get_model_config("tiny", vocab_size=4096)
    assert cfg.max_seq_len >= 128 and cfg.dropout == 0.0
    assert MODEL_PRESETS["tiny"].vocab_size == 4096  # presets are not mutated by overrides
    get_model_config("tiny", vocab_size=10)
    assert MODEL_PRESETS["tiny"].vocab_size == 4096


def test_flops_per_token_formula():
    cfg = _cfg()
    n = count_parameters(build_model(cfg), exclude_embeddings=True)
    assert n == count_parameters(build_model(cfg)) - K * 32
    # strict count (tests/test_flops.py): per-sequence layers (adaLN, time MLP) are not per-token work
    assert flops_per_token(cfg, 16) < 6 * n + 12 * 2 * 16 * 32


def test_model_cast_to_bf16_runs():
    """Inference with bf16 weights and no autocast: LayerNorm returns the input dtype."""
    model = _randomised(_cfg())
    ids, sigma = torch.randint(0, K, (2, 6)), torch.rand(2)
    ref = model(ids, sigma)
    out = model.to(torch.bfloat16)(ids, sigma)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()


def test_aligned_linear_equals_linear_with_a_padded_row_stride():
    # The output layer on CUDA pads its rows to a multiple of 64 for aligned GEMMs: values
    # and gradients must be those of the plain linear layer.
    from duo.models.layers import aligned_linear

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(101, 16, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(101, generator=g, dtype=torch.float64, requires_grad=True)
    out = aligned_linear(x, w, b, 64)
    assert out.shape == (3, 5, 101) and out.stride(-2) == 128  # a view of (3, 5, 128)
    ref = torch.nn.functional.linear(x, w, b)
    torch.testing.assert_close(out, ref)
    weights = torch.randn(3, 5, 101, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((out * weights).sum(), (x, w, b))
    for got, want in zip(grads, torch.autograd.grad((ref * weights).sum(), (x, w, b))):
        torch.testing.assert_close(got, want)
    assert aligned_linear(x, w[:64], b[:64], 64).is_contiguous()  # no padding needed


def test_compiled_backbone_runs_eagerly_without_gradients():
    # trainer.compile=true compiles for training; validation and sampling (no gradients,
    # new batch sizes, inference mode) must not recompile the network each time.
    from duo.models import compile_backbone

    captured = []

    def backend(gm, example_inputs):
        captured.append(gm)
        return gm.forward

    model = _randomised(_cfg())
    ids = torch.randint(0, model.config.vocab_size, (2, 8))
    sigma = torch.rand(2)
    with torch.no_grad():
        expected = model(ids, sigma)
    compile_backbone(model, backend=backend)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, sigma), expected)
    with torch.inference_mode():
        model(ids[:1], sigma[:1])
    assert captured == []
    logits = model(ids, sigma)  # with gradients: the compiled graphs
    assert len(captured) == 2  # hidden and output_layer.project
    torch.testing.assert_close(logits.detach(), expected, rtol=1e-5, atol=1e-6)
