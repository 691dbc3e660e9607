import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy import integrate, stats

from duo.duality import (
    alpha_tilde,
    argmax_probability,
    diffusion_transform,
    gamma_from_alpha,
    gamma_from_alpha_tilde,
    gamma_range,
    sigma_tilde,
)


def quad_prob(gamma: float, K: int) -> float:
    """P(mu) by adaptive quadrature, guided by breakpoints near mu and near the step
    of Phi^(K-1) at the inverse normal CDF of 1 - 1/K."""
    mu = math.exp(-gamma / 2)
    z_star = stats.norm.isf(1.0 / K)

    def f(z):
        return stats.norm.pdf(z - mu) * math.exp((K - 1) * stats.norm.logcdf(z))

    points = sorted({mu - 8, mu - 2, mu, mu + 2, mu + 8, z_star - 2, z_star, z_star + 2})
    edges = [-np.inf, *points, np.inf]
    return sum(
        integrate.quad(f, a, b, epsabs=1e-14, epsrel=1e-13, limit=200)[0]
        for a, b in zip(edges[:-1], edges[1:])
    )


@pytest.mark.parametrize("K", [2, 7, 1000, 50257, 262144])
def test_T_matches_adaptive_quadrature(K):
    gammas = np.linspace(-8.0, 4.0, 25)
    expected = np.array([(K * quad_prob(g, K) - 1) / (K - 1) for g in gammas])
    got = diffusion_transform(torch.tensor(gammas), K).alpha.numpy()
    assert np.abs(got - expected).max() <= 1e-9


def test_K2_closed_form():
    # For K = 2, P = Pr[N(mu, 1) > N(0, 1)] = Phi(mu / sqrt 2).
    g = torch.linspace(-8, 4, 50, dtype=torch.float64)
    mu = torch.exp(-g / 2)
    expected = torch.special.ndtr(mu / math.sqrt(2))
    assert torch.allclose(argmax_probability(g, 2).prob, expected, atol=1e-13, rtol=0)


def test_paper_reference_values():
    a = diffusion_transform(torch.tensor([-3.55, -1.85], dtype=torch.float64), 50257).alpha
    assert a.tolist() == pytest.approx([0.9455, 0.0493], abs=5e-5)
    a = diffusion_transform(torch.tensor([-3.5, -1.75], dtype=torch.float64), 30522).alpha
    assert a.tolist() == pytest.approx([0.9417, 0.0487], abs=5e-5)


@pytest.mark.parametrize("K,gamma", [(3, -1.0), (10, 0.5), (10, -2.5), (50, -3.0)])
def test_T_against_monte_carlo(K, gamma):
    gen = torch.Generator().manual_seed(K)
    n = 400_000
    g = torch.tensor(gamma, dtype=torch.float64)
    w = sigma_tilde(g) * torch.randn(n, K, generator=gen, dtype=torch.float64)
    w[:, 0] += alpha_tilde(g)
    freq = (w.argmax(-1) == 0).double().mean().item()
    p = argmax_probability(g, K).prob.item()
    assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-4


@pytest.mark.parametrize("K", [2, 100, 50257])
def test_derivative_matches_finite_differences_and_autograd(K):
    g = torch.linspace(-6, 2, 17, dtype=torch.float64)
    h = 1e-5
    fd = (diffusion_transform(g + h, K).alpha - diffusion_transform(g - h, K).alpha) / (2 * h)
    out = diffusion_transform(g, K)
    assert torch.allclose(out.dalpha_dgamma, fd, atol=1e-8, rtol=1e-6)
    g_req = g.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(diffusion_transform(g_req, K).alpha.sum(), g_req)
    assert torch.allclose(grad, out.dalpha_dgamma)


@settings(max_examples=30, deadline=None)
@given(K=st.integers(2, 300_000), g1=st.floats(-8, 4), g2=st.floats(-8, 4))
def test_T_decreasing_in_gamma_and_bounded(K, g1, g2):
    lo, hi = sorted((g1, g2))
    a = diffusion_transform(torch.tensor([lo, hi], dtype=torch.float64), K).alpha
    assert 0.0 <= float(a[1]) <= float(a[0]) <= 1.0 + 1e-12
    if hi - lo > 1e-3 and float(a[0]) < 1.0 - 1e-9:  # strict where T is not saturated at 1
        assert float(a[1]) < float(a[0])


