"""Published artifacts: official Lightning .ckpt (main / ch-1 layouts), HF folders, hf: ids.

Each checkpoint is built here in the official layout (a tiny DiT under ``backbone.``, an
``ema`` entry, optimiser / loop states, ``hyper_parameters`` with a real OmegaConf config
and a pickled Hugging Face tokenizer), saved with plain ``torch.save``.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess

import pytest
import torch

from duo.checkpoints import load_checkpoint
from duo.interop import load_official, load_restricted, to_plain
from duo.models import ModelConfig, build_model

omegaconf = pytest.importorskip("omegaconf")
transformers = pytest.importorskip("transformers")

D, C, H, N, L = 32, 16, 2, 2, 32
TEXT = "the cat sat on the mat. hello world!"


@pytest.fixture(scope="module")
def hf_tokenizer():
    """A GPT-2-style fast tokenizer: byte-level BPE, <|endoftext|> as BOS/EOS, [PAD] added."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([TEXT, "a cat and a hat", "worlds of mats"] * 10, trainer)
    tok.post_processor = processors.BertProcessing(("<|endoftext|>", 0), ("<|endoftext|>", 0))
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                              eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    hf.add_special_tokens({"pad_token": "[PAD]"})
    return hf


def _source_model(algo: str, vocab: int, seed: int = 0):
    causal = algo == "ar"
    cfg = ModelConfig(vocab_size=vocab, hidden_size=D, cond_dim=C, n_heads=H, n_blocks=N, max_seq_len=L,
                      dropout=0.0, causal=causal, time_conditioning=algo == "duo")
    model = build_model(cfg.validate())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # the zero-initialised layers would make every logit equal
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


def _hydra(algo_name: str, layout: str) -> dict:
    model = {"name": "tiny", "type": "ddit", "hidden_size": D, "cond_dim": C, "length": L, "n_blocks": N,
             "n_heads": H, "scale_by_sigma": True, "dropout": 0.1, "tie_word_embeddings": False}
    algo = {"name": algo_name, "backbone": "dit", "T": 0, "subs_masking": False, "ignore_bos": False,
            "causal_attention": algo_name == "ar", "time_conditioning": algo_name not in ("mdlm", "ar"),
            "parameterization": {"mdlm": "subs", "ar": "ar"}.get(algo_name, "mean")}
    if layout == "main":
        noise = {"type": "log-linear", "eps": 1e-3}
        if algo_name.startswith("duo"):
            algo["curriculum"] = {"mode": "simple", "start": 100_000, "end": 200_000,
                                  "gamma_min": -3.5, "gamma_max": -1.75, "top_k": -1}
    else:  # ch-1: flat curriculum keys; the noise's eps (0) is ignored by its LogLinear
        noise = {"type": "log-linear", "parameterization": "log-linear", "eps": 0,
                 "denoiser_latent_conditioning": -1, "freeze_encoder": False, "freeze_decoder": False}
        if algo_name.startswith("duo"):
            algo.update(curriculum_start=100_000, curriculum_end=200_000, gamma_min=-3.5, gamma_max=-1.75,
                        integral_cache_path="${hydra:runtime.cwd}/integral/gpt2.pkl")
    return {"mode": "train", "seed": 1, "algo": algo, "model": model, "noise": noise,
            "data": {"train": "openwebtext", "tokenizer_name_or_path": "gpt2", "wrap": True},
            "loader": {"global_batch_size": 512, "batch_size": "${div_up:${.global_batch_size}, 8}"},
            "training": {"ema": 0.9999, "sampling_eps": 1e-3}, "sampling": {"steps": 1000, "predictor": "ancestral"}}


def _official_ckpt(path, model, tokenizer, algo_name: str, layout: str, attribute_dict: bool = False,
                   extra_hparams: dict | None = None):
    """Save ``model`` the way the official Lightning module does; returns the EMA shadow list."""
    from omegaconf import OmegaConf

    state = collections.OrderedDict((f"backbone.{k}", v.clone()) for k, v in model.state_dict().items())
    gen = torch.Generator().manual_seed(1)
    shadow = [p.detach().clone() + 0.05 * torch.randn(p.shape, generator=gen) for p in model.parameters()]
    hparams = {"config": OmegaConf.create(_hydra(algo_name, layout)), "tokenizer": tokenizer,
               **(extra_hparams or {})}
    if attribute_dict:
        from lightning.fabric.utilities.data import AttributeDict

        hparams = AttributeDict(hparams)
    first = next(iter(model.parameters()))
    ckpt = {
        "epoch": 3, "global_step": 1200, "pytorch-lightning_version": "2.2.1",
        "state_dict": state,
        "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 3}},
                               "epoch_loop.batch_progress": {"current": {"completed": 1200}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val/nll'}": {"best_model_score": torch.tensor(3.2),
                                                                "dirpath": "/ckpts", "best_k_models": {}}},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(12.0), "exp_avg": torch.zeros_like(first),
                                            "exp_avg_sq": torch.zeros_like(first)}},
                              "param_groups": [{"lr": 3e-4, "betas": (0.9, 0.999), "params": [0]}]}],
        "lr_schedulers": [{"base_lrs": [3e-4], "last_epoch": 1200, "lr_lambdas": [None]}],
        "ema": {"decay": 0.9999, "num_updates": 1200, "shadow_params": shadow},
        "sampler": {"random_state": None},
        "hparams_name": "kwargs",
        "hyper_parameters": hparams,
    }
    torch.save(ckpt, path)
    return shadow


