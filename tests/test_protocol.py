"""protocol="paper": the official Duo code's sampling grid, Psi kappas, Gen PPL scoring and
the diffusion-only perplexity (MATH.md section 11), next to the library's own protocol."""

from __future__ import annotations

import math

import pytest
import torch

from duo.evaluation import generative_perplexity
from duo.evaluation.genppl import decode_keeping_eos, paper_token_mask
from duo.samplers import AncestralSampler, KappaRule, PsiSampler, generate, time_grid
from duo.samplers.grid import paper_segments, paper_time_profile
from duo.samplers.psi import KAPPA_RULES, paper_kappas, rule_from_official, segment_kappas
from duo.schedules import get_schedule

SCHEDULE = get_schedule("loglinear")  # alpha = 1 - (1 - 1e-3) t
EPS = 1e-5


def alpha_of(t: float) -> float:
    return 1.0 - (1.0 - 1e-3) * t


class Recorder:
    """A deterministic toy denoiser that logs every call: the alpha it gets, its input z and
    the log-probs it returns (a fixed function of the token and the position)."""

    def __init__(self, vocab: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.table = 2.0 * torch.randn(vocab, vocab, generator=g, dtype=torch.float64)
        self.pos = torch.randn(64, vocab, generator=g, dtype=torch.float64)
        self.calls: list[tuple[float, torch.Tensor, torch.Tensor]] = []

    def __call__(self, z, alpha_t):
        out = (self.table[z] + self.pos[: z.shape[1]]).log_softmax(-1)
        self.calls.append((float(alpha_t[0]), z.clone(), out))
        return out


# ------------------------------------------------------------------ 1. sampling grid
@pytest.mark.parametrize("steps", [1, 4, 9])
@pytest.mark.parametrize("tail", ["ancestral", "greedy"])
def test_paper_protocol_takes_steps_plus_one_calls_on_the_official_grid(steps, tail):
    K = 6
    paper, ours = Recorder(K), Recorder(K)
    sampler = AncestralSampler(tail=tail)
    out = generate(sampler, paper, SCHEDULE, batch_size=3, seq_len=5, vocab_size=K, steps=steps,
                   seed=0, protocol="paper", return_intermediates=True)
    assert out.nfe == steps + 1 == len(paper.calls)
    assert len(out.intermediates) == steps + 2
    # The calls happen at t = linspace(1, eps, N + 1): N posterior steps, then eps once more.
    t = torch.linspace(1.0, EPS, steps + 1, dtype=torch.float64).tolist()
    called = [a for a, _, _ in paper.calls]
    assert called == pytest.approx([alpha_of(x) for x in t], abs=1e-7)  # alpha_t goes in as float32
    assert called[-1] == pytest.approx(alpha_of(EPS), abs=1e-7)

    # The library's own protocol: N calls on the same grid, the last one removing the noise.
    mine = generate(sampler, ours, SCHEDULE, batch_size=3, seq_len=5, vocab_size=K, steps=steps, seed=0)
    assert mine.nfe == steps == len(ours.calls)
    assert [a for a, _, _ in ours.calls] == pytest.approx([alpha_of(x) for x in t[:-1]], abs=1e-7)


def test_paper_step_times_are_n_posterior_steps_then_the_noise_removal():
    N = 4
    times = time_grid(N, eps=EPS).step_times(SCHEDULE, "paper")
    t = torch.linspace(1.0, EPS, N + 1, dtype=torch.float64).tolist()
    assert len(times) == N + 1
    for i, st in enumerate(times[:-1]):
        assert (st.t, st.s, st.last) == (t[i], t[i + 1], False)
        assert st.alpha_t == pytest.approx(alpha_of(t[i]), abs=1e-15)
        assert st.alpha_s == pytest.approx(alpha_of(t[i + 1]), abs=1e-15)
    last = times[-1]
    assert (last.t, last.s, last.alpha_s, last.last) == (EPS, 0.0, 1.0, True)
    assert last.alpha_t == pytest.approx(alpha_of(EPS), abs=1e-15)
    ours = time_grid(N, eps=EPS).step_times(SCHEDULE)
    assert len(ours) == N and ours[-1].last and not any(s.last for s in ours[:-1])


def test_unknown_protocol_is_a_one_line_error():
    with pytest.raises(ValueError, match="unknown protocol 'official'.*ours, paper") as err:
        generate(AncestralSampler(), Recorder(4), SCHEDULE, batch_size=1, seq_len=2, vocab_size=4,
                 steps=2, protocol="official")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="unknown protocol"):
        time_grid(2).step_times(SCHEDULE, "Paper")


