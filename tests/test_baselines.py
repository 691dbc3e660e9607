"""SEDD, D3PM and semi-autoregressive generation (issue 18): identities on toy
distributions whose likelihoods are known, end-to-end training with exact resume, and
one-line errors."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from duo.losses import d3pm_elbo, mdlm_nelbo, sedd_dse
from duo.methods import score_log_ratios
from duo.processes import absorbing
from duo.samplers import (
    Conditioning, D3pmSampler, SamplingConfig, SeddSampler, check_semi_ar, generate, get_process,
    semi_autoregressive, step_probs,
)
from duo.samplers.sedd import dense_step_probs, normalised_scores, sedd_mixture
from duo.schedules import LogLinear

from conftest import tiny_overrides

# A toy data distribution over sequences of L = 2 tokens from V = 3 (mask id 3, K = 4).
V, L = 3, 2
K, MASK = V + 1, V
SEQS = list(itertools.product(range(V), repeat=L))
P_DATA = torch.tensor([0.30, 0.05, 0.10, 0.02, 0.20, 0.08, 0.05, 0.15, 0.05], dtype=torch.float64)
PATTERNS = list(itertools.product([False, True], repeat=L))  # which positions are masked


def posterior_x(z: tuple[int, ...]) -> torch.Tensor:
    """p(x_i = v | z) under the toy data, (L, V) (Bayes by enumeration)."""
    w = torch.tensor([P_DATA[k] if all(zi == MASK or zi == xi for zi, xi in zip(z, x)) else 0.0
                      for k, x in enumerate(SEQS)], dtype=torch.float64)
    w = w / w.sum()
    out = torch.zeros(L, V, dtype=torch.float64)
    for k, x in enumerate(SEQS):
        for i in range(L):
            out[i, x[i]] += w[k]
    return out


def exact_log_score(z: tuple[int, ...], alpha: float) -> torch.Tensor:
    """True log ratios p_t(z with y at i) / p_t(z) (L, K) for the masked process."""
    out = torch.zeros(L, K, dtype=torch.float64)
    post = posterior_x(z)
    for i in range(L):
        if z[i] == MASK:
            out[i, :V] = torch.log(post[i]) + math.log(alpha / (1 - alpha))
    return out


def masked_z(x, pattern):
    return tuple(MASK if m else xi for xi, m in zip(x, pattern))


def q_pattern(pattern, alpha: float) -> float:
    return math.prod((1 - alpha) if m else alpha for m in pattern)


# ---------------------------------------------------------------- SEDD loss
def brute_force_dse(log_score, z, x, t: float, sched) -> torch.Tensor:
    """The general denoising score entropy, with q_t(. | x) from a matrix exponential of the
    absorbing generator (rate sigma' from every token to the mask)."""
    a = sched.alpha(torch.tensor(t, dtype=torch.float64))
    sigma, dsigma = -torch.log(a), -sched.dalpha(torch.tensor(t, dtype=torch.float64)) / a
    R = torch.zeros(K, K, dtype=torch.float64)  # R[to, from]
    for j in range(V):
        R[MASK, j], R[j, j] = 1.0, -1.0
    P = torch.linalg.matrix_exp(sigma * R)  # P[to, from]
    out = torch.zeros(z.shape, dtype=torch.float64)
    for b, i in itertools.product(range(z.shape[0]), range(z.shape[1])):
        zi, xi = int(z[b, i]), int(x[b, i])
        for y in range(K):
            if y == zi or R[zi, y] == 0:
                continue
            ratio = P[y, xi] / P[zi, xi]
            s = log_score[b, i, y].double()
            k_term = ratio * (torch.log(ratio) - 1) if ratio > 0 else 0.0
            out[b, i] += dsigma * R[zi, y] * (s.exp() - ratio * s + k_term)
    return out


def test_sedd_loss_equals_its_brute_force_definition():
    sched = LogLinear(1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, V, (3, 4), generator=g)
    z = torch.where(torch.rand(3, 4, generator=g) < 0.6, MASK, x)
    log_score = torch.randn(3, 4, K, generator=g, dtype=torch.float64)
    for t in (0.05, 0.5, 0.97):
        a = sched.alpha(torch.tensor(t, dtype=torch.float64))
        fast = sedd_dse(log_score, z, x, a, sched.dalpha(torch.tensor(t, dtype=torch.float64)), MASK)
        torch.testing.assert_close(fast, brute_force_dse(log_score, z, x, t, sched), rtol=1e-10, atol=1e-10)
        assert (fast >= 0).all() and (fast[z != MASK] == 0).all()


# Every (x, mask pattern) pair as one batch: X (36, L) clean, Z (36, L) noised.
X = torch.tensor([x for x in SEQS for _ in PATTERNS])
Z = torch.tensor([masked_z(x, p) for x in SEQS for p in PATTERNS])
MASKED = torch.tensor([p for _ in SEQS for p in PATTERNS])
P_X = P_DATA.repeat_interleave(len(PATTERNS))


def q_rows(alpha: float) -> torch.Tensor:
    """q_t(Z | X) per row (36,)."""
    return torch.where(MASKED, 1 - alpha, alpha).prod(-1).double()


def expected_sedd_bound(log_score_fn, nodes: int = 400) -> torch.Tensor:
    """Per-x bound (9,) = int_0^1 E_{z ~ q_t(.|x)} sum_i DSE dt with alpha_t = 1 - t (alpha_1 = 0:
    the prior term vanishes), Gauss-Legendre in t."""
    u, w = np.polynomial.legendre.leggauss(nodes)
    out = torch.zeros(len(SEQS) * len(PATTERNS), dtype=torch.float64)
    for t, wt in zip((u + 1) / 2, w / 2):
        a = 1.0 - float(t)
        ls = torch.stack([log_score_fn(tuple(z.tolist()), a) for z in Z])
        out += wt * q_rows(a) * sedd_dse(ls, Z, X, a, -1.0, MASK).sum(-1)
    return out.view(len(SEQS), len(PATTERNS)).sum(-1)


def test_sedd_bound_is_tight_at_the_true_score_and_above_the_nll_otherwise():
    nll = -torch.log(P_DATA)
    exact = expected_sedd_bound(exact_log_score)
    torch.testing.assert_close(exact, nll, rtol=2e-3, atol=2e-3)  # per sequence: -log p(x)
    g = torch.Generator().manual_seed(1)
    table = torch.randn(K, L, K, generator=g)

    def model(z, alpha):  # the method's parameterisation on arbitrary logits
        logits = table[list(z), range(L)][None]
        return score_log_ratios(logits, torch.tensor([z]), torch.tensor([alpha]), MASK)[0].double()

    data_bound = float((P_DATA * expected_sedd_bound(model, nodes=200)).sum())
    entropy = float((P_DATA * nll).sum())
    assert data_bound > entropy + 0.05, (data_bound, entropy)
    print(f"true score: max |bound - NLL| = {float((exact - nll).abs().max()):.2e}; "
          f"random score: E bound {data_bound:.4f} >= H {entropy:.4f}")


# ---------------------------------------------------------------- D3PM
_G = torch.Generator().manual_seed(3)
_TABLE, _SLOPE = torch.randn(K, L, K, generator=_G, dtype=torch.float64), torch.randn(K, generator=_G).double()


def toy_denoiser(z: torch.Tensor, alpha: float) -> torch.Tensor:
    """A fixed time-dependent SUBS denoiser (B, L, K) for the toy."""
    logits = _TABLE[z, torch.arange(z.shape[1])] + alpha * _SLOPE
    return absorbing.subs_log_probs(logits, z, MASK).double()


def expected_loss(alpha_fn, loss_fn, times, weights) -> float:
    """sum_t w_t E_{x, z ~ q_t} [sum_i loss] over the toy, exactly."""
    return sum(w * float((P_X * q_rows(alpha_fn(t)) * loss_fn(Z, X, t).sum(-1)).sum())
               for t, w in zip(times, weights))


def test_d3pm_elbo_tends_to_the_continuous_mdlm_nelbo():
    sched = LogLinear(1e-3)
    alpha = lambda t: float(sched.alpha(torch.tensor(t, dtype=torch.float64)))  # noqa: E731
    u, w = np.polynomial.legendre.leggauss(200)
    cont = expected_loss(alpha, lambda z, x, t: mdlm_nelbo(toy_denoiser(z, alpha(t)), z, x, alpha(t),
                                                           -(1 - 1e-3), MASK), (u + 1) / 2, w / 2)
    gaps = []
    for T in (4, 16, 64, 256):
        def term(z, x, t, T=T):
            return d3pm_elbo(toy_denoiser(z, alpha(t)), z, x, alpha(t - 1 / T), alpha(t), MASK, T)
        disc = expected_loss(alpha, term, [i / T for i in range(1, T + 1)], [1 / T] * T)
        gaps.append(abs(disc - cont))
    assert all(b < 0.5 * a for a, b in zip(gaps, gaps[1:])), gaps  # the gap shrinks (~ 1/T)
    assert gaps[-1] < 2e-3 * cont, (gaps, cont)
    print(f"continuous {cont:.6f}; |D3PM - continuous| at T = 4, 16, 64, 256: {gaps}")


def test_d3pm_time_is_sampled_uniformly_on_the_integer_grid():
    from duo.methods.d3pm import grid_steps
    from duo.schedules import antithetic_times

    t = antithetic_times(1000, eps=1e-3, u=torch.tensor(0.37, dtype=torch.float64))
    i = grid_steps(t, 10, 1e-3)
    counts = torch.bincount(i).tolist()
    assert i.min() == 1 and i.max() == 10 and all(99 <= c <= 101 for c in counts[1:]), counts


# ---------------------------------------------------------------- samplers vs Bayes
def bayes_step(z_t: tuple[int, ...], a_s: float, a_t: float) -> torch.Tensor:
    """p(z_s^i | z_t) (L, K) by enumerating x, z_s, z_t of the forward chain x -> z_s -> z_t."""
    def q(z_from, z_to, keep):  # one position of the masked process, keep prob `keep`
        if z_from == MASK:
            return float(z_to == MASK)
        return keep if z_to == z_from else (1 - keep) if z_to == MASK else 0.0

    out = torch.zeros(L, K, dtype=torch.float64)
    for k, x in enumerate(SEQS):
        for z_s in itertools.product(range(K), repeat=L):
            p = float(P_DATA[k]) * math.prod(q(xi, si, a_s) for xi, si in zip(x, z_s))
            p *= math.prod(q(si, ti, a_t / a_s) for si, ti in zip(z_s, z_t))
            for i in range(L):
                out[i, z_s[i]] += p
    return out / out.sum(-1, keepdim=True)


@pytest.mark.parametrize("z_t", [(MASK, MASK), (MASK, 1), (2, MASK)])
def test_one_step_distributions_match_brute_force_bayes(z_t):
    a_t, a_s = 0.3, 0.55
    want = bayes_step(z_t, a_s, a_t)
    z = torch.tensor([z_t])
    log_score = exact_log_score(z_t, a_t)[None]
    # SEDD analytic (Tweedie tau-leaping), through the sampler's mixture and the dense form
    mix = sedd_mixture(log_score, z, a_s, a_t, MASK, "analytic")
    got = mix.dense(normalised_scores(log_score, MASK).double().exp(), z, MASK)[0]
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)  # the draw normalises in float32
    torch.testing.assert_close(dense_step_probs(log_score, z, a_s, a_t, MASK)[0], want, rtol=1e-9, atol=1e-12)
    # D3PM / MDLM ancestral step with the exact denoiser p(x_i | z_t)
    log_x = torch.full((1, L, K), float("-inf"), dtype=torch.float64)
    log_x[0, :, :V] = torch.log(posterior_x(z_t))
    log_x = torch.where((z == MASK)[..., None], log_x, torch.log(torch.nn.functional.one_hot(z, K).double()))
    torch.testing.assert_close(step_probs(get_process("absorbing", MASK), log_x, z, a_s, a_t)[0], want)
    # Euler: first order, its error shrinks ~ quadratically with the step
    errs = []
    for h in (0.1, 0.05):
        e_mix = sedd_mixture(log_score, z, a_t + h, a_t, MASK, "euler")
        e = e_mix.dense(normalised_scores(log_score, MASK).double().exp(), z, MASK)[0]
        torch.testing.assert_close(e, dense_step_probs(log_score, z, a_t + h, a_t, MASK, "euler")[0],
                                   rtol=1e-6, atol=1e-9)
        errs.append(float((e - bayes_step(z_t, a_t + h, a_t)).abs().max()))
    assert errs[1] < 0.35 * errs[0] or errs[0] < 1e-12, errs