def _with_params(model, shadow):
    import copy

    out = copy.deepcopy(model)
    with torch.no_grad():
        for p, s in zip(out.parameters(), shadow):
            p.copy_(s)
    return out


def _inputs(vocab: int):
    gen = torch.Generator().manual_seed(3)
    return torch.randint(0, vocab, (2, 12), generator=gen), torch.tensor([0.4, 2.0])


@pytest.fixture(scope="module")
def duo_main(hf_tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("official") / "duo.ckpt"
    model = _source_model("duo", len(hf_tokenizer))
    shadow = _official_ckpt(path, model, hf_tokenizer, "duo_base", "main", attribute_dict=True)
    return path, model, shadow


def test_plain_weights_only_load_refuses_the_official_layout(duo_main):
    path, _, _ = duo_main
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)
    raw = load_restricted(path)  # records instead: a DictConfig becomes plain data
    config = to_plain(raw["hyper_parameters"])["config"]
    assert config["model"]["hidden_size"] == D and config["algo"]["curriculum"]["gamma_min"] == -3.5
    assert config["loader"]["batch_size"] == "${div_up:${.global_batch_size}, 8}"  # kept, never resolved
    assert raw["optimizer_states"][0]["param_groups"][0]["betas"] == (0.9, 0.999)


def test_main_layout_raw_and_ema_logits_match_the_source(duo_main, hf_tokenizer):
    path, model, shadow = duo_main
    z, sigma = _inputs(len(hf_tokenizer))
    raw = load_checkpoint(path, use_ema=False)
    ema = load_checkpoint(path)
    assert raw.algo == ema.algo == "duo"
    assert ema.metadata["layout"] == "main" and ema.metadata["weights"] == "ema"
    m = ema.cfg.model
    assert (m.hidden_size, m.cond_dim, m.n_heads, m.n_blocks, m.max_seq_len, m.vocab_size) == (
        D, C, H, N, L, len(hf_tokenizer))
    assert ema.cfg.algo_cfg.schedule == "loglinear" and ema.cfg.algo_cfg.eps == pytest.approx(1e-3)
    with torch.no_grad():
        torch.testing.assert_close(raw.backbone(z, sigma), model(z, sigma), rtol=0, atol=0)
        torch.testing.assert_close(ema.backbone(z, sigma), _with_params(model, shadow)(z, sigma), rtol=0, atol=0)
    assert not torch.equal(raw.backbone(z, sigma), ema.backbone(z, sigma))


def test_pickled_tokenizer_round_trips(duo_main, hf_tokenizer):
    loaded = load_official(duo_main[0])
    tok = loaded.tokenizer
    assert loaded.metadata["tokenizer_source"] == "artifact"
    assert tok.vocab_size == len(hf_tokenizer)
    ids = hf_tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert tok.encode(TEXT) == ids
    assert tok.decode(ids) == hf_tokenizer.decode(ids)
    assert tok.eos_id == hf_tokenizer.eos_token_id and tok.pad_id == hf_tokenizer.pad_token_id


def test_ch1_layout_mdlm(hf_tokenizer, tmp_path):
    path = tmp_path / "mdlm.ckpt"
    # The official MDLM on GPT-2 embeds the tokenizer's ids; its mask is the last id ([PAD]).
    model = _source_model("mdlm", len(hf_tokenizer), seed=5)
    shadow = _official_ckpt(path, model, hf_tokenizer, "mdlm", "ch-1")
    loaded = load_checkpoint(path, algo="mdlm")
    assert loaded.algo == "mdlm" and loaded.metadata["layout"] == "ch-1"
    assert loaded.cfg.algo_cfg.eps == pytest.approx(1e-3)  # not the YAML's 0
    assert loaded.cfg.algo_cfg.time_conditioning is False
    z, sigma = _inputs(len(hf_tokenizer))
    with torch.no_grad():
        torch.testing.assert_close(loaded.backbone(z, sigma), _with_params(model, shadow)(z, sigma), rtol=0, atol=0)


