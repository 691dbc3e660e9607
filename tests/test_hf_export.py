"""duo export / push and the transformers Auto classes: run -> export -> load gives the same
logits and, for a seed, the same samples (duo, mdlm, ar); the model card carries the
run's measured numbers; push uploads exactly the export's files."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from duo.checkpoints import load_checkpoint
from duo.cli import main
from duo.evaluation import sample
from duo.samplers import SamplingConfig

from conftest import tiny_overrides
from test_evaluation import tiny_runs  # noqa: F401  (duo and ar checkpoints, trained once per session)

EXPORT_FILES = {"config.json", "model.safetensors", "sampling_config.json", "README.md", "duo_tokenizer.json",
                "tokenizer.json"}
RESULTS = {"checkpoint": "x", "algo": "duo",
           "ppl": {"nelbo": 4.5, "ppl": 90.0171, "num_tokens": 640, "num_sequences": 20, "bound": True,
                   "terms": {}, "method": "duo", "corpus": "tiny.txt", "split": "validation", "seconds": 1.0,
                   "diffusion_ppl": 85.0},
           "gen_ppl": {"gen_ppl": 321.5, "judge": "runs/ar", "entropy": 3.25, "sampler": "ancestral", "steps": 8,
                       "num_samples": 16, "seq_len": 32, "nfe": 8, "seconds": 1.0, "tokens_per_second": 9.0,
                       "protocol": "ours"}}


@pytest.fixture(scope="module")
def runs(tiny_runs, tiny_corpus, duo_cache, tmp_path_factory):  # noqa: F811
    """duo and ar from the session's runs; an mdlm run trained here (a few steps)."""
    from duo.config import build_config
    from duo.training import train

    root = tmp_path_factory.mktemp("mdlm-run")
    cfg = build_config(tiny_overrides(tiny_corpus, duo_cache, root / "mdlm", "algo=mdlm", "trainer.max_steps=2"))
    return {**tiny_runs, "mdlm": train(cfg).run_dir}


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("algo", ["duo", "mdlm", "ar"])
def test_export_load_round_trip_same_logits_and_samples(runs, algo, tmp_path, capsys):
    out = tmp_path / f"{algo}-export"
    code, printed, err = run(capsys, "export", str(runs[algo]), str(out))
    assert code == 0, err
    assert {p.name for p in out.iterdir()} == EXPORT_FILES
    original, exported = load_checkpoint(runs[algo]), load_checkpoint(out)
    assert exported.algo == algo and exported.cfg.to_dict() == original.cfg.to_dict()
    # the EMA weights by default, bit for bit
    for (k1, v1), (k2, v2) in zip(original.backbone.state_dict().items(), exported.backbone.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2), k1
    ids = torch.randint(0, original.tokenizer.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    sigma = None if algo == "ar" else torch.tensor([0.3, 2.0])
    with torch.no_grad():
        assert torch.equal(original.backbone(ids, sigma), exported.backbone(ids, sigma))
    config = SamplingConfig(steps=4, num_samples=2, seq_len=16, seed=3, prefix="The model")
    a, b = sample(original, config), sample(exported, config)
    assert torch.equal(a.tokens, b.tokens) and a.texts == b.texts
    sampling = json.loads((out / "sampling_config.json").read_text())
    assert sampling["sampler"] == {"duo": "ancestral", "mdlm": "mdlm", "ar": "ar"}[algo]
    assert sampling["protocol"] == "ours" and sampling["nfe"] >= 1
    # duo sample reads the folder
    code, printed, err = run(capsys, "sample", f"checkpoint={out}", "steps=2", "num_samples=1", "seq_len=16")
    assert code == 0, err
    assert "--- sample" in printed


@pytest.mark.parametrize("algo", ["duo", "ar"])
def test_automodel_from_pretrained_returns_the_dit_with_its_weights(runs, algo, tmp_path):
    from transformers import AutoConfig, AutoModel

    from duo.interop import register_auto_classes

    classes = register_auto_classes()
    out = tmp_path / "export"
    assert main(["export", str(runs[algo]), str(out)]) == 0
    model = AutoModel.from_pretrained(out)
    assert type(model) is classes["DuoModel" if algo == "duo" else "DuoArModel"]
    assert isinstance(AutoConfig.from_pretrained(out), classes["DuoConfig"])
    loaded = load_checkpoint(runs[algo])
    for k, v in loaded.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k
    ids = torch.randint(0, loaded.tokenizer.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    sigma = None if algo == "ar" else torch.tensor([0.5, 1.5])
    with torch.no_grad():
        assert torch.equal(model(ids, sigma=sigma).logits, loaded.backbone(ids, sigma))
    texts = model.sample(prompt="The model", steps=3, num_samples=2, seq_len=16, seed=5)
    ref = sample(loaded, SamplingConfig(steps=3, num_samples=2, seq_len=16, seed=5, prefix="The model"))
    assert texts == ref.texts and all(t.startswith("The model") for t in texts)


def test_model_card_numbers_are_the_runs_results(runs, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(runs["duo"], run_dir)
    (run_dir / "eval").mkdir(exist_ok=True)
    (run_dir / "eval" / "results.json").write_text(json.dumps(RESULTS))
    out = tmp_path / "export"
    assert main(["export", str(run_dir), str(out), "license=mit"]) == 0
    card = (out / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "duo" and meta["license"] == "mit"
    assert {"duo", "discrete-diffusion", "uniform-state-diffusion"} <= set(meta["tags"])
    values = {m["metrics"][0]["type"]: m["metrics"][0]["value"] for m in meta["model-index"][0]["results"]}
    assert values == {"perplexity": 90.0171, "gen_ppl": 321.5}
    assert "<= 90.02" in body and "321.5" in body
    assert f"duo eval checkpoint={run_dir} metrics=ppl" in body
    assert "metrics=gen-ppl sampler=ancestral steps=8" in body and "judge=runs/ar" in body
    assert "for 3 steps" in body  # the checkpoint's global step


def test_push_uploads_exactly_the_export(runs, tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi

    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))
        return f"https://hub.example/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        files = sorted(p.name for p in Path(folder_path).iterdir())
        calls.append(("upload_folder", repo_id, files, kwargs))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    code, printed, err = run(capsys, "push", str(runs["duo"]), "me/tiny-duo", "private=true")
    assert code == 0, err
    assert calls == [
        ("create_repo", "me/tiny-duo", {"private": True, "exist_ok": True, "repo_type": "model"}),
        ("upload_folder", "me/tiny-duo", sorted(EXPORT_FILES),
         {"repo_type": "model", "commit_message": "Upload tiny-duo with duo push"}),
    ]
    assert "pushed" in printed and "me/tiny-duo" in printed
    # an export folder is uploaded as it is
    out = tmp_path / "export"
    assert main(["export", str(runs["ar"]), str(out)]) == 0
    calls.clear()
    assert main(["push", str(out), "me/ar"]) == 0
    assert calls[1][1:3] == ("me/ar", sorted(EXPORT_FILES))


def test_bad_input_one_line_errors(runs, tmp_path, capsys):
    from duo.interop import load_export

    not_export = tmp_path / "folder"
    not_export.mkdir()
    (not_export / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="is not a duo export"):
        load_export(not_export)
    code, _, err = run(capsys, "export", str(tmp_path / "missing"), str(tmp_path / "o"))
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err
    code, _, err = run(capsys, "push", str(runs["duo"]), "no-owner")
    assert code == 2 and err.count("\n") == 1 and "owner/name" in err
    out = tmp_path / "taken"
    out.mkdir()
    (out / "x").write_text("x")
    code, _, err = run(capsys, "export", str(runs["duo"]), str(out))
    assert code == 2 and "not empty" in err and (out / "x").is_file()


@pytest.mark.parametrize("algo,extra,sampler,steps", [("sedd", [], "sedd_analytic", 1024),
                                                      ("d3pm", ["algo.T=50"], "d3pm", 50),
                                                      ("mdlm", [], "mdlm", 1024)])
def test_sampling_config_default_steps_are_the_samplers_built_for_the_method(tiny_corpus, duo_cache, tmp_path,
                                                                             algo, extra, sampler, steps):
    """The exported default step count is the one the sampler runs for this method: D3PM's
    T comes with it, and a score sampler (SEDD) is not handed a denoiser's ``process``."""
    from duo.commands.export import ExportArgs, _sampling_config
    from duo.config import build_config
    from duo.loading import LoadedModel
    from duo.methods.build import build_method

    cfg = build_config(tiny_overrides(tiny_corpus, duo_cache, tmp_path / algo, f"algo={algo}", *extra))
    backbone, method = build_method(cfg, 300)
    loaded = LoadedModel(cfg, method, backbone, None, tmp_path)
    out = _sampling_config(loaded, ExportArgs())
    assert out == {"sampler": sampler, "steps": steps, "nfe": steps, "protocol": "ours", "seq_len": 32}
    assert _sampling_config(loaded, ExportArgs(steps=8, protocol="paper"))["nfe"] == 9


def test_a_flipped_byte_in_the_exported_weights_fails_loading_in_one_line(runs, tmp_path, capsys):
    from safetensors import safe_open

    from duo.commands.export import export_run
    from duo.interop import load_export

    out = export_run(str(runs["duo"]), tmp_path / "export")
    path = out / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["duo_checksum"].startswith("sha256:")
    load_export(out)  # intact: loads
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")  # after the JSON header: the tensors' bytes
    data[(start + len(data)) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    for load in (load_export, load_checkpoint):
        with pytest.raises(ValueError, match="fails its checksum") as info:
            load(out)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    code, _, err = run(capsys, "sample", f"checkpoint={out}", "steps=2", "num_samples=1", "seq_len=16")
    assert code == 2 and err.count("\n") == 1 and "fails its checksum" in err and str(path) in err


def test_automodel_sample_keeps_suffix_and_length_as_duo_sample_does(runs, tmp_path):
    from transformers import AutoModel

    from duo.interop import register_auto_classes

    register_auto_classes()
    out = tmp_path / "export"
    assert main(["export", str(runs["duo"]), str(out)]) == 0
    model = AutoModel.from_pretrained(out)
    loaded = load_checkpoint(runs["duo"])
    texts = model.sample(prompt="The", suffix="end", steps=3, num_samples=2, seq_len=24, length=16, seed=7)
    ref = sample(loaded, SamplingConfig(steps=3, num_samples=2, seq_len=24, length=16, seed=7, prefix="The",
                                        suffix="end"))
    assert texts == ref.texts and all(t.startswith("The") and t.endswith("end") for t in texts)
    gen = model.sample(steps=2, seq_len=16, length=12, return_generation=True)
    assert gen.tokens.shape == (1, 12)
    with pytest.raises(ValueError, match="semi-autoregressive"):
        model.sample(steps=2, seq_len=16, length=24)
