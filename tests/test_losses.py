import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from duo.losses import (
    ar_nll,
    distillation_kl,
    mdlm_nelbo,
    reconstruction_nll,
    usdm_nelbo,
    usdm_nelbo_naive,
)
from duo.processes import absorbing


def _batch(K, B=3, L=5, seed=0, dtype=torch.float64, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    log_x = torch.log_softmax(scale * torch.randn(B, L, K, generator=g, dtype=dtype), -1)
    x = torch.randint(0, K, (B, L), generator=g)
    z = torch.where(torch.rand(B, L, generator=g) < 0.5, x, torch.randint(0, K, (B, L), generator=g))
    a = (0.01 + 0.98 * torch.rand(B, 1, generator=g, dtype=dtype))
    da = -(0.5 + torch.rand(B, 1, generator=g, dtype=dtype))
    return log_x, z, x, a, da


@pytest.mark.parametrize("K", [2, 3, 10, 100, 1000])
def test_fast_nelbo_equals_naive_sum(K):
    log_x, z, x, a, da = _batch(K)
    fast = usdm_nelbo(log_x, z, x, a, da)
    naive = usdm_nelbo_naive(log_x, z, x, a, da)
    assert fast.shape == (3, 5)
    assert torch.allclose(fast, naive, atol=1e-12, rtol=0)


@settings(max_examples=80, deadline=None)
@given(K=st.integers(2, 200), seed=st.integers(0, 10_000), scale=st.floats(0.0, 8.0))
def test_nelbo_non_negative(K, seed, scale):
    log_x, z, x, a, da = _batch(K, seed=seed, scale=scale)
    assert bool((usdm_nelbo(log_x, z, x, a, da) >= -1e-12).all())


@pytest.mark.parametrize("K", [2, 17, 5000])
def test_nelbo_zero_at_truth(K):
    _, z, x, a, da = _batch(K)
    truth = torch.log(F.one_hot(x, K).double())
    assert usdm_nelbo(truth, z, x, a, da).abs().max() < 1e-10
    # and strictly positive away from it
    log_x, *_ = _batch(K, scale=1.0)
    assert bool((usdm_nelbo(log_x, z, x, a, da) > 0).all())


@pytest.mark.parametrize("K", [5, 1000, 50257])
def test_nelbo_float32_agrees_with_float64(K):
    log_x, z, x, a, da = _batch(K, B=2, L=3)
    ref = usdm_nelbo(log_x, z, x, a, da)
    got = usdm_nelbo(log_x.float(), z, x, a.float(), da.float())
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), ref, rtol=1e-4, atol=1e-5)


def test_alpha_broadcast_per_token():
    log_x, z, x, a, da = _batch(11)
    per_token = usdm_nelbo(log_x, z, x, a.expand(3, 5), da.expand(3, 5))
    assert torch.allclose(per_token, usdm_nelbo(log_x, z, x, a, da))


def test_nelbo_bad_shapes():
    log_x, z, x, a, da = _batch(6)
    with pytest.raises(ValueError, match="log_x_theta"):
        usdm_nelbo(log_x[0], z, x, a, da)
    with pytest.raises(ValueError, match="x has shape"):
        usdm_nelbo(log_x, z, x[:, :2], a, da)
    with pytest.raises(ValueError, match="alpha_t"):
        usdm_nelbo(log_x, z, x, torch.rand(4, 1), da)


def test_mdlm_nelbo():
    K, mask = 7, 6
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, K - 1, (2, 8), generator=g)
    z = absorbing.sample_zt(x, 0.5, mask, generator=g)
    lp = absorbing.subs_log_probs(torch.randn(2, 8, K, generator=g), z, mask)
    loss = mdlm_nelbo(lp, z, x, torch.full((2, 1), 0.5), torch.full((2, 1), -1.0), mask)
    assert bool((loss >= 0).all())
    assert bool((loss[z != mask] == 0).all())
    expected = -(1.0 / 0.5) * lp.gather(-1, x[..., None]).squeeze(-1)
    assert torch.allclose(loss[z == mask], expected[z == mask])
    truth = absorbing.subs_log_probs(F.one_hot(x, K).float() * 50, z, mask)
    assert mdlm_nelbo(truth, z, x, 0.5, -1.0, mask).max() < 1e-6


def test_ar_nll_and_reconstruction():
    logits = torch.randn(2, 4, 9)
    t = torch.randint(0, 9, (2, 4))
    expected = -torch.log_softmax(logits, -1).gather(-1, t[..., None]).squeeze(-1)
    assert torch.allclose(ar_nll(logits, t), expected, atol=1e-6)
    assert torch.allclose(reconstruction_nll(torch.log_softmax(logits, -1), t), expected, atol=1e-6)


def test_distillation_kl():
    a = torch.log_softmax(torch.randn(2, 3, 10), -1)
    b = torch.log_softmax(torch.randn(2, 3, 10), -1)
    assert distillation_kl(a, a).abs().max() < 1e-6
    rev = (a.exp() * (a - b)).sum(-1)
    fwd = (b.exp() * (b - a)).sum(-1)
    assert torch.allclose(distillation_kl(a, b, "reverse"), rev, atol=1e-6)
    assert torch.allclose(distillation_kl(a, b, "forward"), fwd, atol=1e-6)
    s = a.clone().requires_grad_(True)
    distillation_kl(s, b).sum().backward()
    assert s.grad is not None
    with pytest.raises(ValueError, match="direction"):
        distillation_kl(a, b, "sideways")