def test_paper_greedy_tail_is_the_argmax_of_the_call_at_eps():
    K = 7
    rec = Recorder(K, seed=3)
    out = generate(AncestralSampler(tail="greedy"), rec, SCHEDULE, batch_size=4, seq_len=6,
                   vocab_size=K, steps=5, seed=1, protocol="paper", return_intermediates=True)
    alpha, z_in, log_probs = rec.calls[-1]
    assert alpha == pytest.approx(alpha_of(EPS), abs=1e-7)
    assert torch.equal(z_in, out.intermediates[-2])  # the state after the N posterior steps
    assert torch.equal(out.tokens, log_probs.argmax(-1))


def brute_force_clean_posterior(x_probs, z, alpha_t):
    """p(x_0 = j | z_t) with alpha_s = 1, written out: x_theta(j) q_t(z | j), normalised,
    with q_t(z | j) = alpha_t [z = j] + (1 - alpha_t) / K."""
    K = x_probs.shape[-1]
    out = torch.empty_like(x_probs)
    for b in range(z.shape[0]):
        for pos in range(z.shape[1]):
            w = [float(x_probs[b, pos, j]) * (alpha_t * (int(z[b, pos]) == j) + (1 - alpha_t) / K)
                 for j in range(K)]
            out[b, pos] = torch.tensor(w, dtype=torch.float64) / sum(w)
    return out


def test_paper_ancestral_tail_draws_from_the_alpha_s_1_posterior():
    """At alpha_t = alpha(eps) the evidence of z dominates, so use a made-up alpha_t as well
    (the removal step is the same function of alpha_t)."""
    K, n = 5, 60_000
    log_x = torch.tensor([[0.05, 0.4, 0.1, 0.3, 0.15]], dtype=torch.float64).log()
    sampler = AncestralSampler()
    last = time_grid(3, eps=EPS).step_times(SCHEDULE, "paper")[-1]
    for alpha_t in (last.alpha_t, 0.3):
        st = type(last)(last.t, last.s, alpha_t, last.alpha_s, last.phase, last.last)
        z = torch.full((n, 1), 2, dtype=torch.long)
        expected = brute_force_clean_posterior(log_x.exp()[None], z[:1], alpha_t)[0, 0]
        out = sampler.step(lambda zz, a: log_x.expand(zz.shape[0], 1, K), z, st,
                           generator=torch.Generator().manual_seed(0))
        freq = torch.bincount(out.z.reshape(-1), minlength=K).double() / n
        sd = (expected * (1 - expected) / n).sqrt()
        assert (freq - expected).abs().max() <= 5 * sd.max() + 1e-12, (freq, expected)
    # The brute-force posterior at alpha_t = 0.3 by hand for z = 2:
    # weights x_j (0.7 / 5) plus 0.3 x_2 at j = 2.
    w = [0.05 * 0.14, 0.4 * 0.14, 0.1 * 0.44, 0.3 * 0.14, 0.15 * 0.14]
    assert expected.tolist() == pytest.approx([v / sum(w) for v in w], rel=1e-12)


def test_paper_psi_removal_step_is_plain_posterior():
    # kappa = 1 at the noise removal: the Psi-sampler's last draw equals ancestral's.
    K = 6
    runs = []
    for sampler in (AncestralSampler(top_p=0.9), PsiSampler(rule=("paper-max-rescale", 0.05))):
        rec = Recorder(K)
        last = time_grid(2, eps=EPS).step_times(SCHEDULE, "paper")[-1]
        z = torch.randint(0, K, (3, 5), generator=torch.Generator().manual_seed(0))
        runs.append(sampler.step(rec, z, last, generator=torch.Generator().manual_seed(1)).z)
    assert torch.equal(*runs)


