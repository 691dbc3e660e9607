import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from duo.processes import absorbing, uniform


def forward_matrix(alpha: float, K: int) -> torch.Tensor:
    """Q[a, b] = q(z = b | z' = a) for the uniform-state kernel with signal ``alpha``."""
    return alpha * torch.eye(K, dtype=torch.float64) + (1 - alpha) / K


@pytest.mark.parametrize("K", [2, 3, 6])
def test_uniform_posterior_equals_bayes_rule(K):
    a_s, a_t = 0.8, 0.3
    q_s = forward_matrix(a_s, K)  # q(z_s | x) rows indexed by x
    q_ts = forward_matrix(a_t / a_s, K)  # q(z_t | z_s)
    for x, z in itertools.product(range(K), range(K)):
        joint = q_s[x] * q_ts[:, z]  # over z_s
        expected = joint / joint.sum()
        x_probs = F.one_hot(torch.tensor([[x]]), K).double()
        got = uniform.posterior(x_probs, torch.tensor([[z]]), a_s, a_t)[0, 0]
        assert torch.allclose(got, expected, atol=1e-14)


@settings(max_examples=60, deadline=None)
@given(
    K=st.integers(2, 40),
    a_t=st.floats(0.0, 0.99),
    frac=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**16),
)
def test_uniform_posterior_sums_to_one_for_any_probability_vector(K, a_t, frac, seed):
    gen = torch.Generator().manual_seed(seed)
    a_s = a_t + frac * (1 - a_t)
    x = torch.softmax(3 * torch.randn(2, 5, K, generator=gen, dtype=torch.float64), -1)
    z = torch.randint(0, K, (2, 5), generator=gen)
    p = uniform.posterior(x, z, torch.full((2, 1), a_s), torch.full((2, 5), a_t))
    assert torch.allclose(p.sum(-1), torch.ones(2, 5, dtype=torch.float64), atol=1e-12)
    assert bool((p >= -1e-15).all())


def test_uniform_posterior_last_step_formula():
    K, a_t = 7, 0.4
    x = torch.softmax(torch.randn(1, 3, K, dtype=torch.float64), -1)
    z = torch.tensor([[0, 3, 6]])
    p = uniform.posterior(x, z, 1.0, a_t)
    expected = x * (K * a_t * F.one_hot(z, K) + (1 - a_t))
    assert torch.allclose(p, expected / expected.sum(-1, keepdim=True), atol=1e-14)


def test_uniform_sample_zt_marginal():
    K, a, n = 5, 0.6, 200_000
    x = torch.full((1, n), 2)
    z = uniform.sample_zt(x, a, K, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(z[0], minlength=K).double() / n
    expected = a * F.one_hot(torch.tensor(2), K).double() + (1 - a) / K
    assert torch.allclose(freq, expected, atol=5e-3)


def test_uniform_prior_is_uniform_and_prior_kl():
    z = uniform.prior_sample((4, 10_000), 8, generator=torch.Generator().manual_seed(1))
    freq = torch.bincount(z.flatten(), minlength=8).double() / z.numel()
    assert torch.allclose(freq, torch.full((8,), 1 / 8, dtype=torch.float64), atol=5e-3)
    assert float(uniform.prior_kl(0.0, 100)) == pytest.approx(0.0, abs=1e-15)
    p = torch.full((100,), 0.5 / 100, dtype=torch.float64)
    p[0] += 0.5
    assert float(uniform.prior_kl(0.5, 100)) == pytest.approx(float((p * (p * 100).log()).sum()))


def test_uniform_posterior_bad_input():
    x = torch.full((1, 2, 4), 0.25)
    with pytest.raises(ValueError, match="x_probs"):
        uniform.posterior(x * 2, torch.zeros(1, 2, dtype=torch.long), 0.5, 0.2)
    with pytest.raises(ValueError, match="shape"):
        uniform.posterior(x, torch.zeros(1, 3, dtype=torch.long), 0.5, 0.2)
    with pytest.raises(ValueError, match="z_t"):
        uniform.posterior(x, torch.full((1, 2), 9), 0.5, 0.2)
    with pytest.raises(ValueError, match="alpha_s"):
        uniform.posterior(x, torch.zeros(1, 2, dtype=torch.long), torch.ones(3, 1), 0.2)


@pytest.mark.parametrize("K", [3, 5])
def test_absorbing_posterior_equals_bayes_rule(K):
    mask = K - 1
    a_s, a_t = 0.7, 0.2

    def kernel(alpha):  # q(z | z') for the masked process, mask absorbing
        m = alpha * torch.eye(K, dtype=torch.float64)
        m[:, mask] += 1 - alpha
        m[mask] = 0
        m[mask, mask] = 1
        return m

    for x in range(K - 1):
        for z in range(K):
            joint = kernel(a_s)[x] * kernel(a_t / a_s)[:, z]
            if joint.sum() == 0:
                continue
            expected = joint / joint.sum()
            x_probs = F.one_hot(torch.tensor([[x]]), K).double()
            got = absorbing.posterior(x_probs, torch.tensor([[z]]), a_s, a_t, mask)[0, 0]
            assert torch.allclose(got, expected, atol=1e-14)


def test_absorbing_subs_and_sampling():
    K, mask = 6, 5
    logits = torch.randn(2, 4, K)
    z = torch.tensor([[5, 1, 5, 2], [0, 5, 5, 5]])
    lp = absorbing.subs_log_probs(logits, z, mask)
    assert torch.allclose(lp.exp().sum(-1), torch.ones(2, 4))
    assert bool((lp[..., mask] == float("-inf")).all())
    assert lp[0, 1, 1] == 0 and lp[1, 0, 0] == 0
    x = torch.randint(0, 5, (1, 50_000))
    zt = absorbing.sample_zt(x, 0.3, mask, generator=torch.Generator().manual_seed(0))
    kept = zt != mask
    assert bool((zt[kept] == x[kept]).all())
    assert float(kept.double().mean()) == pytest.approx(0.3, abs=0.01)
    assert bool((absorbing.prior_sample((2, 3), mask) == mask).all())