def random_score(seed=0, vocab=9, mask_id=8):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(vocab, vocab, generator=g)

    def score(z, alpha_t):
        return score_log_ratios(table[z], z, alpha_t, mask_id)

    return score


@pytest.mark.parametrize("sampler", [SeddSampler(kind="analytic", mask_id=8), SeddSampler(kind="euler", mask_id=8),
                                     D3pmSampler(mask_id=8, T=40)])
def test_clamped_positions_never_move(sampler):
    score = random_score()
    fn = score if isinstance(sampler, SeddSampler) else (lambda z, a: normalised_scores(score(z, a), 8))
    mask = torch.tensor([True, False, False, True, False, True, False, False, False, True])
    ids = torch.tensor([3, 0, 0, 5, 0, 1, 0, 0, 0, 7])
    out = generate(sampler, fn, LogLinear(1e-3), batch_size=3, seq_len=10, vocab_size=9, steps=8, seed=1,
                   clamp=Conditioning.from_mask(mask, ids), return_intermediates=True)
    for state in out.intermediates:
        assert torch.equal(state[:, mask], ids[mask].expand(3, -1))
    assert (out.tokens != 8).all() and out.nfe == 8


def test_d3pm_sampler_runs_on_its_integer_grid():
    grid = D3pmSampler(mask_id=3, T=50).time_grid(8)
    k = grid.t[:-1] * 50
    assert torch.allclose(k, k.round()) and grid.t[0] == 1 and len(set(grid.t.tolist())) == 9
    with pytest.raises(ValueError, match=r"steps=60 must be an integer in \[1, 50\]"):
        D3pmSampler(mask_id=3, T=50).time_grid(60)