def test_ch1_layout_duo_distilled_name(hf_tokenizer, tmp_path):
    path = tmp_path / "dcd.ckpt"
    model = _source_model("duo", len(hf_tokenizer), seed=7)
    _official_ckpt(path, model, hf_tokenizer, "distillation", "ch-1")
    loaded = load_official(path, weights="raw")
    assert loaded.algo == "duo" and loaded.metadata["official_algo"] == "distillation"
    z, sigma = _inputs(len(hf_tokenizer))
    with torch.no_grad():
        torch.testing.assert_close(loaded.backbone(z, sigma), model(z, sigma), rtol=0, atol=0)


@pytest.fixture(scope="module")
def ar_ckpt(hf_tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("official_ar") / "ar.ckpt"
    model = _source_model("ar", len(hf_tokenizer), seed=9)
    _official_ckpt(path, model, hf_tokenizer, "ar", "main")
    return path, model


def test_ar_masks_the_extra_id(ar_ckpt, hf_tokenizer):
    path, model = ar_ckpt
    loaded = load_checkpoint(path, use_ema=False)
    K = len(hf_tokenizer)
    assert loaded.algo == "ar" and loaded.method.masked_logit_ids == (K - 1,)
    z, _ = _inputs(K)
    with torch.no_grad():
        got = loaded.method.next_token_logits(z)
        want = model(z, None).float()
    assert torch.all(got[..., K - 1] == -1e6)
    torch.testing.assert_close(got[..., : K - 1], want[..., : K - 1], rtol=0, atol=0)
    loss = loaded.method.training_loss({"input_ids": z})
    assert torch.isfinite(loss.loss)


def _hf_folder(folder, model, *, prefix: bool, with_tokenizer=None):
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    state = {(f"backbone.{k}" if prefix else k): v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "duo", "architectures": ["DUO"], "auto_map": {"AutoConfig": "configuration_duo.DUOConfig"},
        "vocab_size": model.vocab_embed.embedding.shape[0], "model_length": L, "hidden_dim": D, "cond_dim": C,
        "n_blocks": N, "n_heads": H, "dropout": 0.1, "causal": False, "var_min": True}))
    if with_tokenizer is not None:
        with_tokenizer.save_pretrained(str(folder))
    return folder


def test_hf_folder_loads(hf_tokenizer, tmp_path):
    model = _source_model("duo", len(hf_tokenizer), seed=11)
    folder = _hf_folder(tmp_path / "hf", model, prefix=True, with_tokenizer=hf_tokenizer)
    loaded = load_checkpoint(folder)
    assert loaded.algo == "duo" and loaded.metadata["layout"] == "hf"
    assert loaded.cfg.model.max_seq_len == L and loaded.tokenizer.encode(TEXT) == hf_tokenizer.encode(
        TEXT, add_special_tokens=False)
    z, sigma = _inputs(len(hf_tokenizer))
    with torch.no_grad():
        torch.testing.assert_close(loaded.backbone(z, sigma), model(z, sigma), rtol=0, atol=0)


def _one_line_error(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def test_missing_tokenizer_is_one_line(hf_tokenizer, tmp_path, monkeypatch):
    import duo.data

    def offline(name, **kwargs):
        raise ValueError(f"cannot load tokenizer {name!r} (offline); check the name, the network")

    monkeypatch.setattr(duo.data, "get_tokenizer", offline)
    model = _source_model("duo", len(hf_tokenizer), seed=13)
    folder = _hf_folder(tmp_path / "hf-notok", model, prefix=False)
    with pytest.raises(ValueError) as excinfo:
        load_checkpoint(folder)
    assert "tokenizer=" in _one_line_error(excinfo) and "carries no tokenizer" in str(excinfo.value)
    # With tokenizer= it loads.
    from duo.data import HFTokenizer

    loaded = load_checkpoint(folder, tokenizer=HFTokenizer(hf_tokenizer, "tiny"))
    assert loaded.tokenizer.vocab_size == len(hf_tokenizer)


def test_wrong_algo_is_one_line(duo_main):
    with pytest.raises(ValueError) as excinfo:
        load_checkpoint(duo_main[0], algo="mdlm")
    text = _one_line_error(excinfo)
    assert "duo" in text and "mdlm" in text


class _RunsCode:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "subprocess.Popen"])
def test_checkpoint_that_would_run_code_is_refused(kind, hf_tokenizer, tmp_path):
    marker = tmp_path / f"pwned-{kind}"
    payload = {
        "os.system": _RunsCode(os.system, (f"touch {marker}",)),
        "builtins.eval": _RunsCode(eval, (f"open({str(marker)!r}, 'w').close()",)),
        "subprocess.Popen": _RunsCode(subprocess.Popen, (["touch", str(marker)],)),
    }[kind]
    path = tmp_path / "evil.ckpt"
    _official_ckpt(path, _source_model("duo", len(hf_tokenizer)), hf_tokenizer, "duo", "main",
                   extra_hparams={"evil": payload})
    with pytest.raises(ValueError) as excinfo:
        load_checkpoint(path)
    text = _one_line_error(excinfo)
    assert f"would import {kind} when loaded; refusing it" in text and str(path) in text
    assert not marker.exists()