# ------------------------------------------------------------------ 2. Psi kappas
ALPHAS = [0.0, 0.2, 0.5, 0.8, 0.95]
ETA = 0.4
# By hand, r = (1 - a_s) / a_t per step (a_t -> a_s): -, 2.5, 0.4, 0.0625.
# capped sigma = min(eta, r) (eta where a_t = 0): 0.4, 0.4, 0.4, 0.0625
#   kappa = clip(1 - sigma / (1 - a_s)): 1 - .4/.8, 1 - .4/.5, 1 - .4/.2 -> 0, 1 - .0625/.05 -> 0
# rescale sigma = eta min(eta, r) (eta where a_t = 0): 0.4, 0.16, 0.16, 0.025
#   kappa: 1 - .4/.8, 1 - .16/.5, 1 - .16/.2, 1 - .025/.05
# and each segment's last kappa is 1.
CAPPED = [0.5, 0.2, 0.0, 0.0, 1.0]
RESCALE = [0.5, 0.68, 0.2, 0.5, 1.0]
REMDM_RESCALE = [0.5, 0.2, 0.2, 0.5]  # ReMDM's eta * min(1, r): 0.4, 0.4, 0.16, 0.025


def test_paper_max_capped_and_max_rescale_kappas_by_hand():
    a = torch.tensor(ALPHAS, dtype=torch.float64)
    capped = segment_kappas(rule_from_official(f"max-capped-{ETA}"), a)
    rescale = segment_kappas(rule_from_official(f"max-rescale-{ETA}"), a)
    assert capped.tolist() == pytest.approx(CAPPED, abs=1e-12)
    assert rescale.tolist() == pytest.approx(RESCALE, abs=1e-12)
    # The per-step rules give the same numbers (without the segment's final 1).
    steps = list(zip(ALPHAS[:-1], ALPHAS[1:]))
    assert [KappaRule("paper-max-rescale", ETA).kappa(s, t) for t, s in steps] == pytest.approx(RESCALE[:-1])
    assert [KappaRule("paper-max-capped", ETA).kappa(s, t) for t, s in steps] == pytest.approx(CAPPED[:-1])
    # ReMDM's rescale (the library's "remdm-rescale") differs where eta < r.
    assert [KAPPA_RULES["remdm-rescale"](ETA, s, t) for t, s in steps] == pytest.approx(REMDM_RESCALE)


def test_paper_kappas_on_a_log_linear_grid_against_numpy():
    np = pytest.importorskip("numpy")
    N, eta = 6, 0.05
    t = np.linspace(1.0, EPS, N + 1)
    a = 1.0 - (1.0 - 1e-3) * t
    a_t, a_s = a[:-1], a[1:]
    sigma = eta * np.minimum(eta, (1 - a_s) / a_t)
    want = np.append(np.clip(1 - sigma / (1 - a_s), 0, 1), 1.0)
    grid = paper_time_profile(N, eps=EPS)
    got = segment_kappas(rule_from_official(f"max-rescale-{eta}"), SCHEDULE.alpha(grid.t))
    assert got.tolist() == pytest.approx(want.tolist(), abs=1e-12)


def test_paper_kappas_per_phase_segment():
    # Loop profile: 8 steps, 9 points split round(.3 * 9) = 3 high, 3 middle, 3 low.
    assert paper_segments(8, 0.3, 0.3) == (3, 3, 3)
    grid = paper_time_profile(8, eps=EPS, hold_t=0.5, high_frac=0.3, middle_frac=0.3)
    assert grid.t.tolist() == pytest.approx([1.0, 0.75, 0.5, 0.5, 0.5, 0.5, 0.5, (0.5 + EPS) / 2, EPS])
    assert grid.phase == ("high",) * 3 + ("middle",) * 3 + ("low",) * 2
    alphas = SCHEDULE.alpha(grid.t)
    eta = 0.3
    kappas = paper_kappas(alphas, (3, 3, 3), (rule_from_official("pure-posterior"),
                                                rule_from_official(f"constant-remdm-{eta}"),
                                                rule_from_official("pure-pc")))
    a_mid = alpha_of(0.5)
    held = 1 - eta / (1 - a_mid)  # sigma = eta at a held step
    assert kappas.tolist() == pytest.approx([1, 1, 1, held, held, 1, 0, 0, 0], abs=1e-12)
    with pytest.raises(ValueError, match="unknown official psi mode"):
        rule_from_official("max-squash-0.1")
    with pytest.raises(ValueError, match="kappa=1.5"):
        rule_from_official("constant-1.5")