# ---------------------------------------------------------------- semi-autoregressive
def counting_denoiser(vocab=11, mask_id=10):
    """Deterministic: a masked position j copies (v + j - k) mod (vocab - 1) from the nearest
    unmasked position k to its left (else j itself). Windows that repeat or drop a token at a
    boundary would break the count."""
    n = vocab - 1

    def denoiser(z, alpha_t):
        B, Lz = z.shape
        target = torch.empty_like(z)
        for b in range(B):
            known = [(k, int(z[b, k])) for k in range(Lz) if z[b, k] != mask_id]
            for j in range(Lz):
                left = [kv for kv in known if kv[0] <= j] or known
                target[b, j] = (left[-1][1] + j - left[-1][0]) % n if left else j % n
        logits = torch.full((B, Lz, vocab), -30.0).scatter(-1, target[..., None], 30.0)
        return absorbing.subs_log_probs(logits, z, mask_id)

    return denoiser


@pytest.mark.parametrize("sampler", ["mdlm", "sedd"])
def test_semi_ar_windows_continue_without_repeats_or_gaps(sampler):
    context, stride, length = 16, 8, 64  # 4x the context, 7 windows
    den = counting_denoiser()
    sam = SeddSampler(mask_id=10) if sampler == "sedd" else D3pmSampler(mask_id=10, T=100)
    fn = den
    if sampler == "sedd":
        def fn(z, a):
            lr = torch.log(a) - torch.log1p(-a)
            return (den(z, a) + lr[:, None, None]).scatter(-1, z[..., None], 0.0)
    seen = []

    def window(clamp, seed):
        out = generate(sam, fn, LogLinear(1e-3), batch_size=2, seq_len=context, vocab_size=11, steps=4,
                       seed=seed, clamp=clamp)
        seen.append((clamp, out.tokens))
        return out.tokens, out.nfe

    res = semi_autoregressive(window, batch_size=2, length=length, context=context, stride=stride, seed=0)
    assert res.tokens.shape == (2, 64) and res.windows == 7 and res.nfe == 28
    assert ((res.tokens[:, 1:] - res.tokens[:, :-1]) % 10 == 1).all()  # one unbroken count
    for (clamp, tokens), (_, prev) in zip(seen[1:], seen[:-1]):  # each window keeps its clamp
        assert torch.equal(tokens[:, :context - stride], prev[:, stride:])
        assert torch.equal(tokens[clamp.mask].view(2, -1), clamp.ids[clamp.mask].view(2, -1))
    assert res.lengths == [64, 64]


