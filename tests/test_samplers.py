"""Samplers: identities and invariants on tiny vocabularies (MATH.md sections 1, 7, 8)."""

from __future__ import annotations

import math

import pytest
import torch

from duo.processes import absorbing
from duo.samplers import (
    AncestralSampler, Conditioning, KappaRule, PsiSampler, StepTime, generate, generate_ar,
    Thresholds, get_process, get_sampler, row_thresholds, step_probs, time_grid, top_k_filter,
    top_p_filter,
)
from duo.samplers.ancestral import reverse_step
from duo.samplers.blocks import block_sums, blocked_draw, pick
from duo.samplers.filters import filter_probs
from duo.samplers.mixture import Mixture, draw, inverse_cdf as dense_inverse_cdf, x_at_z
from duo.schedules import get_schedule

K = 12
MASK = K - 1
SCHEDULE = get_schedule("loglinear")


def make_denoiser(vocab=K, mask_id=None, seed=0, time_conditioned=True):
    """A deterministic toy denoiser: logits depend on the current token, the position
    and (optionally) alpha_t; SUBS-parameterised for the masked process."""
    g = torch.Generator().manual_seed(seed)
    table = 2.0 * torch.randn(vocab, vocab, generator=g, dtype=torch.float64)
    pos = torch.randn(64, vocab, generator=g, dtype=torch.float64)
    slope = torch.randn(vocab, generator=g, dtype=torch.float64)

    def denoiser(z, alpha_t):
        logits = table[z] + pos[: z.shape[1]]
        if time_conditioned:
            logits = logits + alpha_t.double()[:, None, None] * slope
        if mask_id is not None:
            return absorbing.subs_log_probs(logits, z, mask_id)
        return logits.log_softmax(-1)

    denoiser.time_conditioned = time_conditioned
    return denoiser


def truth_denoiser(target, vocab, mask_id=None, floor=1e-12):
    """Predicts the one-hot of ``target`` (B, L) with a tiny floor, as log-probs."""
    probs = torch.full(target.shape + (vocab,), floor, dtype=torch.float64)
    probs.scatter_(-1, target[..., None], 1.0)
    if mask_id is not None:
        probs[..., mask_id] = 0.0
    log_probs = (probs / probs.sum(-1, keepdim=True)).log()

    def denoiser(z, alpha_t):
        if mask_id is None:
            return log_probs
        copy = torch.full_like(log_probs, float("-inf")).scatter(-1, z[..., None], 0.0)
        return torch.where((z == mask_id)[..., None], log_probs, copy)

    return denoiser


SAMPLER_CASES = {
    "ancestral": (dict(), None),
    "greedy_tail": (dict(top_k=5), None),
    "psi": (dict(t_on=0.6, hold_fraction=0.25, middle=("remdm-const", 0.3)), None),
    "psi-masked": (dict(process="absorbing", mask_id=MASK, top_p=0.8), MASK),
    "mdlm": (dict(mask_id=MASK), MASK),
}


def build(case):
    options, mask_id = SAMPLER_CASES[case]
    return get_sampler(case.split("-")[0], **options), mask_id


# ---------------------------------------------------------------------------- grid


def test_time_grid_runs_from_one_to_eps():
    grid = time_grid(10, eps=1e-5)
    assert grid.t[0] == 1.0 and grid.t[-1] == 1e-5 and grid.steps == 10
    assert bool((grid.t[1:] < grid.t[:-1]).all())


def test_time_grid_hold_keeps_t_constant_in_the_middle_phase():
    grid = time_grid(20, t_on=0.5, hold_fraction=0.25)
    t = grid.t
    assert len(t) == 21 and t[0] == 1.0 and t[-1] == 1e-5
    assert bool((t[1:] <= t[:-1]).all())
    held = [i for i in range(20) if t[i] == t[i + 1]]
    assert len(held) == 5 and all(float(t[i]) == 0.5 for i in held)
    assert [grid.phase[i] for i in held] == ["middle"] * 5
    assert set(grid.phase) == {"high", "middle", "low"}
    assert grid.phase[0] == "high" and grid.phase[-1] == "low"


# ---------------------------------------------------------------------------- clamping