def test_psi_sampler_runs_with_the_paper_rule_on_the_paper_grid():
    K = 6
    rec = Recorder(K)
    out = generate(PsiSampler(rule=("paper-max-rescale", 0.05)), rec, SCHEDULE, batch_size=2,
                   seq_len=4, vocab_size=K, steps=5, seed=0, protocol="paper")
    assert out.nfe == 6 and out.tokens.shape == (2, 4)


# ------------------------------------------------------------------ 3. Gen PPL scoring
EOS_TEXT = "<|endoftext|>"
P_NEXT, P_OTHER = 5 / 8, 1 / 8  # the toy judge: after token i, i + 1 (mod 4) has 5/8


class CharJudge:
    """Ids a=0, b=1, c=2, EOS=3 (written <|endoftext|>); a bigram judge where token i is
    followed by (i + 1) % 4 with probability 5/8 and by each other token with 1/8."""

    name = "char-bigram"
    bos_id, eos_id, pad_id, unk_id = None, 3, 3, None

    def __init__(self, context_size=64):
        self.context_size = context_size

    def encode(self, text):
        ids = []
        for k, part in enumerate(text.split(EOS_TEXT)):
            ids += [3] if k else []
            ids += ["abc".index(ch) for ch in part]
        return ids

    def decode(self, ids):
        return "".join("abc"[i] for i in ids if i != 3)

    def logits(self, ids, attention_mask):
        probs = torch.full((4, 4), P_OTHER)
        probs[torch.arange(4), (torch.arange(4) + 1) % 4] = P_NEXT
        return probs.log()[ids]


HIT, MISS = -math.log(P_NEXT), -math.log(P_OTHER)


@pytest.mark.parametrize("text, mask, nll", [
    # EOS inside: the first EOS counts, the second does not, later tokens do.
    ("abc" + EOS_TEXT + "ab" + EOS_TEXT + "c", [1, 1, 1, 1, 1, 0, 1], [HIT] * 5 + [MISS]),
    # EOS first: it is the chunk's first EOS (never scored, as the first token), so the next one is not.
    (EOS_TEXT + "ab" + EOS_TEXT + "c", [1, 1, 0, 1], [HIT, HIT, MISS]),
    # No EOS: every token after the first.
    ("abca", [1, 1, 1], [HIT, HIT, MISS]),
])
def test_paper_gen_ppl_known_answers(text, mask, nll):
    judge = CharJudge()
    ids = torch.tensor([judge.encode(text)])
    assert paper_token_mask(ids, 3)[0].int().tolist() == mask
    out = generative_perplexity([text], judge, protocol="paper")
    assert out.num_tokens == sum(mask) and out.protocol == "paper"
    assert out.mean_nll == pytest.approx(sum(nll) / len(nll), rel=1e-6)
    assert out.gen_ppl == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-6)


def test_paper_gen_ppl_splits_texts_longer_than_the_judge_context():
    # [a b c a | b c a b]: chunks of 4, the first token of each not scored, the pair across
    # the cut (a -> b) not scored either.
    judge = CharJudge(context_size=4)
    out = generative_perplexity(["abcabcab"], judge, protocol="paper")
    nll = [HIT, HIT, MISS] + [HIT, MISS, HIT]
    assert out.num_tokens == 6
    assert out.mean_nll == pytest.approx(sum(nll) / 6, rel=1e-6)
    # A last chunk of one token scores nothing: 5 ids -> [a b c a | b].
    short = generative_perplexity(["abcab"], judge, protocol="paper")
    assert short.num_tokens == 3