def test_semi_ar_reports_eos_lengths_and_can_stop():
    calls = []

    def window(clamp, seed):
        calls.append(seed)
        t = torch.arange(8).repeat(2, 1)
        t[0, 5] = 99
        return (clamp.apply(t) if clamp is not None else t), 1

    res = semi_autoregressive(window, batch_size=2, length=32, context=8, stride=4, eos_id=99)
    assert res.lengths == [5, 32] and len(calls) == 7
    res = semi_autoregressive(lambda c, s: (torch.full((2, 8), 99), 1), batch_size=2, length=32, context=8,
                              stride=4, eos_id=99, stop_at_eos=True)
    assert res.nfe == 1 and (res.tokens == 99).all()


@pytest.mark.parametrize("kwargs,match", [
    (dict(length=64, stride=16, seq_len=16), r"stride=16 must be smaller than the model's context \(16\)"),
    (dict(length=50, stride=8, seq_len=16), r"length=50 is not reachable .* \(e.g. length=56\)"),
    (dict(stride=8), "stride=8 applies to semi-autoregressive generation; add length="),
    (dict(length=0), "length=0 must be an integer >= 1"),
])
def test_bad_semi_ar_settings_are_one_line_errors(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        SamplingConfig(**kwargs).validate()
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="stride=4 must be smaller"):
        check_semi_ar(32, 4, 4)