@pytest.mark.parametrize("case", list(SAMPLER_CASES))
@pytest.mark.parametrize("where", ["prefix", "suffix", "random"])
def test_clamped_positions_never_change(case, where):
    sampler, mask_id = build(case)
    B, L = 3, 10
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, K - 1, (B, L), generator=g)
    if where == "prefix":
        clamp = Conditioning.prefix(ids[:, :4], L)
    elif where == "suffix":
        clamp = Conditioning.suffix(ids[0, :3], L)
    else:
        clamp = Conditioning.from_mask(torch.rand(B, L, generator=g) < 0.4, ids)
    out = generate(sampler, make_denoiser(mask_id=mask_id), SCHEDULE, batch_size=B,
                   seq_len=L, vocab_size=K, steps=12, seed=3, clamp=clamp,
                   return_intermediates=True)
    mask = clamp.mask.expand(B, L)
    want = clamp.ids.expand(B, L)[mask]
    assert len(out.intermediates) == 13
    for state in out.intermediates:
        assert torch.equal(state[mask], want)
    if mask_id is not None:  # every mask is filled at the end
        assert not bool((out.tokens == mask_id).any())


@pytest.mark.parametrize("case", list(SAMPLER_CASES))
def test_same_seed_same_tokens(case):
    sampler, mask_id = build(case)
    den = make_denoiser(mask_id=mask_id)
    kw = dict(batch_size=2, seq_len=8, vocab_size=K, steps=10)
    a = generate(sampler, den, SCHEDULE, seed=7, **kw).tokens
    b = generate(sampler, den, SCHEDULE, seed=7, **kw).tokens
    c = generate(sampler, den, SCHEDULE, seed=8, **kw).tokens
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("vocab", [K, 700])  # 700: draws cross several blocks of 256 tokens
@pytest.mark.parametrize("name", ["ancestral", "greedy_tail", "psi", "mdlm"])
def test_dense_draw_gives_the_same_tokens_as_the_sparse_draw(name, vocab):
    """The accelerator loop (every position drawn from the prediction, no host sync) and the
    CPU loop (only the positions that need it) give the same tokens for a seed."""
    mask_id = vocab - 1 if name == "mdlm" else None
    den = make_denoiser(vocab=vocab, mask_id=mask_id, seed=3)
    kw = dict(batch_size=3, seq_len=16, vocab_size=vocab, steps=12, seed=5, return_intermediates=True)
    opts = {"mask_id": mask_id} if mask_id is not None else {}
    if name == "psi":
        opts["top_p"] = 1.0  # psi's default nucleus would send it to the sparse draw
    sparse = generate(get_sampler(name, dense_draw=False, **opts), den, SCHEDULE, **kw)
    dense = generate(get_sampler(name, dense_draw=True, **opts), den, SCHEDULE, **kw)
    for a, b in zip(sparse.intermediates, dense.intermediates, strict=True):
        assert torch.equal(a, b)
    assert len({tuple(s.flatten().tolist()) for s in sparse.intermediates}) > 2  # the states move


def test_dense_draw_refuses_filters():
    den = make_denoiser()
    with pytest.raises(ValueError, match="dense=True draws unfiltered"):
        generate(get_sampler("ancestral", top_p=0.8, dense_draw=True), den, SCHEDULE,
                 batch_size=1, seq_len=4, vocab_size=K, steps=2, seed=0)


# ---------------------------------------------------------------------------- truth


@pytest.mark.parametrize("name,mask_id", [("ancestral", None), ("greedy_tail", None),
                                          ("psi", None), ("mdlm", MASK)])
def test_denoiser_that_knows_the_truth_is_reproduced(name, mask_id):
    target = torch.randint(0, K - 1, (4, 16), generator=torch.Generator().manual_seed(2))
    sampler = get_sampler(name, **({} if mask_id is None else {"mask_id": mask_id}))
    out = generate(sampler, truth_denoiser(target, K, mask_id), SCHEDULE, batch_size=4,
                   seq_len=16, vocab_size=K, steps=20, seed=0)
    assert torch.equal(out.tokens, target)
    assert out.nfe == 20


# ---------------------------------------------------------------------------- one step


def hand_posterior(x, z, a_s, a_t):
    """MATH.md section 1, written out for one position."""
    vocab = len(x)
    e_z = torch.zeros(vocab, dtype=torch.float64)
    e_z[z] = 1.0
    a_ts = a_t / a_s
    num = (vocab * a_t * e_z * x + (a_ts - a_t) * e_z + (a_s - a_t) * x
           + (1 - a_ts) * (1 - a_s) / vocab)
    return num / (vocab * a_t * x[z] + 1 - a_t)


def one_step_draws(sampler, log_probs, z0, a_s, a_t, n=40000, seed=0):
    z = torch.full((n, 1), z0, dtype=torch.long)
    lp = log_probs.expand(n, 1, -1)
    time = StepTime(0.5, 0.4, a_t, a_s, "middle", False)
    out = sampler.step(lambda z, a: lp, z, time, generator=torch.Generator().manual_seed(seed))
    return torch.bincount(out.z.flatten(), minlength=log_probs.shape[-1]).double() / n