def test_T_limits():
    a = diffusion_transform(torch.tensor([-40.0, 40.0], dtype=torch.float64), 1000).alpha
    assert float(a[0]) == pytest.approx(1.0, abs=1e-12)
    assert float(a[1]) == pytest.approx(0.0, abs=1e-6)


@settings(max_examples=30, deadline=None)
@given(K=st.integers(2, 300_000), lo=st.floats(0.01, 0.45), hi=st.floats(0.55, 0.99))
def test_gamma_range_round_trips(K, lo, hi):
    g_min, g_max = gamma_range(K, lo, hi)
    assert g_min < g_max
    a = diffusion_transform(torch.tensor([g_min, g_max], dtype=torch.float64), K).alpha
    assert a.tolist() == pytest.approx([hi, lo], abs=1e-9)


def test_gamma_range_paper_vocabularies():
    assert gamma_range(50257) == pytest.approx((-3.55, -1.85), abs=0.02)
    assert gamma_range(30522) == pytest.approx((-3.5, -1.75), abs=0.03)


@settings(max_examples=50, deadline=None)
@given(a=st.floats(0.01, 0.99))
def test_gamma_alpha_tilde_round_trip(a):
    at = torch.tensor(a, dtype=torch.float64)
    g = gamma_from_alpha_tilde(at)
    assert float(alpha_tilde(g)) == pytest.approx(a, rel=1e-12)
    assert float(alpha_tilde(g) ** 2 + sigma_tilde(g) ** 2) == pytest.approx(1.0)


def test_dtype_device_and_shape_preserved():
    g = torch.full((2, 3), -2.0)
    out = diffusion_transform(g, 500)
    assert out.alpha.shape == (2, 3) and out.alpha.dtype == torch.float32
    assert out.dalpha_dgamma.shape == (2, 3)


@pytest.mark.parametrize("bad", [1, 0, -5, 2.5, True])
def test_bad_vocab_size(bad):
    with pytest.raises(ValueError, match="vocab_size"):
        diffusion_transform(torch.tensor([0.0]), bad)


def test_nan_gamma_rejected():
    with pytest.raises(ValueError, match="gamma"):
        diffusion_transform(torch.tensor([0.0, float("nan")]), 10)


def test_bad_alpha_interval():
    with pytest.raises(ValueError, match="alpha"):
        gamma_range(100, 0.9, 0.1)
    with pytest.raises(ValueError, match="alpha"):
        gamma_from_alpha(torch.tensor([1.5]), 100)


def test_duality_schedule_protocol():
    from duo.duality import DualitySchedule

    s = DualitySchedule.from_alpha_interval(1000)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    a = s.alpha(t)
    assert a.tolist() == pytest.approx([0.95, float(a[1]), 0.05], abs=1e-9)
    h = 1e-6
    fd = (s.alpha(t[1:2] + h) - s.alpha(t[1:2] - h)) / (2 * h)
    assert float(s.dalpha(t[1:2])) == pytest.approx(float(fd), rel=1e-6)
    assert float(s.t_from_alpha(a[1:2])) == pytest.approx(0.3, abs=1e-9)
    with pytest.raises(ValueError, match="gamma range"):
        DualitySchedule(10, 1.0, -1.0)


def test_polynomial_fit_of_alpha():
    from duo.duality import DualitySchedule, PolynomialSchedule

    sched = DualitySchedule.from_alpha_interval(50257)
    fit = PolynomialSchedule.fit(sched, degree=9)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert (fit.alpha(t) - sched.alpha(t)).abs().max() < 1e-4
    assert (fit.dalpha(t[5:-5]) - sched.dalpha(t[5:-5])).abs().max() < 5e-3
    h = 1e-6
    fd = (fit.alpha(t[1:-1] + h) - fit.alpha(t[1:-1] - h)) / (2 * h)
    assert torch.allclose(fit.dalpha(t[1:-1]), fd, atol=1e-6)