# ---------------------------------------------------------------- training end to end
def _losses(run_dir):
    from test_training import losses

    return losses(run_dir)


@pytest.mark.parametrize("algo,extra", [("sedd", []), ("d3pm", ["algo.T=50", "algo.hybrid_lambda=0.01"])])
def test_train_end_to_end_and_resume_exactly(algo, extra, tiny_corpus, duo_cache, tmp_path):
    from duo.config import build_config
    from duo.training import train

    common = ["trainer.ckpt_every=3", "trainer.batch_size=4", *extra]
    full = train(build_config(tiny_overrides(tiny_corpus, duo_cache, tmp_path / "full", f"algo={algo}",
                                             "trainer.max_steps=6", "sample.num_samples=2", "sample.steps=4",
                                             *common)))
    assert len(full.samples) == 2 and full.val_ppl is not None and 1 < full.val_ppl < 400
    part = tiny_overrides(tiny_corpus, duo_cache, tmp_path / "part", f"algo={algo}", *common)
    train(build_config([*part, "trainer.max_steps=3"]))
    train(build_config([*part, "trainer.max_steps=6"]))
    a, b = _losses(full.run_dir), _losses(tmp_path / "part")
    for step in range(4, 7):
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), step

    # the checkpoint samples with its own samplers, past its context, and refuses the others
    from duo.checkpoints import load_checkpoint
    from duo.evaluation import plan_sampling, sample

    loaded = load_checkpoint(full.run_dir)
    gen = sample(loaded, SamplingConfig(num_samples=2, steps=4, length=128, stride=16))
    assert gen.tokens.shape == (2, 128) and len(gen.lengths) == 2 and gen.nfe == 4 * 7
    wrong = "mdlm" if algo == "sedd" else "ancestral"
    with pytest.raises(ValueError, match=f"sampler '{wrong}' does not fit a {algo} checkpoint") as info:
        plan_sampling(loaded, SamplingConfig(sampler=wrong))
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"stride=32 must be smaller than the model's context \(32\)"):
        plan_sampling(loaded, SamplingConfig(length=128, stride=32))