def chi_square(freq, probs, n):
    keep = probs > 0
    assert float(freq[~keep].sum()) == 0.0, "drew a token of probability zero"
    return float(((freq[keep] - probs[keep]) ** 2 / probs[keep]).sum() * n)


def test_one_ancestral_step_matches_the_posterior_by_hand():
    x = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    a_s, a_t, z0, n = 0.7, 0.4, 2, 40000
    freq = one_step_draws(AncestralSampler(), x.log()[None, None], z0, a_s, a_t, n)
    want = hand_posterior(x, z0, a_s, a_t)
    assert chi_square(freq, want, n) < 20.0  # df = 2: p < 5e-5 under the null


@pytest.mark.parametrize("sampler,mask_id", [
    (PsiSampler(rule=("kappa", 0.4), top_k=3, top_p=1.0), None),
    (PsiSampler(rule=("remdm-cap", 0.2), top_p=0.7), None),
    (PsiSampler(process="absorbing", mask_id=4, rule=("remdm-rescale", 0.5)), 4),
])
def test_one_psi_step_matches_the_dense_distribution(sampler, mask_id):
    x = torch.tensor([0.35, 0.3, 0.2, 0.1, 0.05], dtype=torch.float64)
    if mask_id is not None:
        x = torch.tensor([0.4, 0.3, 0.2, 0.1, 0.0], dtype=torch.float64)
    a_s, a_t, n = 0.7, 0.4, 40000
    for z0 in ([1, 4] if mask_id is not None else [1, 3]):
        lp = x.log()[None, None]
        freq = one_step_draws(sampler, lp, z0, a_s, a_t, n, seed=z0)
        kappa = sampler.rule.kappa(a_s, a_t)
        want = step_probs(get_process(sampler.process, mask_id), lp,
                          torch.tensor([[z0]]), a_s, a_t, kappa=kappa,
                          top_p=sampler.top_p, top_k=sampler.top_k)[0, 0]
        assert abs(float(want.sum()) - 1.0) < 1e-12
        assert chi_square(freq, want, n) < 25.0  # df <= 4


@pytest.mark.parametrize("process,mask_id", [("uniform", None), ("absorbing", 6)])
@pytest.mark.parametrize("kappa", [None, 1.0, 0.3, 0.0])
@pytest.mark.parametrize("top_p,top_k", [(1.0, 0), (0.7, 0), (1.0, 3), (0.8, 4)])
def test_fast_mixture_equals_the_posterior_of_duo_processes(process, mask_id, kappa, top_p, top_k):
    """The sampler draws from a 4-component mixture; expanded, it is the dense step."""
    vocab = 7
    g = torch.Generator().manual_seed(5)
    proc = get_process(process, mask_id)
    z = torch.randint(0, vocab, (3, 6), generator=g)
    logits = torch.randn(3, 6, vocab, generator=g, dtype=torch.float64)
    lp = logits.log_softmax(-1) if mask_id is None else absorbing.subs_log_probs(
        logits, z, mask_id).double().log_softmax(-1)
    for a_s, a_t in [(0.8, 0.3), (1.0, 0.6), (0.5, 0.5)]:
        th = row_thresholds(lp.reshape(-1, vocab), top_p, top_k)
        xz = x_at_z(lp, z, th)
        m = proc.posterior(z, xz, a_s, a_t, vocab)
        if kappa is not None:
            m = m.mix(proc.corrector(z, xz, a_s, a_t, vocab), kappa)
        x = filter_probs(lp.exp(), top_p, top_k)
        dense = step_probs(proc, lp, z, a_s, a_t, kappa=kappa, top_p=top_p, top_k=top_k)
        assert torch.allclose(m.dense(x, z, mask_id), dense, atol=1e-12, rtol=0)
        assert torch.allclose(dense.sum(-1), torch.ones(3, 6, dtype=torch.float64), atol=1e-12)


# ---------------------------------------------------------------------------- psi


@pytest.mark.parametrize("process,mask_id,top_p", [("uniform", None, 1.0), ("uniform", None, 0.8),
                                                   ("absorbing", MASK, 0.9)])
def test_psi_with_kappa_one_is_ancestral(process, mask_id, top_p):
    den = make_denoiser(mask_id=mask_id)
    anc = AncestralSampler(process=process, mask_id=mask_id, top_p=top_p)
    psi = PsiSampler(process=process, mask_id=mask_id, rule=KappaRule("kappa", 1.0),
                     top_p=top_p)
    kw = dict(batch_size=3, seq_len=9, vocab_size=K, steps=15, seed=11)
    a = generate(anc, den, SCHEDULE, **kw).tokens
    b = generate(psi, den, SCHEDULE, **kw).tokens
    assert torch.equal(a, b)


