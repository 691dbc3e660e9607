"""The lm-evaluation-harness model: real lm_eval runs, offline, on task files written here
(a tiny multiple-choice task and a tiny perplexity task) for Duo and AR checkpoints; AR's
loglikelihood is the exact sum of token log-probs; the diffusion estimate's spread over
seeds shrinks as the number of NELBO samples grows."""

import json
import statistics

import pytest
import torch

pytest.importorskip("lm_eval", reason="lm-eval is the optional extra duo-lm[eval]; pip install 'duo-lm[eval]'")

from duo.cli import main  # noqa: E402
from duo.evaluation.lm_eval_model import DuoLM, run_lm_eval  # noqa: E402

from test_evaluation import loaded_runs, tiny_runs  # noqa: E402,F401  (session fixtures)

QUESTIONS = [
    ("The model learns to", [" denoise tokens.", " a gaussian curriculum.", " its own mistakes."], 0),
    ("A uniform state diffusion", [" corrects its own mistakes.", " in few steps.", " the model."], 0),
    ("It generates text", [" in few steps.", " tokens learns.", " a a a."], 0),
    ("The gaussian curriculum", [" learns to denoise.", " state mistakes.", " with with."], 0),
]
TEXTS = ["The model learns to denoise tokens with a gaussian curriculum.",
         "A uniform state diffusion corrects its own mistakes and generates text in few steps. " * 3]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm-eval-tasks")
    mcq = root / "mcq.jsonl"
    mcq.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS))
    docs = root / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    (root / "duo_tiny_mcq.yaml").write_text(f"""task: duo_tiny_mcq
dataset_path: json
dataset_kwargs:
  data_files:
    test: {mcq}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
""")
    (root / "duo_tiny_ppl.yaml").write_text(f"""task: duo_tiny_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""")
    return root


@pytest.mark.parametrize("algo", ["duo", "ar"])
def test_a_real_lm_eval_run_on_local_tasks(loaded_runs, task_dir, algo):  # noqa: F811
    out = run_lm_eval(loaded_runs[algo], ["duo_tiny_mcq", "duo_tiny_ppl"], include_path=str(task_dir),
                      nelbo_samples=2, batch_size=16)
    mcq, ppl = out["tasks"]["duo_tiny_mcq"], out["tasks"]["duo_tiny_ppl"]
    assert 0.0 <= mcq["acc,none"] <= 1.0 and 0.0 <= mcq["acc_norm,none"] <= 1.0
    assert 1.0 < ppl["word_perplexity,none"] < float("inf") and ppl["bits_per_byte,none"] > 0
    assert out["nelbo_samples"] == (2 if algo == "duo" else None)