def test_bad_d3pm_config_is_a_one_line_error():
    from duo.config import build_config

    with pytest.raises(ValueError, match=r"algo.T=0 must be an integer >= 1") as info:
        build_config(["algo=d3pm", "algo.T=0"])
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- published SEDD weights
def test_official_sedd_checkpoint_loads_into_algo_sedd(tmp_path):
    pytest.importorskip("omegaconf")
    pytest.importorskip("transformers")
    from test_interop import D, C, H, N, L as LEN, _official_ckpt, hf_tokenizer  # noqa: F401

    from duo.checkpoints import load_checkpoint
    from duo.generation import generate_tokens
    from duo.models import ModelConfig, build_model

    tok = hf_tokenizer.__wrapped__()
    Kv = len(tok)
    model = build_model(ModelConfig(vocab_size=Kv, hidden_size=D, cond_dim=C, n_heads=H, n_blocks=N,
                                    max_seq_len=LEN, dropout=0.0, time_conditioning=True).validate())
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.3)
    _official_ckpt(tmp_path / "sedd.ckpt", model.eval(), tok, "sedd", "main")
    loaded = load_checkpoint(tmp_path / "sedd.ckpt", use_ema=False)
    assert loaded.algo == "sedd" and loaded.method.mask_id == Kv - 1
    z = torch.randint(0, Kv, (2, 12), generator=torch.Generator().manual_seed(0))
    z[:, ::3] = Kv - 1
    alpha = torch.tensor([0.3, 0.8])
    sigma = -torch.log(alpha)
    with torch.no_grad():  # the official SEDDAbsorb._process_model_output, written out
        want = model(z, sigma).float() - torch.log(torch.expm1(sigma))[:, None, None] - math.log(Kv - 1)
        want = want.scatter(-1, z[..., None], 0.0)
        torch.testing.assert_close(loaded.method.score(z, alpha), want, rtol=1e-5, atol=1e-5)
    tokens, nfe, _ = generate_tokens(loaded.method, num_samples=2, seq_len=12, steps=4)
    assert nfe == 4 and (tokens != Kv - 1).all()


def test_sedd_step_total_matches_float64_reference():
    # The sampler passes sum_{y != mask} s_y from one float32 logsumexp; the weights match
    # the float64 sum over the non-mask ids.
    g = torch.Generator().manual_seed(3)
    log_score = torch.randn(2, 5, 50, generator=g) * 3
    z = torch.tensor([[49, 1, 49, 49, 2], [49, 49, 3, 49, 49]])
    want = log_score[..., :49].double().logsumexp(-1).exp()
    lp = log_score.clone()
    lp[..., 49] = float("-inf")
    total = lp.logsumexp(-1).double().exp()
    for mix in (sedd_mixture(log_score, z, 0.6, 0.4, 49, "euler"),
                sedd_mixture(None, z, 0.6, 0.4, 49, "euler", total=total)):
        m = (z == 49).double()
        dsigma = math.log(0.6) - math.log(0.4)
        torch.testing.assert_close(mix.x, m * (dsigma * want).clamp(max=1.0), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(normalised_scores(log_score, 49)[..., :49].double(),
                               log_score[..., :49].double().log_softmax(-1), rtol=1e-5, atol=1e-5)


def test_semi_ar_stops_only_when_every_row_has_an_eos():
    def window(clamp, seed):
        t = torch.arange(8).repeat(2, 1)
        t[0, 5] = 99  # row 0 has an EOS, row 1 never does
        return (clamp.apply(t) if clamp is not None else t), 1

    res = semi_autoregressive(window, batch_size=2, length=32, context=8, stride=4, eos_id=99, stop_at_eos=True)
    assert res.nfe == 7 and res.lengths == [5, 32] and not (res.tokens[1] == 99).any()


def test_semi_ar_window_seeds_do_not_collide_with_batch_seeds():
    from duo.utils.seeding import derive_seed

    seeds = []

    def window(clamp, seed):
        seeds.append(seed)
        t = torch.arange(8).repeat(1, 1)
        return (clamp.apply(t) if clamp is not None else t), 1

    for i in range(3):  # as duo.evaluation.sampling seeds batch i
        semi_autoregressive(window, batch_size=1, length=20, context=8, stride=4,
                            seed=0 if i == 0 else derive_seed(0, i))
    assert seeds[0] == 0 and len(set(seeds)) == len(seeds) == 12