def test_hub_id_offline_is_one_line(tmp_path, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError) as excinfo:
        load_checkpoint("hf:nobody-here/no-such-model")
    text = _one_line_error(excinfo)
    assert "'nobody-here/no-such-model' is not in the local cache and the Hub is unreachable" in text


def test_convert_writes_a_folder_duo_sample_loads(duo_main, ar_ckpt, hf_tokenizer, tmp_path, capsys):
    from duo.cli import main

    path, model, shadow = duo_main
    out = tmp_path / "converted"
    assert main(["convert", str(path), str(out)]) == 0
    assert (out / "model.safetensors").is_file() and (out / "config.yaml").is_file()
    back = load_checkpoint(out)
    z, sigma = _inputs(len(hf_tokenizer))
    with torch.no_grad():
        torch.testing.assert_close(back.backbone(z, sigma), _with_params(model, shadow)(z, sigma), rtol=0, atol=0)
    assert back.tokenizer.encode(TEXT) == hf_tokenizer.encode(TEXT, add_special_tokens=False)
    samples = tmp_path / "samples.jsonl"
    assert main(["sample", f"checkpoint={out}", "steps=2", "num_samples=1", "seq_len=8", "device=cpu",
                 f"out={samples}"]) == 0
    assert samples.is_file()
    assert main(["convert", str(path), str(out)]) == 2  # never overwrites a model
    out_ar = tmp_path / "converted-ar"
    assert main(["convert", str(ar_ckpt[0]), str(out_ar), "weights=raw"]) == 0
    assert load_checkpoint(out_ar).method.masked_logit_ids == (len(hf_tokenizer) - 1,)


def test_a_refused_pickle_cannot_set_attributes_of_shared_classes_or_functions(tmp_path):
    """BUILD with a (state, slotstate) pair would setattr on whatever the allowlist handed
    out (a class such as collections.Counter, a torch rebuild function): refused."""
    import collections
    import zipfile

    from duo.interop.restricted_unpickle import load_restricted

    def payload(module: str, name: str, attr: str) -> bytes:
        key = attr.encode()
        return (b"\x80\x02" + f"c{module}\n{name}\n".encode() + b"N}" + b"X" + len(key).to_bytes(4, "little")
                + key + b"Ns\x86b.")

    for module, name, attr, still in (("collections", "Counter", "most_common", lambda: collections.Counter.most_common),
                                      ("torch._utils", "_rebuild_tensor_v2", "__defaults__",
                                       lambda: torch._utils._rebuild_tensor_v2.__defaults__)):
        before = still()
        path = tmp_path / f"{name}.ckpt"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", payload(module, name, attr))
        with pytest.raises(ValueError, match="refusing it"):
            load_restricted(path)
        assert still() is before


def test_convert_and_export_agree_on_what_is_positional():
    from duo.commands.convert import parse
    from duo.commands.export import parse as parse_export

    a = parse(["runs/lr=3e-4/last.ckpt", "out", "weights=raw", "algo=mdlm"])
    assert (a.src, a.out, a.weights, a.algo, a.device) == ("runs/lr=3e-4/last.ckpt", "out", "raw", "mdlm", "cpu")
    (src, out), e, _ = parse_export(["runs/lr=3e-4/last.ckpt", "out", "weights=raw"], "export", 2, "u")
    assert (src, out, e.weights) == (a.src, a.out, a.weights)
    b = parse(["src=a.ckpt", "out"])
    assert (b.src, b.out) == ("a.ckpt", "out")
    for bad, match in ((["a"], "usage"), (["a", "b", "c"], "usage"), (["a", "b", "weights=x"], "ema or raw"),
                       (["a", "b", "foo=1"], "unknown key 'foo' for duo convert")):
        with pytest.raises(ValueError, match=match):
            parse(bad)