def test_duo_eval_metrics_lm_eval(tiny_runs, task_dir, tmp_path, capsys):  # noqa: F811
    code = main(["eval", f"checkpoint={tiny_runs['ar']}", "metrics=lm-eval", "tasks=duo_tiny_mcq",
                 f"task_path={task_dir}", f"out={tmp_path}"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "lm-eval duo_tiny_mcq:" in captured.out and "acc,none" in captured.out
    saved = json.loads((tmp_path / "results.json").read_text())
    assert "acc,none" in saved["lm_eval"]["tasks"]["duo_tiny_mcq"]


def test_ar_loglikelihood_is_the_exact_sum_of_token_log_probs(loaded_runs):  # noqa: F811
    loaded = loaded_runs["ar"]
    lm, tok = DuoLM(loaded=loaded), loaded.tokenizer
    for context, continuation in [("The model learns", " to denoise tokens."), ("", "A uniform state")]:
        ctx, cont = tok.encode(context) if context else [], tok.encode(continuation)
        ids = torch.tensor([[tok.bos_id, *ctx, *cont]])
        with torch.no_grad():
            logp = loaded.backbone(ids[:, :-1], None).double().log_softmax(-1)[0]
        exact = sum(float(logp[len(ctx) + i, c]) for i, c in enumerate(cont))
        (got, greedy), = lm.score_tokens([(ctx, cont)])
        assert got == pytest.approx(exact, abs=1e-4)
        assert greedy == all(int(logp[len(ctx) + i].argmax()) == c for i, c in enumerate(cont))
    # rolling: one window here, so the whole text after BOS
    text = "The model learns to denoise."
    ids = tok.encode(text)
    assert len(ids) < loaded.cfg.data.seq_len
    with torch.no_grad():
        logp = loaded.backbone(torch.tensor([[tok.bos_id, *ids[:-1]]]), None).double().log_softmax(-1)[0]
    exact = float(logp.gather(-1, torch.tensor(ids)[:, None]).sum())

    class Req:
        args = (text,)

    assert lm.loglikelihood_rolling([Req()])[0] == pytest.approx(exact, abs=1e-4)


def test_diffusion_estimate_spread_shrinks_with_samples(loaded_runs, capsys):  # noqa: F811
    loaded = loaded_runs["duo"]
    tok = loaded.tokenizer
    pair = (tok.encode("The model learns to"), tok.encode(" denoise tokens with a gaussian curriculum."))
    spread = {}
    for n in (1, 4, 16):
        estimates = [DuoLM(loaded=loaded, nelbo_samples=n, seed=s).score_tokens([pair])[0][0] for s in range(8)]
        assert all(e < 0 for e in estimates)  # -NELBO bounds a log-probability from below
        spread[n] = statistics.stdev(estimates)
    with capsys.disabled():
        print(f"\n  duo loglikelihood spread over 8 seeds: "
              + ", ".join(f"{n} samples {s:.3f} nats" for n, s in spread.items()))
    assert spread[16] < spread[4] < spread[1]


def test_generate_until_cuts_at_stop_strings(loaded_runs):  # noqa: F811
    for algo in ("duo", "ar"):
        lm = DuoLM(loaded=loaded_runs[algo], steps=4)

        class Req:
            args = ("The model", {"until": ["."], "max_gen_toks": 8})

        (text,) = lm.generate_until([Req()])
        assert isinstance(text, str) and "." not in text


def test_bad_input_one_line_errors(tiny_runs, loaded_runs, task_dir, capsys, monkeypatch):  # noqa: F811
    with pytest.raises(ValueError, match="does not know task 'no_such_task'"):
        run_lm_eval(loaded_runs["ar"], ["no_such_task"], include_path=str(task_dir))
    code = main(["eval", f"checkpoint={tiny_runs['ar']}", "metrics=lm-eval", "tasks=no_such_task",
                 f"task_path={task_dir}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no_such_task" in err
    import duo.evaluation.lm_eval_model as mod

    monkeypatch.setattr(mod, "register_model", None)  # as if the extra were not installed
    code = main(["eval", f"checkpoint={tiny_runs['ar']}", "metrics=lm-eval", "tasks=duo_tiny_mcq"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "duo-lm[eval]" in err


@pytest.mark.parametrize("algo", ["mdlm", "sedd", "d3pm"])
def test_masked_methods_score_through_their_own_per_token_nelbo(loaded_runs, algo):  # noqa: F811
    """MDLM and SEDD score with ``MaskedMethod.nelbo_per_token`` (the training integrand);
    D3PM (discrete time) is refused with a one-line error."""
    from types import SimpleNamespace

    from duo.config import build_config
    from duo.methods import build_method

    tok = loaded_runs["duo"].tokenizer
    extra = ["algo.T=50"] if algo == "d3pm" else []
    cfg = build_config([f"algo={algo}", "model.hidden_size=32", "model.cond_dim=16", "model.n_heads=2",
                        "model.n_blocks=1", "model.max_seq_len=32", "data.seq_len=32", *extra])
    torch.manual_seed(0)
    backbone, method = build_method(cfg, tok.vocab_size)
    loaded = SimpleNamespace(cfg=cfg, method=method, backbone=backbone.eval(), tokenizer=tok)
    if algo == "d3pm":
        with pytest.raises(ValueError, match="discrete time") as err:
            DuoLM(loaded=loaded)
        assert "\n" not in str(err.value)
        return
    lm = DuoLM(loaded=loaded, nelbo_samples=4, seed=3)
    pair = (tok.encode("The model learns to"), tok.encode(" denoise tokens."))
    (score, greedy), = lm.score_tokens([pair])
    assert score < 0 and isinstance(greedy, bool)
    assert lm.score_tokens([pair])[0][0] == score  # seeded per request
    # The same integrand training uses: continuous_loss's per-token values at one z_t.
    x = torch.tensor([[tok.bos_id, *pair[0], *pair[1]]])
    t = torch.tensor([0.5])
    alpha, dalpha = method.schedule.alpha(t)[:, None], method.schedule.dalpha(t)[:, None]
    z = method.process.noise(x, alpha, method.vocab_size, method.mask_id, torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = method.nelbo_per_token(x, z, alpha, dalpha)
        # Independently: the whole logits at once, the integrand called directly.
        logits = method.backbone(z, method.conditioning(alpha[:, 0]))
        want = method.integrand(logits, z, x, alpha.expand(x.shape), dalpha.expand(x.shape))
    assert got.shape == x.shape and (got[z != method.mask_id] == 0).all()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
