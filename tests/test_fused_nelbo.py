"""The NELBO from logits with its hand-written backward against autograd on usdm_nelbo."""

import pytest
import torch

import duo.utils.chunks as chunks
from duo.losses.fused_nelbo import usdm_nelbo_from_logits
from duo.losses import usdm_nelbo
from duo.utils.memory import saved_tensor_bytes


def _inputs(K, B=3, L=6, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (3.0 * torch.randn(B, L, K, generator=g, dtype=dtype)).requires_grad_()
    x = torch.randint(0, K, (B, L), generator=g)
    z = torch.where(torch.rand(B, L, generator=g) < 0.4, x, torch.randint(0, K, (B, L), generator=g))
    a = torch.tensor([[1e-4], [0.5], [0.9999]], dtype=torch.float64)[:B]
    da = -(0.5 + torch.rand(B, 1, generator=g, dtype=torch.float64))
    return logits, z, x, a, da


@pytest.mark.parametrize("K", [2, 7, 300])
@pytest.mark.parametrize("chunk", [None, 25])
def test_value_and_gradient_equal_autograd_through_log_softmax(K, chunk, monkeypatch):
    """Over alpha from 1e-4 to 1 - 1e-4, with z_t = x and z_t != x, one chunk or many."""
    if chunk is not None:
        monkeypatch.setattr(chunks, "CPU_CHUNK", chunk * K)  # a few rows per chunk
    logits, z, x, a, da = _inputs(K)
    weights = torch.randn(z.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = usdm_nelbo(logits.log_softmax(-1), z, x, a, da)
    got = usdm_nelbo_from_logits(logits, z, x, a, da)
    assert torch.allclose(got, ref, rtol=1e-10, atol=1e-10)
    g_ref, = torch.autograd.grad((ref * weights).sum(), logits)
    g_got, = torch.autograd.grad((got * weights).sum(), logits)
    assert torch.allclose(g_got, g_ref, rtol=1e-9, atol=1e-9 * float(g_ref.abs().max()))


@pytest.mark.parametrize("chunk", [None, 4])
def test_padded_logits_give_the_same_loss_and_zero_gradient_on_the_padding(chunk, monkeypatch):
    """``vocab_size=K`` of W columns (the padded CUDA output layer's logits): the padding
    is never read (NaN here) and gets gradient exactly 0."""
    if chunk is not None:
        monkeypatch.setattr(chunks, "CPU_CHUNK", chunk * 300)
    logits, z, x, a, da = _inputs(300)
    padded = torch.cat([logits.detach(), torch.full((3, 6, 20), float("nan"), dtype=torch.float64)], -1)
    padded.requires_grad_()
    weights = torch.randn(z.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = usdm_nelbo_from_logits(logits, z, x, a, da)
    got = usdm_nelbo_from_logits(padded, z, x, a, da, vocab_size=300)
    assert torch.equal(got, ref)
    g_ref, = torch.autograd.grad((ref * weights).sum(), logits)
    g_got, = torch.autograd.grad((got * weights).sum(), padded)
    assert torch.equal(g_got[..., :300], g_ref) and torch.equal(g_got[..., 300:], torch.zeros(3, 6, 20, dtype=torch.float64))
    small = torch.randn(2, 3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    small[..., 5:] = float("nan")  # 5 vocabulary columns of 8
    a2 = torch.tensor([[0.3], [0.8]], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda t: usdm_nelbo_from_logits(t, z[:2, :3] % 5, x[:2, :3] % 5, a2, da[:2], vocab_size=5),
        (small.requires_grad_(),))
    with pytest.raises(ValueError, match="vocab_size=400"):
        usdm_nelbo_from_logits(padded, z, x, a, da, vocab_size=400)


def test_gradcheck():
    logits, z, x, _, da = _inputs(5, B=2, L=3)
    a = torch.tensor([[0.3], [0.8]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: usdm_nelbo_from_logits(t, z, x, a, da), (logits,))


def test_float32_is_as_accurate_as_the_plain_float32_loss():
    logits, z, x, a, da = _inputs(1000, dtype=torch.float32)
    exact = usdm_nelbo(logits.double().log_softmax(-1), z, x, a, da)

    def error(t):
        return float(((t.double() - exact) / exact.abs().clamp_min(1.0)).abs().max())

    got = usdm_nelbo_from_logits(logits, z, x, a, da)
    assert got.dtype == torch.float32
    assert error(got) <= 2 * error(usdm_nelbo(logits.log_softmax(-1), z, x, a, da)) + 1e-6


def test_backward_keeps_only_the_logits():
    logits, z, x, a, da = _inputs(4000, dtype=torch.float32)
    size = logits.numel() * 4
    fused = saved_tensor_bytes(lambda: usdm_nelbo_from_logits(logits, z, x, a, da))
    plain = saved_tensor_bytes(lambda: usdm_nelbo(logits.log_softmax(-1), z, x, a, da))
    assert size <= fused < 1.1 * size
    assert plain > 2.5 * size


@pytest.mark.parametrize("alpha", [1e-5, 0.5])
def test_float32_gradient_at_large_logits_is_as_accurate_as_autograd(alpha):
    """Logits shifted by +100: the row's probabilities must not inherit the rounding of a
    log-sum-exp near 100 (amplified by 1 / r at small alpha)."""
    g = torch.Generator().manual_seed(0)
    base = 3 * torch.randn(2, 8, 257, generator=g, dtype=torch.float64) + 100
    x = torch.randint(0, 257, (2, 8), generator=g)
    z = torch.randint(0, 257, (2, 8), generator=g)
    a = torch.full((2, 1), alpha, dtype=torch.float64)
    da = -torch.ones(2, 1, dtype=torch.float64)

    def grad(fn, logits):
        leaf = logits.clone().requires_grad_()
        return torch.autograd.grad(fn(leaf).sum(), leaf)[0].double()

    exact = grad(lambda t: usdm_nelbo(t.log_softmax(-1), z, x, a, da), base)
    plain = grad(lambda t: usdm_nelbo(t.log_softmax(-1), z, x, a, da), base.float())
    fused = grad(lambda t: usdm_nelbo_from_logits(t, z, x, a, da), base.float())
    scale = float(exact.abs().max())
    # One log-sum-exp per token instead gave 36x the plain error at alpha = 1e-5.
    assert float((fused - exact).abs().max()) <= 5 * float((plain - exact).abs().max()) + 1e-6 * scale


def test_masked_logits_and_alpha_gradients():
    logits, z, x, a, da = _inputs(9)
    with torch.no_grad():
        logits[..., 4] = float("-inf")  # a token that is never predicted
    z, x = z.clamp_max(3), x.clamp_max(3)
    ref = usdm_nelbo(logits.log_softmax(-1), z, x, a, da)
    got = usdm_nelbo_from_logits(logits, z, x, a, da)
    assert torch.allclose(got, ref, rtol=1e-10, atol=1e-10)
    g_ref, = torch.autograd.grad(ref.sum(), logits)
    g_got, = torch.autograd.grad(got.sum(), logits)
    assert torch.allclose(g_got, g_ref, rtol=1e-9, atol=1e-9 * float(g_ref.abs().max()))
    with pytest.raises(ValueError, match="only with respect to the logits"):
        usdm_nelbo_from_logits(logits, z, x, a.clone().requires_grad_(), da)