def remdm_posterior(x, z, a_s, a_t, sigma, mask_id):
    """ReMDM's remasking posterior (Wang et al., 2025), per position."""
    vocab = x.shape[-1]
    e_mask = torch.zeros(vocab, dtype=torch.float64)
    e_mask[mask_id] = 1.0
    out = torch.empty(z.shape + (vocab,), dtype=torch.float64)
    for b in range(z.shape[0]):
        for i in range(z.shape[1]):
            if z[b, i] != mask_id:
                delta = torch.zeros(vocab, dtype=torch.float64)
                delta[z[b, i]] = 1.0
                out[b, i] = (1 - sigma) * delta + sigma * e_mask
            else:
                out[b, i] = ((a_s - (1 - sigma) * a_t) / (1 - a_t) * x[b, i]
                             + (1 - a_s - sigma * a_t) / (1 - a_t) * e_mask)
    return out


@pytest.mark.parametrize("mode", ["remdm-cap", "remdm-rescale", "remdm-const"])
def test_psi_on_the_masked_process_is_remdm(mode):
    vocab, mask_id, eta = 6, 5, 0.08
    g = torch.Generator().manual_seed(4)
    z = torch.randint(0, vocab, (2, 8), generator=g)
    z[0, :3] = mask_id
    lp = absorbing.subs_log_probs(torch.randn(2, 8, vocab, generator=g), z,
                                 mask_id).double().log_softmax(-1)
    proc = get_process("absorbing", mask_id)
    for a_s, a_t in [(0.6, 0.3), (0.9, 0.85), (0.2, 0.05)]:
        sigma_max = min(1.0, (1 - a_s) / a_t)
        sigma = {"remdm-cap": min(eta, sigma_max), "remdm-rescale": eta * sigma_max,
                 "remdm-const": eta}[mode]
        assert sigma <= 1 - a_s  # no clipping of kappa
        kappa = KappaRule(mode, eta).kappa(a_s, a_t)
        assert math.isclose(kappa, 1 - sigma / (1 - a_s), rel_tol=1e-12)
        got = step_probs(proc, lp, z, a_s, a_t, kappa=kappa)
        want = remdm_posterior(lp.exp(), z, a_s, a_t, sigma, mask_id)
        assert torch.allclose(got, want, atol=1e-12, rtol=0)


def test_kappa_rules():
    assert KappaRule("kappa", 0.3).kappa(0.5, 0.2) == 0.3
    assert KappaRule("remdm-const", 0.9).kappa(0.5, 0.2) == 0.0  # clipped
    assert KappaRule("remdm-rescale", 0.5).kappa(1.0, 0.9) == 1.0  # last step
    with pytest.raises(ValueError, match="valid modes"):
        KappaRule("nope", 0.1)
    with pytest.raises(ValueError, match="kappa=1.5"):
        KappaRule("kappa", 1.5)


# ---------------------------------------------------------------------------- greedy tail


def test_greedy_tail_is_deterministic_given_the_last_state():
    den = make_denoiser()
    z = torch.randint(0, K, (4, 10), generator=torch.Generator().manual_seed(0))
    time = StepTime(0.01, 1e-5, 0.99, 1.0, "low", True)
    sampler = get_sampler("greedy_tail")
    a = sampler.step(den, z, time, generator=torch.Generator().manual_seed(1)).z
    b = sampler.step(den, z, time, generator=torch.Generator().manual_seed(2)).z
    assert torch.equal(a, b)
    assert torch.equal(a, den(z, torch.full((4,), 0.99)).argmax(-1))
    c = get_sampler("ancestral").step(den, z, time, generator=torch.Generator().manual_seed(2)).z
    assert not torch.equal(a, c)


# ---------------------------------------------------------------------------- filters


def kept(probs):
    return set(torch.nonzero(probs[0, 0] > 0).flatten().tolist())


def test_top_k_and_top_p_keep_the_right_sets():
    p = torch.tensor([[[0.15, 0.5, 0.05, 0.2, 0.1]]], dtype=torch.float64)
    assert kept(top_k_filter(p, 2)) == {1, 3}
    assert kept(top_k_filter(p, 0)) == set(range(5))
    assert kept(top_p_filter(p, 0.45)) == {1}
    assert kept(top_p_filter(p, 0.6)) == {1, 3}
    assert kept(top_p_filter(p, 0.75)) == {0, 1, 3}
    assert kept(top_p_filter(p, 1.0)) == set(range(5))
    assert kept(filter_probs(p, top_p=0.8, top_k=3)) == {1, 3}  # 0.59, 0.24 of the top 3
    out = top_p_filter(p, 0.6)
    assert torch.allclose(out.sum(-1), torch.ones(1, 1, dtype=torch.float64))
    assert torch.allclose(out[0, 0, 1], torch.tensor(0.5 / 0.7, dtype=torch.float64))
    with pytest.raises(ValueError, match="top_p=0"):
        top_p_filter(p, 0.0)


