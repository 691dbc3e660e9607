"""duo.evaluation: entropy, generative perplexity, perplexity bound, zero-shot, judges."""

import copy
import math

import pytest
import torch

from duo.evaluation import (
    CheckpointLM,
    HFCausalLM,
    PerplexityResult,
    Skipped,
    corpus_perplexity,
    eval_data,
    generative_perplexity,
    load_judge,
    markdown_table,
    perplexity,
    unigram_entropy,
    write_results,
    zero_shot,
)
from duo.evaluation.perplexity import MIN_DRAWS, stratified_pass_times, validation_passes
from duo.processes import uniform
from duo.schedules import antithetic_times

from conftest import tiny_overrides


# ------------------------------------------------------------------ shared checkpoints
@pytest.fixture(scope="session")
def tiny_runs(tiny_corpus, duo_cache, tmp_path_factory):
    """One Duo and one AR checkpoint, a few optimiser steps each (trained once per session)."""
    from duo.config import build_config
    from duo.training import train

    root = tmp_path_factory.mktemp("eval-runs")
    runs = {}
    for algo in ("duo", "ar"):
        cfg = build_config(tiny_overrides(tiny_corpus, duo_cache, root / algo, f"algo={algo}",
                                          "trainer.max_steps=3"))
        runs[algo] = train(cfg).run_dir
    return runs


@pytest.fixture(scope="session")
def loaded_runs(tiny_runs):
    from duo.checkpoints import load_checkpoint

    return {algo: load_checkpoint(path) for algo, path in tiny_runs.items()}


def zeroed(loaded):
    """A copy whose output layer predicts the uniform distribution over its K ids."""
    out = copy.deepcopy(loaded)
    with torch.no_grad():
        out.backbone.output_layer.linear.weight.zero_()
        out.backbone.output_layer.linear.bias.zero_()
    return out


# ------------------------------------------------------------------ fakes
class WordLM:
    """A judge over a fixed word list: whitespace tokens, logits from ``logit_fn``."""

    def __init__(self, words, logit_fn=None, context_size=64, unk=True):
        self.words = ["<bos>", "<eos>", "<unk>", *words]
        self.index = {w: i for i, w in enumerate(self.words)}
        self.name, self.context_size = "word-lm", context_size
        self.bos_id, self.eos_id, self.pad_id = 0, 1, 1
        self.unk_id = 2 if unk else None
        self.logit_fn = logit_fn or (lambda ids: torch.zeros(*ids.shape, len(self.words)))

    def encode(self, text):
        return [self.index.get(w, 2) for w in text.split()]

    def decode(self, ids):
        return " ".join(self.words[i] for i in ids)

    def logits(self, ids, attention_mask):
        return self.logit_fn(ids)


# ------------------------------------------------------------------ entropy
def test_entropy_known_values():
    assert unigram_entropy(torch.full((3, 50), 7)) == 0.0
    n = 8
    row = torch.arange(n).repeat(4)  # n distinct ids, each 4 times
    assert unigram_entropy(row[None]) == pytest.approx(math.log(n), abs=1e-12)
    # The mean over samples, not the entropy of the pooled counts.
    mixed = [[1, 1, 1, 1], [1, 2, 3, 4]]
    assert unigram_entropy(mixed) == pytest.approx(math.log(4) / 2, abs=1e-12)
    with pytest.raises(ValueError):
        unigram_entropy([])


# ------------------------------------------------------------------ generative perplexity
def test_gen_ppl_uniform_judge_is_vocab_size_and_counts_every_token_once():
    judge = WordLM(["a", "b", "c", "d"], context_size=4)  # K = 7; long texts need windows
    texts = ["a b c", "d " * 13, "b"]
    out = generative_perplexity(texts, judge, batch_size=2)
    assert out.gen_ppl == pytest.approx(7.0, rel=1e-6)  # float32 log-softmax
    # BOS text EOS: every token after BOS is predicted exactly once.
    assert out.num_tokens == (3 + 1) + (13 + 1) + (1 + 1)
    assert out.num_samples == 3


