"""``duo sample`` and ``duo eval`` end to end on tiny checkpoints, and their one-line errors."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from duo.cli import main
from duo.evaluation import pick_sampler

from conftest import write_tiny_corpus
from test_evaluation import loaded_runs, save_hf_judge, tiny_runs  # noqa: F401  (session fixtures)

PREFIX = "The model learns"


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_sample_prints_and_saves_samples_that_start_with_the_prefix(tiny_runs, loaded_runs, capsys):
    code, out, err = run(capsys, "sample", f"checkpoint={tiny_runs['duo']}", "steps=4", "num_samples=2",
                         f"prefix={PREFIX}", "intermediates=true")
    assert code == 0, err
    assert out.count("--- sample") == 2
    files = list((Path(tiny_runs["duo"]) / "samples").glob("sample-ancestral-4steps-seed0.jsonl"))
    records = [json.loads(line) for line in files[0].read_text().splitlines()]
    prefix_ids = loaded_runs["duo"].tokenizer.encode(PREFIX)
    assert len(records) == 2
    for rec in records:
        assert rec["tokens"][:len(prefix_ids)] == prefix_ids
        assert rec["text"].startswith(PREFIX) and rec["text"] in out
        assert rec["sampler"] == "ancestral" and rec["steps"] == 4 and rec["nfe"] == 4
    states = torch.load(files[0].with_name(files[0].stem + ".intermediates.pt"), weights_only=True)
    assert states.shape == (5, 2, loaded_runs["duo"].cfg.data.seq_len)


def test_sample_ar_and_psi_with_out_file(tiny_runs, loaded_runs, capsys, tmp_path):
    out_file = tmp_path / "ar.jsonl"
    code, _, err = run(capsys, "sample", f"checkpoint={tiny_runs['ar']}", "num_samples=3", "batch_size=2",
                       f"prefix={PREFIX}", "seq_len=16", f"out={out_file}", "top_k=20")
    assert code == 0, err
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    tok = loaded_runs["ar"].tokenizer
    prefix_ids = tok.encode(PREFIX)
    for rec in records:  # BOS, then the prompt
        assert rec["tokens"][0] == tok.bos_id and rec["tokens"][1:1 + len(prefix_ids)] == prefix_ids
        assert len(rec["tokens"]) == 16
    code, _, err = run(capsys, "sample", f"checkpoint={tiny_runs['duo']}", "sampler=psi", "eta=0.1",
                       "steps=3", "num_samples=1", f"out={tmp_path / 'psi.jsonl'}", "suffix=mistakes.")
    assert code == 0, err
    rec = json.loads((tmp_path / "psi.jsonl").read_text())
    assert rec["options"]["rule"] == ["remdm-rescale", 0.1] and rec["text"].endswith("mistakes.")


def test_sampler_defaults_come_from_checkpoint_metadata(loaded_runs):
    fake = SimpleNamespace(method=loaded_runs["duo"].method, metadata={"sampler": "greedy_tail", "steps": 8})
    assert pick_sampler(fake, None, None) == ("greedy_tail", 8)
    assert pick_sampler(fake, None, 16) == ("greedy_tail", 16)
    assert pick_sampler(fake, "ancestral", None) == ("ancestral", None)
    assert pick_sampler(SimpleNamespace(method=fake.method, metadata={}), None, None) == ("ancestral", None)


def test_eval_ppl_and_gen_ppl_write_results(tiny_runs, capsys):
    code, out, err = run(capsys, "eval", f"checkpoint={tiny_runs['duo']}", "metrics=ppl,gen-ppl",
                         f"judge={tiny_runs['ar']}", "num_samples=3", "steps=4", "batch_size=4", "max_batches=2")
    assert code == 0, err
    results = json.loads((Path(tiny_runs["duo"]) / "eval" / "results.json").read_text())
    assert results["ppl"]["bound"] and results["ppl"]["ppl"] > 1
    assert set(results["ppl"]["terms"]) == {"diffusion", "prior", "reconstruction"}
    gen = results["gen_ppl"]
    assert gen["gen_ppl"] > 1 and 0 < gen["entropy"] and gen["num_samples"] == 3 and gen["nfe"] == 4
    assert gen["tokens_per_second"] > 0
    assert (Path(tiny_runs["duo"]) / "eval" / "results.md").is_file()
    assert "| perplexity" in out and "<= " in out and "| entropy" in out


def test_eval_zero_shot_on_a_local_file(tiny_runs, capsys, tmp_path):
    other = write_tiny_corpus(tmp_path / "zs.txt", n_docs=30, seed=9)
    code, out, err = run(capsys, "eval", f"checkpoint={tiny_runs['ar']}", "metrics=zero-shot",
                         f"corpora={other}", "max_batches=1", f"out={tmp_path / 'res'}")
    assert code == 0, err
    results = json.loads((tmp_path / "res" / "results.json").read_text())
    assert results["zero_shot"][other]["split"] == "all" and not results["zero_shot"][other]["bound"]
    assert "zero-shot zs.txt" in out


@pytest.mark.parametrize("args, message", [
    (["sample", "{duo}", "sampler=foo"], "unknown sampler 'foo'; valid samplers: ancestral"),
    (["sample", "{duo}", "steps=0"], "steps=0 must be an integer >= 1"),
    (["sample", "{duo}", "batch_size=0"], "batch_size=0 must be an integer >= 1"),
    (["sample", "{duo}", "seq_len=0"], "seq_len=0 must be an integer >= 1"),
    (["sample", "{duo}", "sampler=psi", "eta=5"], "eta=5.0 must lie in [0, 1]"),
    (["sample", "{duo}", "top_p=0"], "top_p=0.0 must lie in (0, 1]"),
    (["sample", "{duo}", "protocol=official"], "protocol='official' is unknown; valid protocols: ours, paper"),
    (["sample", "{duo}", "sampler=psi", "kappa_mode=fast", "eta=0.1"], "kappa_mode='fast' is unknown"),
    (["sample", "{duo}", "prefix=" + "the model learns " * 20], "longer than the sequence"),
    (["sample", "{duo}", "sampler=mdlm"], "does not fit a duo checkpoint"),
    (["sample", "{duo}", "eta=0.1"], "apply to sampler=psi"),
    (["sample", "steps=4"], "needs checkpoint="),
    (["sample", "checkpoint=/no/such/run"], "does not exist"),
    (["eval", "{duo}", "metrics=bleu"], "unknown metric 'bleu'"),
    (["eval", "{duo}", "passes=0"], "passes=0 must be >= 1"),
    (["eval", "{duo}", "metrics=gen-ppl", "judge={hf}", "steps=2"], "cannot encode the samples"),
    (["eval", "{duo}", "metrics=gen-ppl", "judge={duo_dir}"], "must be autoregressive"),
])
def test_bad_input_is_a_one_line_error(args, message, tiny_runs, capsys, tmp_path):
    hf = save_hf_judge(tmp_path / "hf", ["alpha", "beta"]) if "judge={hf}" in args else ""
    fill = {"duo": f"checkpoint={tiny_runs['duo']}", "hf": hf, "duo_dir": str(tiny_runs["duo"])}
    args = [a.format(**fill) for a in args]
    capsys.readouterr()  # what saving the judge printed
    code, _, err = run(capsys, *args, "num_samples=2")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"duo {args[0]}: error: ") and message in lines[0], err


def test_one_sampling_config_behind_cli_eval_and_python(tiny_runs, loaded_runs, capsys, tmp_path):
    from duo.evaluation import sample
    from duo.samplers import SamplingConfig

    out_file = tmp_path / "paper.jsonl"
    code, _, err = run(capsys, "sample", f"checkpoint={tiny_runs['duo']}", "steps=3", "num_samples=2",
                       "protocol=paper", "sampler=greedy_tail", "seed=7", f"out={out_file}")
    assert code == 0, err
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert {r["nfe"] for r in records} == {4} and {r["protocol"] for r in records} == {"paper"}
    # the Python API with the same SamplingConfig gives the same tokens
    gen = sample(loaded_runs["duo"], SamplingConfig(steps=3, num_samples=2, protocol="paper",
                                                    sampler="greedy_tail", seed=7))
    assert gen.tokens.tolist() == [r["tokens"] for r in records] and gen.nfe == 4
    code, _, err = run(capsys, "eval", f"checkpoint={tiny_runs['duo']}", "metrics=ppl,gen-ppl",
                       f"judge={tiny_runs['ar']}", "num_samples=2", "steps=3", "protocol=paper",
                       "max_batches=1", f"out={tmp_path / 'res'}")
    assert code == 0, err
    results = json.loads((tmp_path / "res" / "results.json").read_text())
    assert results["gen_ppl"]["nfe"] == 4 and results["gen_ppl"]["protocol"] == "paper"
    ppl = results["ppl"]
    assert ppl["diffusion_ppl"] is not None and ppl["diffusion_ppl"] <= ppl["ppl"]


def test_nucleus_approx_reaches_the_sampler_from_the_cli(tiny_runs, loaded_runs, capsys, tmp_path):
    """nucleus=approx is a SamplingConfig key: the CLI and the Python API build the same
    filtered sampler, and a sampler without top-p refuses it in one line."""
    from duo.evaluation import sample
    from duo.samplers import SamplingConfig

    out_file = tmp_path / "approx.jsonl"
    code, _, err = run(capsys, "sample", f"checkpoint={tiny_runs['duo']}", "steps=4", "num_samples=2",
                       "sampler=psi", "top_p=0.9", "nucleus=approx", "seed=3", f"out={out_file}")
    assert code == 0, err
    tokens = [json.loads(line)["tokens"] for line in out_file.read_text().splitlines()]
    cfg = SamplingConfig(steps=4, num_samples=2, sampler="psi", top_p=0.9, nucleus="approx", seed=3)
    assert sample(loaded_runs["duo"], cfg).tokens.tolist() == tokens
    code, _, err = run(capsys, "sample", f"checkpoint={tiny_runs['duo']}", "nucleus=fast")
    assert code == 2 and "nucleus='fast' is unknown; valid: exact, approx" in err