@pytest.mark.parametrize("vocab,scale", [(40, 1.0), (3000, 0.3), (3000, 4.0)])
@pytest.mark.parametrize("top_p,top_k", [(0.9, 0), (0.3, 0), (1.0, 7), (0.9, 100)])
def test_fast_thresholds_agree_with_the_dense_filters(vocab, scale, top_p, top_k):
    """Covers the partial top-k window, the histogram and the sort fallback."""
    lp = (scale * torch.randn(8, vocab, generator=torch.Generator().manual_seed(0),
                              dtype=torch.float64)).log_softmax(-1)
    lp[0] = -math.log(vocab)  # a flat row: everything tied
    th = row_thresholds(lp, top_p, top_k)
    fast = torch.where(lp >= th.log_tau[:, None], (lp - th.log_mass[:, None]).exp(), 0.0)
    dense = filter_probs(lp.exp()[None], top_p, top_k)[0]
    assert torch.equal(fast > 0, dense > 0)
    assert torch.allclose(fast, dense, atol=1e-12, rtol=0)


def test_draws_from_a_broad_nucleus_follow_the_filtered_distribution():
    """A row whose nucleus exceeds the top-k window goes through the histogram and the
    full-row draw; the last step (alpha_s = 1, alpha_t ~ 0) draws almost only from x."""
    vocab, n = 200, 60000
    lp = (0.3 * torch.randn(vocab, generator=torch.Generator().manual_seed(3),
                            dtype=torch.float64)).log_softmax(-1)
    sampler = AncestralSampler(top_p=0.9)
    z = torch.zeros(n, 1, dtype=torch.long)
    time = StepTime(1.0, 1e-5, 1e-9, 1.0, "low", True)
    out = sampler.step(lambda z, a: lp.expand(n, 1, vocab), z, time,
                       generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(out.z.flatten(), minlength=vocab).double() / n
    want = step_probs(get_process("uniform"), lp[None, None], z[:1], 1.0, 1e-9, top_p=0.9)[0, 0]
    assert 100 < int((want > 0).sum()) < vocab  # wider than the 64-token window
    assert chi_square(freq, want, n) < 300.0  # df ~ 180: mean 180, sd 19


@pytest.mark.parametrize("top_p", [0.9, 0.25])
def test_proposals_from_block_masses_follow_the_filtered_distribution(top_p):
    """Rows over several token blocks draw by proposal and acceptance (most of the
    proposals are rejected at top-p 0.25, which then go to the exact redraw)."""
    vocab, n = 700, 60000
    lp = (1.5 * torch.randn(vocab, generator=torch.Generator().manual_seed(4))).log_softmax(-1)
    th = row_thresholds(lp[None], top_p)
    assert th.block_mass is not None and th.block_mass.shape == (1, 3)
    m = Mixture(keep=0.0, mask=0.0, uniform=0.0, x=1.0)
    z = torch.zeros(n, 1, dtype=torch.long)
    flat = lp.expand(n, vocab)[:, None]
    ths = Thresholds(th.log_tau.expand(n), th.log_mass.expand(n), block_mass=th.block_mass.expand(n, 3))
    out = draw(m, flat, z, mask_id=None, uses_noise=True, thresholds=ths, top_p=top_p, top_k=0,
               generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(out.flatten(), minlength=vocab).double() / n
    want = filter_probs(lp.double().exp()[None, None], top_p)[0, 0]
    kept = int((want > 0).sum())
    assert kept > 3
    # chi-square with kept - 1 degrees of freedom: mean kept - 1, sd sqrt(2 (kept - 1))
    assert chi_square(freq, want, n) < kept + 6 * math.sqrt(2 * kept)


def test_pick_draws_blocks_by_their_mass_and_tokens_inside_them():
    weights = torch.zeros(2, 600, dtype=torch.float64)
    weights[:, 10] = weights[:, 300] = weights[:, 599] = 1.0
    mass = block_sums(weights)
    assert torch.equal(mass, torch.tensor([[1.0, 1.0, 1.0]] * 2, dtype=torch.float64))
    u = torch.tensor([0.1, 0.5], dtype=torch.float64)
    got = pick(mass, u, 600, lambda cols: weights.gather(1, cols))
    assert got.tolist() == [10, 300]
    # the last block is partial: ids past the vocabulary never come out
    assert pick(mass, torch.tensor([0.99, 1 - 2**-53], dtype=torch.float64), 600,
                lambda cols: weights.gather(1, cols)).tolist() == [599, 599]


# ---------------------------------------------------------------------------- caching


def test_mdlm_caching_saves_evaluations_and_changes_nothing():
    den = make_denoiser(mask_id=MASK, time_conditioned=False)
    kw = dict(batch_size=2, seq_len=6, vocab_size=K, steps=64, seed=5)
    plain = generate(get_sampler("mdlm", mask_id=MASK), den, SCHEDULE, **kw)
    cached = generate(get_sampler("mdlm", mask_id=MASK, cache_predictions=True), den,
                      SCHEDULE, **kw)
    assert torch.equal(plain.tokens, cached.tokens)
    assert plain.nfe == 64 and cached.nfe < 64


def test_caching_refuses_a_time_conditioned_denoiser():
    sampler = get_sampler("mdlm", mask_id=MASK, cache_predictions=True)
    with pytest.raises(ValueError, match="time conditioning"):
        generate(sampler, make_denoiser(mask_id=MASK), SCHEDULE, batch_size=1, seq_len=4,
                 vocab_size=K, steps=4, seed=0)


# ---------------------------------------------------------------------------- AR


def test_ar_keeps_the_prefix_and_is_reproducible():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(K, K, generator=g)

    def next_token_logits(ids):
        return table[ids]

    prefix = torch.tensor([3, 1, 4])
    kw = dict(batch_size=3, seq_len=9, prefix=prefix, top_p=0.9, top_k=5)
    a = generate_ar(next_token_logits, seed=1, **kw)
    b = generate_ar(next_token_logits, seed=1, **kw)
    assert torch.equal(a.tokens, b.tokens) and a.tokens.shape == (3, 9) and a.nfe == 6
    assert bool((a.tokens[:, :3] == prefix).all())
    greedy = generate_ar(next_token_logits, batch_size=1, seq_len=5, bos_id=0, temperature=0.0)
    for i in range(1, 5):
        assert greedy.tokens[0, i] == table[greedy.tokens[0, i - 1]].argmax()
    with pytest.raises(ValueError, match="longer than seq_len=2"):
        generate_ar(next_token_logits, batch_size=1, seq_len=2, prefix=prefix)


# ---------------------------------------------------------------------------- errors


def test_unknown_sampler_lists_the_valid_ones():
    with pytest.raises(ValueError, match="ancestral.*greedy_tail.*mdlm.*psi"):
        get_sampler("nucleus")


def test_bad_sampler_options():
    with pytest.raises(ValueError, match="mask_id"):
        get_sampler("mdlm")
    with pytest.raises(ValueError, match="unknown tail"):
        get_sampler("ancestral", tail="median")
    with pytest.raises(ValueError, match="bad options"):
        get_sampler("ancestral", temperature=0.5)


@pytest.mark.parametrize("steps", [0, -3])
def test_steps_below_one(steps):
    with pytest.raises(ValueError, match=f"steps={steps}"):
        time_grid(steps)
    with pytest.raises(ValueError, match=f"steps={steps}"):
        generate(get_sampler("ancestral"), make_denoiser(), SCHEDULE, batch_size=1,
                 seq_len=4, vocab_size=K, steps=steps)


def test_prefix_longer_than_the_sequence():
    with pytest.raises(ValueError, match="prefix of 5 tokens is longer than seq_len=4"):
        Conditioning.prefix(torch.arange(5), 4)


def test_denoiser_with_the_wrong_vocabulary():
    with pytest.raises(ValueError, match="returned 12 classes but vocab_size=6"):
        generate(get_sampler("ancestral"), make_denoiser(), SCHEDULE, batch_size=1,
                 seq_len=4, vocab_size=6, steps=2)


@pytest.mark.parametrize("vocab", [7, 256, 1000, 3001])
def test_blocked_draw_is_the_inverse_cdf_of_the_weights(vocab):
    """The two-level draw picks the same token as a dense inverse CDF with the same
    uniforms, and never a zero-weight token (whole zero blocks included)."""
    g = torch.Generator().manual_seed(vocab)
    w = torch.rand(64, vocab, generator=g)
    w[w < 0.5] = 0.0
    w[:, : min(300, vocab - 1)] = 0.0  # a zero first block
    w[:, -1] = 1.0  # every row has some weight
    u = torch.rand(64, dtype=torch.float64, generator=g)
    picked = blocked_draw(w, u)
    assert bool((w.gather(1, picked[:, None]) > 0).all())
    # Block sums are float32, so a uniform within rounding of a boundary may differ.
    assert (picked == dense_inverse_cdf(w.double(), u)).double().mean() > 0.95


def test_blocked_draw_stays_inside_the_vocabulary_with_denormal_weights():
    w = torch.zeros(1, 600, dtype=torch.float64)
    w[0, 511] = w[0, 599] = 5e-324
    for u in (0.0, 0.3, 0.9, 1.0 - 2**-53):
        assert int(blocked_draw(w, torch.tensor([u], dtype=torch.float64))) in (511, 599)


def test_top_k_with_top_p_within_rounding_of_one_keeps_only_the_top_k():
    lp = (2 * torch.randn(50, 100, generator=torch.Generator().manual_seed(0))).log_softmax(-1)
    th = row_thresholds(lp, 1 - 2**-53, 5)
    assert int((lp >= th.log_tau[:, None]).sum(-1).max()) == 5


def test_top_p_of_uniform_rows_with_a_masked_token_keeps_every_finite_token():
    lp = torch.full((3, 20000), -math.log(19999))
    lp[:, 7] = float("-inf")
    th = row_thresholds(lp, 0.9)
    assert torch.equal(th.log_tau, lp[:, 0])
    assert torch.allclose(th.log_mass, torch.zeros(3, dtype=torch.float64), atol=1e-5)


@pytest.mark.parametrize("bits", [0x7FC00000, -4194304])  # NaN, and NaN with the sign bit set
def test_nan_log_probs_give_a_clear_error(bits):
    lp = torch.randn(2, 300).log_softmax(-1)
    lp[1, 3] = torch.tensor([bits], dtype=torch.int32).view(torch.float32)[0]
    assert bool(lp[1, 3].isnan())
    with pytest.raises(ValueError, match="NaN log-probabilities"):
        row_thresholds(lp, 0.9)


def test_thresholds_of_no_rows():
    th = row_thresholds(torch.empty(0, 300), 0.9)
    assert th.log_tau.shape == (0,) and th.block_mass.shape == (0, 2)


def test_top_p_thresholds_of_a_large_vocabulary_in_float32():
    """The bucketed histogram at K = 50,257 in float32, against the dense sort."""
    vocab = 50257
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, vocab, generator=g) * torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0, 0.0])[:, None]
    lp = logits.log_softmax(-1)
    th = row_thresholds(lp, 0.9)
    dense = filter_probs(lp.exp()[None], 0.9)[0]
    fast = torch.where(lp >= th.log_tau[:, None], (lp.double() - th.log_mass[:, None]).exp(), 0.0)
    assert torch.equal(fast > 0, dense > 0)
    # float32 log-probs sum to one only to ~1e-6; the dense reference renormalises.
    assert torch.allclose(fast, dense, atol=0, rtol=1e-5)