def test_gen_ppl_known_logits():
    # The judge always predicts "a" with probability p; texts of only "a" (then EOS).
    K, p = 5, 0.8
    def logits(ids):
        lp = torch.full((K,), math.log((1 - p) / (K - 1)))
        lp[3] = math.log(p)
        return lp.expand(*ids.shape, K).clone()

    judge = WordLM(["a", "b"], logit_fn=logits)
    out = generative_perplexity(["a a a"], judge)
    expected = (3 * -math.log(p) - math.log((1 - p) / (K - 1))) / 4
    assert out.mean_nll == pytest.approx(expected, rel=1e-6)
    assert out.gen_ppl == pytest.approx(math.exp(expected), rel=1e-6)


def test_judge_that_cannot_encode_the_samples_is_a_one_line_error():
    judge = WordLM(["a", "b"])
    with pytest.raises(ValueError, match="cannot encode the samples") as err:
        generative_perplexity(["a b the model learns"], judge)
    assert "\n" not in str(err.value)


def test_ar_checkpoint_judge_with_uniform_output_gives_vocab_size(loaded_runs):
    ar = zeroed(loaded_runs["ar"])
    judge = CheckpointLM(ar, "zeroed-ar")
    K = ar.method.vocab_size
    texts = ["The model learns to denoise tokens.", "A uniform state diffusion corrects its own mistakes."]
    out = generative_perplexity(texts, judge, batch_size=1, max_length=20)
    assert out.gen_ppl == pytest.approx(K, rel=1e-5)
    assert out.num_tokens == sum(min(len(ar.tokenizer.encode(t)) + 2, 20) - 1 for t in texts)


def test_judge_must_be_autoregressive(loaded_runs, tiny_runs):
    with pytest.raises(ValueError, match="autoregressive"):
        load_judge(tiny_runs["duo"])
    assert isinstance(load_judge(tiny_runs["ar"]), CheckpointLM)
    with pytest.raises(FileNotFoundError):
        load_judge("/no/such/run")