def test_paper_gen_ppl_is_token_weighted_and_pads_with_eos():
    # "ab" is padded to the longest with EOS: its first pad counts (an EOS after "b").
    judge = CharJudge()
    out = generative_perplexity(["ab", "abca"], judge, protocol="paper", batch_size=1)
    nll = [HIT, MISS] + [HIT, HIT, MISS]
    assert out.num_tokens == 5 and out.num_samples == 2
    assert out.gen_ppl == pytest.approx(math.exp(sum(nll) / 5), rel=1e-6)
    # Padded per generated batch (pad_group): "ab" alone has no pad to score, so only its "b" counts.
    alone = generative_perplexity(["ab", "abca"], judge, protocol="paper", pad_group=1)
    assert alone.num_tokens == 4
    assert alone.gen_ppl == pytest.approx(math.exp((HIT + HIT + HIT + MISS) / 4), rel=1e-6)
    # Truncation to max_length (the official code's sampled length) comes before padding.
    cut = generative_perplexity(["abcabc"], judge, protocol="paper", max_length=3)
    assert cut.num_tokens == 2


def test_paper_gen_ppl_differs_from_ours_and_checks_protocol():
    judge = CharJudge()
    ours = generative_perplexity(["abca"], judge)  # ids + EOS appended, no BOS (judge has none)
    assert ours.num_tokens == 4 and ours.protocol == "ours"
    with pytest.raises(ValueError, match="unknown protocol"):
        generative_perplexity(["abca"], judge, protocol="papers")


def test_decode_keeping_eos_keeps_special_tokens():
    class Tok:
        vocab_size = 5

        def decode(self, ids, skip_special_tokens=False):
            return f"{ids}:{skip_special_tokens}"

    texts = decode_keeping_eos(Tok(), torch.tensor([[1, 4, 5, 2]]), mask_id=2)
    assert texts == ["[1, 4]:False"]


# ------------------------------------------------------------------ 4. validation perplexity
TINY = ["model.hidden_size=32", "model.cond_dim=16", "model.n_heads=2", "model.n_blocks=1",
        "model.max_seq_len=16"]


@pytest.mark.parametrize("algo", ["duo", "ar"])
def test_perplexity_reports_the_diffusion_only_term_beside_the_bound(algo):
    from conftest import randomise_zero_layers

    from duo.config import build_config
    from duo.evaluation import perplexity
    from duo.methods import build_method

    torch.manual_seed(0)
    _, method = build_method(build_config([f"algo={algo}", *TINY]), 40)
    randomise_zero_layers(method.backbone)
    batches = [{"input_ids": torch.randint(0, 40, (4, 16), generator=torch.Generator().manual_seed(i))}
               for i in range(2)]
    res = perplexity(method, batches, seed=0)
    d = res.to_dict()
    assert "diffusion_ppl" in d and "ppl" in d
    if algo == "ar":
        assert d["diffusion_ppl"] is None
        return
    terms = res.terms
    assert terms["prior"] > 0 and terms["reconstruction"] > 0
    assert res.diffusion_ppl == pytest.approx(
        math.exp(res.nelbo - terms["prior"] - terms["reconstruction"]), rel=1e-9)
    assert res.diffusion_ppl == pytest.approx(math.exp(terms["diffusion"]), rel=1e-12)
    assert res.diffusion_ppl < res.ppl


def test_sampling_config_catches_what_only_loading_would_have():
    from duo.samplers import SamplingConfig, get_sampler

    # the paper protocol's Psi default is the official max-rescale rule (eta 0.05)
    cfg = SamplingConfig(sampler="psi", protocol="paper").validate()
    assert get_sampler("psi", **cfg.options("psi")).rule.mode == "paper-max-rescale"
    assert "rule" not in SamplingConfig(sampler="psi").validate().options("psi")
    for bad, message in ((dict(sampler="sedd_analytic", top_p=0.9), "top_p does not apply to sampler='sedd_analytic'"),
                         (dict(eta="x"), "eta='x' must be a number"), (dict(seed="1"), "seed='1' must be an integer")):
        with pytest.raises(ValueError, match=message):
            SamplingConfig(**bad).validate()