def test_top_p_thresholds_of_bfloat16_log_probs_match_their_float32_copy():
    lp = (2.0 * torch.randn(4, 5000, generator=torch.Generator().manual_seed(2))).log_softmax(-1)
    low = lp.bfloat16()
    th, ref = row_thresholds(low, 0.9), row_thresholds(low.float(), 0.9)
    assert torch.equal(th.log_tau.float(), ref.log_tau) and torch.allclose(th.log_mass, ref.log_mass)


def _filtered(lp, th):
    return torch.where(lp >= th.log_tau[:, None], (lp.double() - th.log_mass[:, None]).exp(), 0.0)


def test_approximate_nucleus_is_a_superset_within_its_total_variation_bound():
    """nucleus="approx" keeps the whole crossing bucket: on softmaxes of random logits at
    several temperatures and Zipf-like rows, its distance to the exact filter stays
    under nucleus_tv_bound and small (docs/benchmarks.md quotes these numbers)."""
    from duo.samplers.filters import nucleus_tv_bound

    vocab = 20000
    g = torch.Generator().manual_seed(0)
    rows = [(scale * torch.randn(4, vocab, generator=g)).log_softmax(-1) for scale in (0.5, 1.0, 2.0, 4.0)]
    ranks = torch.arange(1, vocab + 1, dtype=torch.float32)
    for s in (0.8, 1.0, 1.2):  # Zipf-like, tokens in a random order
        rows.append((-s * ranks.log())[torch.randperm(vocab, generator=g)].log_softmax(-1)[None])
    lp = torch.cat(rows)
    for top_p in (0.5, 0.9, 0.95):
        exact, approx = row_thresholds(lp, top_p), row_thresholds(lp, top_p, nucleus="approx")
        pe, pa = _filtered(lp, exact), _filtered(lp, approx)
        assert bool(((pe > 0) <= (pa > 0)).all())  # a superset of the exact nucleus
        tv = 0.5 * (pe - pa).abs().sum(-1)
        assert bool((tv <= nucleus_tv_bound(lp, top_p) + 1e-6).all())
        assert float(tv.max()) < 0.03 and float(tv.median()) < 0.01
        assert torch.allclose(pa.sum(-1), torch.ones(lp.shape[0], dtype=torch.float64), atol=1e-5)