def save_hf_judge(path, words, zero=True):
    """A tiny GPT-2 with a word-level tokenizer, saved like a hub model (offline)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = ["<bos>", "<eos>", "<unk>", *words]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece()
    PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>",
                            unk_token="<unk>").save_pretrained(path)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_positions=8, n_embd=8, n_layer=1, n_head=2,
                                       bos_token_id=0, eos_token_id=1))
    if zero:
        with torch.no_grad():
            model.lm_head.weight.zero_()  # tied to the embeddings: logits are all zero
    model.save_pretrained(path)
    return str(path)


def test_hf_judge_from_a_local_directory(tmp_path):
    words = ["alpha", "beta", "gamma"]
    judge = load_judge(save_hf_judge(tmp_path / "judge", words))
    assert isinstance(judge, HFCausalLM) and judge.context_size == 8
    out = generative_perplexity(["alpha beta gamma", "beta " * 20], judge, batch_size=4)
    assert out.gen_ppl == pytest.approx(len(words) + 3, rel=1e-5)
    assert out.num_tokens == 4 + 21
    with pytest.raises(ValueError, match="cannot encode"):
        generative_perplexity(["the model learns"], judge)


def test_batched_generation_matches_one_batch_and_reports_speed(loaded_runs):
    from duo.evaluation import generate_batched, sampling_stats
    from duo.generation import generate_text

    duo = loaded_runs["duo"]
    whole = generate_text(duo.method, duo.tokenizer, num_samples=2, seq_len=16, steps=3, seed=5)
    parts = generate_batched(duo, num_samples=3, batch_size=2, seq_len=16, steps=3, seed=5,
                             return_intermediates=True)
    assert torch.equal(parts.tokens[:2], whole.tokens) and parts.tokens.shape == (3, 16)
    assert len(parts.intermediates) == 4 and parts.intermediates[-1].shape == (3, 16)
    stats = sampling_stats(parts, "ancestral", 3)
    assert stats.nfe == 3 and stats.tokens_per_second > 0 and stats.num_samples == 3


# ------------------------------------------------------------------ perplexity
def test_ar_with_uniform_output_has_perplexity_vocab_size(loaded_runs):
    ar = zeroed(loaded_runs["ar"])
    res = corpus_perplexity(ar, batch_size=4, max_batches=2)
    assert not res.bound and res.terms == {}
    assert res.ppl == pytest.approx(ar.method.vocab_size, rel=1e-5)
    assert res.display == f"{res.ppl:.2f}"


def test_duo_bound_terms_with_uniform_denoiser(loaded_runs):
    duo = zeroed(loaded_runs["duo"])
    K = duo.method.vocab_size
    res = corpus_perplexity(duo, batch_size=4, max_batches=2)
    assert res.bound and res.display.startswith("<= ")
    prior = float(uniform.prior_kl(duo.method.schedule.alpha(torch.tensor(1.0)), K))
    assert res.terms["prior"] == pytest.approx(prior, rel=1e-6)
    assert res.terms["diffusion"] >= 0
    assert res.nelbo == pytest.approx(sum(res.terms.values()), rel=1e-9)
    # With a uniform x_theta the decoder is q_t0(z | x): one of two values per token.
    a = float(duo.method.schedule.alpha(torch.tensor(duo.method.cfg.eps)))
    assert -math.log(a + (1 - a) / K) - 1e-9 <= res.terms["reconstruction"] <= -math.log((1 - a) / K)


def test_decoder_is_the_last_reverse_step():
    from duo.losses import uniform_decoder_nll

    torch.manual_seed(0)
    B, L, K = 2, 5, 7
    log_x = torch.randn(B, L, K).log_softmax(-1).double()
    z, x = torch.randint(0, K, (B, L)), torch.randint(0, K, (B, L))
    x[:, :2] = z[:, :2]  # some tokens uncorrupted
    alpha = torch.tensor([0.999, 0.6], dtype=torch.float64)
    dense = uniform.posterior(log_x.exp(), z, 1.0, alpha[:, None])
    expected = -dense.gather(-1, x[..., None]).squeeze(-1).log()
    assert torch.allclose(uniform_decoder_nll(log_x, z, x, alpha), expected, atol=1e-12)
    # A uniform x_theta decodes with q_t(z | x) itself.
    flat = torch.full((B, L, K), -math.log(K), dtype=torch.float64)
    a = alpha[:, None]
    q = torch.where(x == z, a + (1 - a) / K, (1 - a) / K)
    assert torch.allclose(uniform_decoder_nll(flat, z, x, alpha), -q.log(), atol=1e-12)


def test_perplexity_is_deterministic_for_a_seed(loaded_runs):
    duo = loaded_runs["duo"]
    data = eval_data(duo).dataset
    a = perplexity(duo, data, batch_size=4, max_batches=2, seed=3)
    b = perplexity(duo.method, data, batch_size=4, max_batches=2, seed=3)
    c = perplexity(duo, data, batch_size=4, max_batches=2, seed=4)
    assert a.nelbo == b.nelbo and a.num_tokens == b.num_tokens == 2 * 4 * data.seq_len
    assert c.nelbo != a.nelbo
    # A loader of batches works like the dataset.
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    assert perplexity(duo, loader, max_batches=2, seed=3).nelbo == a.nelbo


def test_zero_shot_skips_what_cannot_be_loaded(loaded_runs, tmp_path):
    from conftest import write_tiny_corpus

    other = write_tiny_corpus(tmp_path / "other.txt", n_docs=40, seed=5)
    results = zero_shot(loaded_runs["duo"], ["ptb", other, str(tmp_path / "missing.txt")],
                        batch_size=4, max_batches=1)
    assert isinstance(results["ptb"], Skipped)  # tests run with HF_HUB_OFFLINE=1
    assert isinstance(results[str(tmp_path / "missing.txt")], Skipped)
    assert "does not exist" in results[str(tmp_path / "missing.txt")].reason
    found = results[other]
    assert isinstance(found, PerplexityResult) and found.split == "all" and found.ppl > 1
    table = markdown_table({"zero_shot": {k: v.to_dict() for k, v in results.items()}})
    assert "skipped" in table and "<= " in table


def test_results_written_atomically_as_json_and_markdown(tmp_path):
    ppl = PerplexityResult(3.0, math.exp(3.0), 100, 4, True, {"diffusion": 2.9, "prior": 0.0, "reconstruction": 0.1},
                           "duo", "builtin", "validation")
    json_path, md_path = write_results({"ppl": ppl.to_dict()}, tmp_path / "eval", "header")
    assert json_path.is_file() and md_path.read_text().startswith("header")
    assert "<= 20.09" in md_path.read_text()
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["results.json", "results.md"]


def test_validation_passes_reach_the_draw_target_on_small_sets_only():
    assert validation_passes(72, None) == 15  # 1,080 draws >= MIN_DRAWS
    assert validation_passes(MIN_DRAWS, None) == 1 and validation_passes(10**6, None) == 1
    assert validation_passes(1, None) == 32  # capped
    assert validation_passes(72, 3) == 3  # the user's choice wins
    with pytest.raises(ValueError, match="passes=0"):
        validation_passes(72, 0)


def test_pass_times_are_stratified_over_all_passes():
    u, eps, rows, passes = torch.tensor(0.37, dtype=torch.float64), 1e-3, 6, 5
    one = stratified_pass_times(rows, 0, 1, u, eps=eps)
    assert torch.equal(one, antithetic_times(rows, eps=eps, u=u))
    t = torch.cat([stratified_pass_times(rows, p, passes, u, eps=eps) for p in range(passes)]).double()
    gaps = t.sort().values.diff()
    # passes x rows times, one per stratum of width (1 - eps) / (passes rows)
    assert torch.allclose(gaps, torch.full_like(gaps, (1 - eps) / (passes * rows)), atol=1e-6)
    # each row's times lie 1/passes apart (in [0, 1) before the map into [eps, 1])
    per_row = t.view(passes, rows).sort(dim=0).values.diff(dim=0)
    assert torch.allclose(per_row, torch.full_like(per_row, (1 - eps) / passes), atol=1e-6)


def test_more_passes_give_the_same_bound_with_less_noise(loaded_runs):
    duo = loaded_runs["duo"]
    data = eval_data(duo).dataset
    one = [perplexity(duo, data, batch_size=4, max_batches=2, seed=s).nelbo for s in range(8)]
    many = [perplexity(duo, data, batch_size=4, max_batches=2, seed=s, passes=16) for s in range(8)]
    assert all(r.num_tokens == 2 * 4 * data.seq_len and r.passes == 16 for r in many)
    many = [r.nelbo for r in many]
    spread = lambda v: float(torch.tensor(v).std())  # noqa: E731
    assert spread(many) < spread(one) / 2
    # the same quantity: the means agree within the single-pass noise
    assert abs(sum(many) / 8 - sum(one) / 8) < 2 * spread(one) / math.sqrt(8)
    # the autoregressive baseline has no time to draw: one pass whatever is asked
    ar = loaded_runs["ar"]
    assert perplexity(ar, eval_data(ar).dataset, batch_size=4, max_batches=1, passes=4).passes == 1


def test_the_sampling_loop_skips_the_range_check_that_syncs_per_step(loaded_runs, monkeypatch):
    from duo.generation import generate_tokens
    from duo.models.dit import DiT

    duo = loaded_runs["duo"]
    checked = []
    original = DiT._check_range

    def spy(self, ids):
        checked.append(self.check_inputs)
        return original(self, ids)

    monkeypatch.setattr(DiT, "_check_range", spy)
    tokens, nfe, _ = generate_tokens(duo.method, num_samples=2, seq_len=16, steps=3)
    assert len(checked) == nfe == 3 and not any(checked)  # called every step, checking none
    assert duo.method.backbone.check_inputs is True  # restored afterwards
    checked.clear()
    duo.method.backbone(tokens, torch.zeros(2))  # outside the loop the check is on
    assert checked == [True]
    with pytest.raises(ValueError, match="outside the vocabulary"):  # outside ids: still refused
        generate_tokens(duo.method, num_samples=1, seq_len=16, steps=2,
                        prefix=torch.tensor([duo.method.vocab_size]))
