"""The distillation KL from student logits with its hand-written backward, against
autograd on the float64 formula of MATH.md section 6."""

import pytest
import torch

import duo.utils.chunks as chunks
from duo.losses.fused_kl import distillation_kl_from_logits
from duo.losses import distillation_kl


def _reference(s: torch.Tensor, t: torch.Tensor, direction: str) -> torch.Tensor:
    log_p = s.log_softmax(-1)
    if direction == "reverse":
        p = log_p.exp()
        return torch.where(p > 0, p * (log_p - t), 0.0).sum(-1)
    q = t.exp()
    return torch.where(q > 0, q * (t - log_p), 0.0).sum(-1)


def _inputs(K=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = 3 * torch.randn(2, 5, K, generator=g, dtype=torch.float64)
    t = (2 * torch.randn(2, 5, K, generator=g, dtype=torch.float64)).log_softmax(-1)
    s[0, 0, 3] = float("-inf")  # a token the student never predicts ...
    t[0, 0, 3] = float("-inf")  # ... nor the teacher
    t[1, 1, 2] = float("-inf")  # the teacher rules out a token the student allows
    return s.requires_grad_(), t


@pytest.mark.parametrize("direction", ["reverse", "forward"])
@pytest.mark.parametrize("chunk", [None, 3])
def test_value_and_gradient_equal_autograd(direction, chunk, monkeypatch):
    if chunk is not None:
        monkeypatch.setattr(chunks, "CPU_CHUNK", chunk * 9)
    s, t = _inputs()
    ref, got = _reference(s, t, direction), distillation_kl_from_logits(s, t, direction)
    finite = torch.isfinite(ref)  # reverse KL is +inf where the teacher rules out a student token
    assert int((~finite).sum()) == (1 if direction == "reverse" else 0)
    assert torch.equal(torch.isfinite(got), finite)
    assert torch.allclose(got[finite], ref[finite], rtol=1e-12, atol=1e-12)
    w = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * finite
    g_ref, = torch.autograd.grad((torch.where(finite, ref, 0.0) * w).sum(), s)
    g_got, = torch.autograd.grad((torch.where(finite, got, 0.0) * w).sum(), s)
    # Autograd gives NaN for the whole row of a -inf logit (0 * (-inf - -inf)) and of an
    # unused infinite KL; the fused backward gives the gradient itself.
    assert bool(torch.isfinite(g_got).all())
    ok = torch.isfinite(g_ref).all(-1)
    assert int(ok.sum()) >= 8
    assert torch.allclose(g_got[ok], g_ref[ok], rtol=1e-10, atol=1e-12)
    assert float(g_got[0, 0, 3]) == 0.0  # no gradient into a -inf logit
    keep = torch.arange(9) != 3  # that row without the token neither side predicts
    leaf = s.detach()[0, 0, keep].requires_grad_()
    row_ref, = torch.autograd.grad(_reference(leaf, t[0, 0, keep], direction) * w[0, 0], leaf)
    assert torch.allclose(g_got[0, 0, keep], row_ref, rtol=1e-10, atol=1e-12)
    if direction == "reverse":
        assert not bool(g_got[1, 1].any())  # unused infinite KL: no gradient


@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_gradcheck(direction):
    g = torch.Generator().manual_seed(2)
    s = torch.randn(2, 3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 6, generator=g, dtype=torch.float64).log_softmax(-1)
    assert torch.autograd.gradcheck(lambda x: distillation_kl_from_logits(x, t, direction), (s,))


def test_float32_matches_the_plain_loss():
    g = torch.Generator().manual_seed(3)
    s = 4 * torch.randn(4, 8, 3000, generator=g)
    t = (4 * torch.randn(4, 8, 3000, generator=g)).log_softmax(-1)
    for direction in ("reverse", "forward"):
        got = distillation_kl_from_logits(s, t, direction)
        plain = distillation_kl(s.log_softmax(-1), t, direction)
        exact = _reference(s.double(), t.double(), direction)
        assert float((got.double() - exact).abs().max()) <= 2 * float((plain.double() - exact).abs().max()) + 1e-6


def test_bad_direction_and_shapes():
    s, t = _inputs()
    with pytest.raises(ValueError, match="valid: 'reverse', 'forward'"):
        distillation_kl_from_logits(s, t, "both")
    with pytest.raises(ValueError, match="differ in shape"):
        distillation_kl_from_logits(s, t[..., :4])
