"""Gaussian latents, the full and top-k relaxations, and coupled pairs (MATH.md 3-6).

Monte Carlo checks use fixed seeds and tolerances of 5 standard errors (or the stated
KS-style bound), so a correct sampler fails with negligible probability.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from scipy import integrate, stats

from duo import relaxation as R
from duo.duality import argmax_probability, diffusion_transform, gamma_range


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def p_correct(gamma: float, K: int) -> float:
    return float(argmax_probability(torch.tensor(gamma, dtype=torch.float64), K).prob)


def assert_frequency(hits: torch.Tensor, p: float, what: str) -> None:
    n = hits.numel()
    freq = hits.double().mean().item()
    se = math.sqrt(p * (1 - p) / n)
    assert abs(freq - p) < 5 * se + 1e-12, f"{what}: frequency {freq:.5f} vs {p:.5f} (se {se:.1e})"


def assert_uniform(values: torch.Tensor, support: list[int], what: str) -> None:
    """Chi-square goodness of fit of ``values`` to the uniform law on ``support``."""
    counts = torch.stack([(values == v).sum() for v in support]).double()
    assert int(counts.sum()) == values.numel(), f"{what}: values outside the support"
    expected = counts.sum() / len(support)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    p_value = stats.chi2.sf(chi2, len(support) - 1)
    assert p_value > 1e-5, f"{what}: chi2 p-value {p_value:.2e}, counts {counts.tolist()}"


# ----------------------------------------------------------------------------
# tau -> 0


def test_full_relaxation_logits_are_w_over_tau_and_tend_to_the_argmax_one_hot():
    K = 50
    x = torch.randint(0, K, (8, 64), generator=gen(1))
    gamma = torch.linspace(-3, 1, 8)[:, None]
    w = R.gaussian_latents(x, gamma, K, generator=gen(2))
    hot = F.one_hot(w.argmax(-1), K).float()
    errors = []
    for tau in [1e-1, 1e-2, 1e-3, 1e-4]:
        out = R.full_relaxation(x, gamma, K, tau, generator=gen(2))
        assert torch.equal(out.z_t, w.argmax(-1))
        torch.testing.assert_close(out.model_input, w / tau)
        errors.append((torch.softmax(out.model_input, -1) - hot).abs().max(-1).values.mean().item())
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-2
    exact = R.full_relaxation(x, gamma, K, 0.0, generator=gen(2))
    assert torch.equal(exact.z_t, w.argmax(-1))
    assert torch.isfinite(exact.model_input).all()
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert torch.equal(torch.softmax(exact.model_input.to(dtype), -1), hot.to(dtype))


def test_topk_weights_tend_to_the_one_hot_of_z_t():
    K, k = 1000, 3
    x = torch.randint(0, K, (8, 64), generator=gen(3))
    gamma = torch.linspace(-3, 0, 8)[:, None]
    errors = []
    for tau in [1e-1, 1e-2, 1e-3, 1e-4, 0.0]:
        (idx, wts), z = R.topk_relaxation(x, gamma, K, tau, k, generator=gen(4))
        hot = (idx == z[..., None]).float()
        assert torch.equal(hot.sum(-1), torch.ones_like(z, dtype=torch.float32))
        errors.append((wts - hot).abs().max(-1).values.mean().item())
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-2] < 1e-2 and errors[-1] == 0.0


# ----------------------------------------------------------------------------
# Law of argmax (MATH.md section 3)


@pytest.mark.parametrize("K", [10, 50])
def test_argmax_frequency_matches_duality_for_every_sampler(K):
    g = gen(K)
    x = torch.randint(0, K, (500, 200), generator=g)
    for gamma in [-2.5, -0.5, 1.0]:
        p = p_correct(gamma, K)
        samplers = {
            "topk": lambda: R.topk_relaxation(x, gamma, K, 1e-2, min(3, K - 1), generator=g).z_t,
            "full": lambda: R.full_relaxation(x, gamma, K, 1e-2, generator=g).z_t,
            "gaussian": lambda: R.sample_zt_gaussian(x, gamma, K, g),
            "pair_t": lambda: R.coupled_pair(x, gamma, gamma - 1.0, K, generator=g).z_t,
            "pair_s": lambda: R.coupled_pair(x, gamma + 1.0, gamma, K, generator=g).z_s,
        }
        for name, sample in samplers.items():
            assert_frequency(sample() == x, p, f"{name} K={K} gamma={gamma}")


@pytest.mark.parametrize("K", [10, 50])
def test_wrong_tokens_are_uniform(K):
    g = gen(100 + K)
    x0 = K // 3
    x = torch.full((400, 250), x0)
    wrong = [v for v in range(K) if v != x0]
    gamma = 0.0
    for name, z in {
        "topk": R.topk_relaxation(x, gamma, K, 0.1, min(4, K - 1), generator=g).z_t,
        "full": R.full_relaxation(x, gamma, K, 0.1, generator=g).z_t,
        "gaussian": R.sample_zt_gaussian(x, gamma, K, g),
        "pair_s": R.coupled_pair(x, gamma + 0.5, gamma, K, generator=g).z_s,
    }.items():
        assert_uniform(z[z != x0], wrong, f"{name} K={K}")


def test_topk_indices_are_distinct_wrong_tokens_and_uniform():
    K, k = 12, 5
    g = gen(7)
    x = torch.randint(0, K, (300, 100), generator=g)
    lat = R.topk_latents(x, -1.0, K, k, generator=g)
    idx = lat.indices
    assert torch.equal(idx[..., 0], x)
    assert not (idx[..., 1:] == x[..., None]).any()
    assert (idx.sort(-1).values.diff(dim=-1) > 0).all()  # distinct
    assert (lat.values[..., 1:].diff(dim=-1) <= 0).all()  # decreasing
    # The offset of the j-th ranked wrong token from x is uniform on 1..K-1 for every rank.
    for j in range(1, k + 1):
        assert_uniform((idx[..., j] - x) % K, list(range(1, K)), f"rank {j}")


@pytest.mark.parametrize("K", [1000, 262_144])
def test_topk_order_statistics_follow_the_max_of_normals(K):
    n_tok = 60_000
    sigma = 0.4
    gamma = math.log(sigma**2 / (1 - sigma**2))  # sigma_tilde = 0.4
    lat = R.topk_latents(torch.zeros(1, n_tok, dtype=torch.long), gamma, K, 3, generator=gen(K))
    torch.testing.assert_close(lat.sigma, torch.full_like(lat.sigma, sigma))
    top1, top2 = lat.values[0, :, 1], lat.values[0, :, 2]
    z_star = stats.norm.isf(1 / K)
    # KS-style bound: at fixed points the empirical CDF has se <= 0.5 / sqrt(n).
    tol = 5 * 0.5 / math.sqrt(n_tok)
    for z in z_star + torch.tensor([-1.0, -0.4, 0.0, 0.4, 1.0]).double():
        c = sigma * float(z)
        log_f = stats.norm.logcdf(float(z))
        f_max = math.exp((K - 1) * log_f)
        f_second = f_max + (K - 1) * math.exp((K - 2) * log_f) * -math.expm1(log_f)
        assert abs((top1 <= c).double().mean().item() - f_max) < tol
        assert abs((top2 <= c).double().mean().item() - f_second) < tol
    assert torch.equal(lat.threshold * lat.sigma, lat.values[..., 3])


# ----------------------------------------------------------------------------
# Top-k weights against the full tempered softmax (MATH.md section 5)


@pytest.mark.parametrize("a, s", [(-1.0, 0.5), (2.0, 3.0), (3.0, 10.0), (3.5, 30.0), (4.0, 0.0)])
def test_truncated_exp_moment_matches_quadrature(a, s):
    def integrand(z):
        return math.exp(s * z) * stats.norm.pdf(z)

    value = integrate.quad(integrand, -40, a, epsabs=0, epsrel=1e-13, limit=200)[0]
    expected = math.log(value) - stats.norm.logcdf(a)
    got = R.log_truncated_exp_moment(torch.tensor(a), torch.tensor(s)).item()
    assert abs(got - expected) < 1e-9 * max(1.0, abs(expected))


def test_truncated_exp_moment_is_stable_for_tiny_tau():
    a = torch.tensor([3.0, 4.5, 5.5, -1.0], dtype=torch.float64)
    for s in [1e2, 1e3, 1e4]:
        # float64 direct form: the 1e7-size terms cancel to ~1e-8 absolute here.
        direct = s * s / 2 + torch.special.log_ndtr(a - s) - torch.special.log_ndtr(a)
        got = R.log_truncated_exp_moment(a, torch.tensor(s))
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, direct, rtol=0, atol=1e-6)


def fill_unsampled(lat: R.TopkLatents, K: int, g: torch.Generator) -> torch.Tensor:
    """A full latent w (B, L, K) whose kept coordinates are ``lat``'s: the K - 1 - k other
    wrong coordinates are i.i.d. N(0, sigma^2) truncated below the k-th largest, which is
    exactly their conditional law, so w has the law of :func:`gaussian_latents`."""
    u = torch.rand((*lat.indices.shape[:2], K), generator=g, dtype=torch.float64)
    w = lat.sigma[..., None] * torch.special.ndtri(u * torch.special.ndtr(lat.threshold)[..., None])
    return w.scatter_(-1, lat.indices, lat.values)


@pytest.mark.parametrize("tau, tol", [(0.1, 1e-2), (1e-3, 1e-3)])
def test_topk_weights_agree_with_full_softmax_on_kept_tokens(tau, tol):
    # Same draw, completed to a full w: the top-k weights use the expected unsampled mass
    # where the full softmax uses the realised one. Tolerance on the mean weight of each
    # kept token (bias): 1e-2 at tau = 0.1 and 1e-3 at tau = 1e-3, absolute (observed
    # ~8e-4 and ~1e-7, standard errors ~1e-4 and ~3e-8). K = 1000, k = 2.
    K, k = 1000, 2
    g = gen(11)
    x = torch.randint(0, K, (40, 250), generator=g)
    gamma = torch.linspace(-3, -1, 40, dtype=torch.float64)[:, None]
    lat = R.topk_latents(x, gamma, K, k, generator=g)
    topk = R.topk_weights(lat, tau, K).double()
    w = fill_unsampled(lat, K, g)
    full = torch.softmax(w / tau, -1).gather(-1, lat.indices)
    bias = (topk - full).mean(dim=(0, 1))
    assert bias.abs().max().item() < tol, bias
    # Ratios among kept tokens are the tempered softmax exactly.
    torch.testing.assert_close(
        topk[..., 0] * full[..., 1], topk[..., 1] * full[..., 0], rtol=1e-5, atol=1e-30
    )
    # The relaxed one-hot and its argmax agree with the full construction.
    # (Replay the generator: x was drawn from it before the latents.)
    g = gen(11)
    torch.randint(0, K, x.shape, generator=g)
    (idx, weights), z = R.topk_relaxation(x, gamma, K, tau, k, generator=g)
    assert torch.equal(idx, lat.indices) and torch.equal(weights, topk.float())
    assert torch.equal(z, w.argmax(-1))


# ----------------------------------------------------------------------------
# Coupled pairs (MATH.md section 6)


@pytest.mark.parametrize("full", [False, True])
def test_coupled_pair_joint_law(full):
    K = 10
    g = gen(21 + full)
    x = torch.randint(0, K, (400, 250), generator=g)
    gamma_t, gamma_s = -0.5, -2.0  # s is less noisy
    sampler = R.coupled_pair_full if full else R.coupled_pair
    z_t, z_s = sampler(x, torch.tensor(gamma_t), torch.tensor(gamma_s), K, generator=g)
    # Marginals are the uniform-state marginals with alpha = T(gamma).
    for z, gam in ((z_t, gamma_t), (z_s, gamma_s)):
        alpha = float(diffusion_transform(torch.tensor(gam, dtype=torch.float64), K).alpha)
        assert_frequency(z == x, alpha + (1 - alpha) / K, f"marginal gamma={gam}")
    # Joint: z_t = x implies z_s = x (mu_s > mu_t, same eps), and both wrong -> same token.
    assert not ((z_t == x) & (z_s != x)).any()
    both_wrong = (z_t != x) & (z_s != x)
    assert torch.equal(z_t[both_wrong], z_s[both_wrong])
    assert_frequency((z_t == x) & (z_s == x), p_correct(gamma_t, K), "joint")
    assert_uniform(z_s[z_s != x].sub(x[z_s != x]).remainder(K), list(range(1, K)), "pair wrong")


def test_coupled_pair_coincides_as_the_gap_closes():
    K = 50_257
    x = torch.randint(0, K, (64, 512), generator=gen(5))
    gamma_t = torch.empty(64, 1).uniform_(-3.55, -1.85, generator=gen(6))
    same = R.coupled_pair(x, gamma_t, gamma_t.clone(), K, generator=gen(7))
    assert torch.equal(same.z_t, same.z_s)
    rates = []
    for gap in [0.3, 0.03, 0.003]:
        z_t, z_s = R.coupled_pair(x, gamma_t, gamma_t - gap, K, generator=gen(7))
        rates.append((z_t != z_s).double().mean().item())
        expected = float((p_correct_tensor(gamma_t - gap, K) - p_correct_tensor(gamma_t, K)).mean())
        se = math.sqrt(max(expected, 1e-6) / x.numel())
        assert abs(rates[-1] - expected) < 5 * se + 1e-5
    # The disagreement rate is |P(gamma_s) - P(gamma_t)|, linear in the gap.
    assert rates[0] > 5 * rates[1] > 25 * rates[2] and rates[2] < 5e-3


def p_correct_tensor(gamma: torch.Tensor, K: int) -> torch.Tensor:
    return argmax_probability(gamma.double(), K).prob


# ----------------------------------------------------------------------------
# Large vocabularies, shapes, dtypes


def test_large_vocab_tiny_tau_is_finite():
    K = 262_144
    g_min, g_max = gamma_range(K)
    x = torch.randint(0, K, (4, 64), generator=gen(8))
    gamma = torch.linspace(g_min, g_max, 4)[:, None]
    for tau in [1e-4, 1e-3]:
        for k in [1, 2, 16]:
            (idx, wts), z = R.topk_relaxation(x, gamma, K, tau, k, generator=gen(9))
            assert idx.shape == wts.shape == (4, 64, k + 1)
            assert idx.dtype == torch.int64 and wts.dtype == torch.float32 and z.dtype == torch.int64
            assert torch.isfinite(wts).all() and (wts >= 0).all()
            assert (wts.sum(-1) <= 1 + 1e-5).all()
            assert (z == idx.gather(-1, wts.argmax(-1, keepdim=True))[..., 0]).float().mean() > 0.99
    # The full relaxation at this size (2 x 4 tokens) stays finite as well.
    xs = x[:2, :4]
    out = R.full_relaxation(xs, gamma[:2], K, 1e-4)
    assert out.model_input.shape == (2, 4, K) and out.model_input.dtype == torch.float32
    assert torch.isfinite(out.model_input).all()
    assert torch.isfinite(torch.softmax(out.model_input, -1)).all()


def test_shapes_per_token_gamma_and_reproducibility():
    K = 30
    x = torch.randint(0, K, (3, 7), generator=gen(10), dtype=torch.int32)
    gamma = torch.randn(3, 7, generator=gen(11)) - 1
    w = R.gaussian_latents(x, gamma, K, generator=gen(12), dtype=torch.float64)
    assert w.shape == (3, 7, K) and w.dtype == torch.float64
    full = R.full_relaxation(x, gamma, K, 0.5, generator=gen(12))
    assert full.z_t.dtype == torch.int64 and full.z_t.shape == (3, 7)
    a = R.topk_relaxation(x, gamma, K, 0.5, 4, generator=gen(13))
    b = R.topk_relaxation(x, gamma, K, 0.5, 4, generator=gen(13))
    assert torch.equal(a.model_input[0], b.model_input[0]) and torch.equal(a.z_t, b.z_t)
    assert R.topk_relaxation(x, 0.0, K, 0.5, K - 1).model_input[0].shape == (3, 7, K)
    assert R.sample_zt_gaussian(x, -1.0, K).shape == (3, 7)
    pair = R.coupled_pair(x, gamma, gamma - 1, K)
    assert pair.z_t.shape == pair.z_s.shape == (3, 7)


# ----------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x: R.topk_relaxation(x, -1.0, 10, 0.1, 0), "k=0"),
        (lambda x: R.topk_relaxation(x, -1.0, 10, 0.1, 10), "k=10"),
        (lambda x: R.topk_relaxation(x, -1.0, 10, -0.1, 2), "tau=-0.1"),
        (lambda x: R.full_relaxation(x, -1.0, 10, float("nan")), "tau=nan"),
        (lambda x: R.full_relaxation(x, torch.zeros(3), 10, 0.1), r"gamma has shape \(3,\)"),
        (lambda x: R.full_relaxation(x, torch.zeros(2, 4), 10, 0.1), r"gamma of shape \(2, 4\)"),
        (lambda x: R.gaussian_latents(x, torch.zeros(2, 5, 1), 10), r"gamma of shape \(2, 5, 1\)"),
        (lambda x: R.coupled_pair(x, 0.0, torch.zeros(5, 1), 10), r"gamma_s of shape \(5, 1\)"),
        (lambda x: R.sample_zt_gaussian(x, float("inf"), 10), "non-finite"),
        (lambda x: R.sample_zt_gaussian(x, 0.0, 1), "vocab_size=1"),
        (lambda x: R.topk_relaxation(x, 0.0, 5, 0.1, 1), r"outside \[0, 5\)"),
        (lambda x: R.full_relaxation(x.float(), 0.0, 10, 0.1), "integer token ids"),
    ],
)
def test_bad_input_raises_value_error_naming_the_value(call, match):
    x = torch.arange(10).reshape(2, 5)
    with pytest.raises(ValueError, match=match):
        call(x)