def test_approximate_nucleus_equals_the_exact_one_when_buckets_separate_the_tokens():
    lp = torch.tensor([[0.4, 0.25, 0.15, 0.1, 0.06, 0.04]], dtype=torch.float64).log()
    for top_p in (0.3, 0.6, 0.8, 0.9, 0.97):
        exact, approx = row_thresholds(lp, top_p), row_thresholds(lp, top_p, nucleus="approx")
        assert torch.allclose(_filtered(lp, exact), _filtered(lp, approx), atol=1e-12, rtol=0)


@pytest.mark.parametrize("nucleus", ["exact", "approx"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_top_p_thresholds_do_not_depend_on_how_rows_are_chunked(monkeypatch, nucleus, dtype):
    """Rows go through the histogram in chunks ("approx" reads several chunks'
    histograms at once); every row gets the thresholds and block masses it gets alone."""
    from duo.samplers import filters

    vocab = 700
    g = torch.Generator().manual_seed(5)
    scale = torch.tensor([0.3, 1.0, 3.0, 8.0]).repeat(8)[:, None]
    lp = (scale * torch.randn(32, vocab, generator=g)).log_softmax(-1).to(dtype)
    monkeypatch.setattr(filters, "_CPU_TOP_P_CHUNK", 3 * vocab)  # 3 rows a chunk
    monkeypatch.setattr(filters, "_HIST_ENTRIES", 7 << (8 + filters._MANTISSA_BITS[nucleus]))  # 2 chunks a group
    th = row_thresholds(lp, 0.9, nucleus=nucleus)
    alone = [row_thresholds(lp[i:i + 1], 0.9, nucleus=nucleus) for i in range(lp.shape[0])]
    assert torch.equal(th.log_tau, torch.cat([a.log_tau for a in alone]))
    # exp2 ("approx") may round a token's last bit differently in its vectorised loop and
    # its scalar tail, that is, by where the token falls in a chunk.
    assert torch.allclose(th.log_mass, torch.cat([a.log_mass for a in alone]), atol=1e-8, rtol=0)
    assert torch.equal(th.block_mass, torch.cat([a.block_mass for a in alone]))


def test_approximate_nucleus_keeps_the_whole_bucket_where_the_mass_reaches_top_p():
    """nucleus="approx" against a float64 reference of its definition: the bucket (float32
    exponent and 5 mantissa bits of p) where the mass from the top reaches top_p, kept
    whole. Its probabilities come from exp2, so rows whose mass reaches top_p within
    1e-5 of a bucket edge may differ; they are left out."""
    vocab = 50257
    g = torch.Generator().manual_seed(6)
    scale = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0]).repeat(4)[:, None]
    lp = (scale * torch.randn(20, vocab, generator=g)).log_softmax(-1)
    th = row_thresholds(lp, 0.9, nucleus="approx")
    p = lp.double().exp()
    bucket = lp.exp().view(torch.int32) >> 18
    hist = torch.zeros(20, 1 << 13, dtype=torch.float64).scatter_add_(1, bucket.long(), p)
    from_top = hist.flip(-1).cumsum(-1)
    j = (from_top < 0.9).sum(-1, keepdim=True)
    crossing = (1 << 13) - 1 - j
    clear = ((from_top.gather(1, j) - 0.9 > 1e-5) & (0.9 - from_top.gather(1, (j - 1).clamp_min(0)) > 1e-5))
    kept = (bucket >= crossing)
    assert int(clear.sum()) >= 15
    rows = clear.squeeze(1)
    assert torch.equal((lp >= th.log_tau[:, None])[rows], kept[rows])
    assert torch.allclose(th.log_mass[rows], from_top.gather(1, j).squeeze(1)[rows].log(), atol=1e-6, rtol=0)


def test_psi_with_the_approximate_nucleus_samples_and_checks_its_option(monkeypatch):
    import duo.samplers.ancestral as ancestral

    seen = []
    real = ancestral.row_thresholds

    def spy(*args, **kwargs):  # the option must reach the filter, not stop at the constructor
        seen.append(args[4] if len(args) > 4 else kwargs.get("nucleus"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ancestral, "row_thresholds", spy)
    den = make_denoiser()
    sampler = get_sampler("psi", nucleus="approx", top_p=0.8)
    kw = dict(batch_size=2, seq_len=8, vocab_size=K, steps=6, seed=3)
    a = generate(sampler, den, SCHEDULE, **kw).tokens
    assert torch.equal(a, generate(sampler, den, SCHEDULE, **kw).tokens)
    assert seen and set(seen) == {"approx"}
    with pytest.raises(ValueError, match="unknown nucleus"):
        get_sampler("psi", nucleus="fast")
