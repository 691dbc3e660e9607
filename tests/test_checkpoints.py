import pytest
import torch

from duo.checkpoints import export_pretrained, load_checkpoint, load_pretrained, load_published
from duo.config import build_config
from duo.training import train
from duo.methods import build_method

from conftest import tiny_overrides


@pytest.fixture(scope="module")
def run(tiny_corpus, duo_cache, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ckpt") / "duo"
    return train(build_config(tiny_overrides(tiny_corpus, duo_cache, run_dir, "trainer.max_steps=4")))


def test_load_checkpoint_uses_ema_and_round_trips_through_export(run, tmp_path):
    ema = load_checkpoint(run.run_dir)
    raw = load_checkpoint(run.run_dir, use_ema=False)
    ckpt = torch.load(run.checkpoint, weights_only=True)
    shadow = ckpt["ema"]["shadow_params"]
    assert all(torch.equal(p, s) for p, s in zip(ema.backbone.parameters(), shadow))
    assert any(not torch.equal(a, b) for a, b in zip(ema.backbone.parameters(), raw.backbone.parameters()))
    out = export_pretrained(ema, tmp_path / "export")
    back = load_pretrained(out)
    z = torch.randint(0, ema.tokenizer.vocab_size, (2, 16))
    sigma = torch.tensor([0.3, 1.5])
    assert torch.allclose(back.backbone(z, sigma), ema.backbone(z, sigma))
    assert back.tokenizer.encode("import os") == ema.tokenizer.encode("import os")


def test_published_layout_loads(run, tmp_path):
    """A Lightning .ckpt in the published layout: backbone.* keys, EMA in 'ema', K = tokens + 1."""
    ours = load_checkpoint(run.run_dir)
    cfg = build_config(["algo=duo", "model.hidden_size=32", "model.cond_dim=16", "model.n_heads=2",
                        "model.n_blocks=1", "model.max_seq_len=32"])
    backbone, _ = build_method(cfg, ours.tokenizer.vocab_size, model_vocab_size=ours.tokenizer.vocab_size + 1)
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    shadow = [p.detach() + 1.0 for p in backbone.parameters()]
    path = tmp_path / "published.ckpt"
    torch.save({"state_dict": state, "ema": {"decay": 0.9999, "num_updates": 10, "shadow_params": shadow}}, path)
    loaded = load_published(path, algo="duo", model="tiny", tokenizer=ours.tokenizer, seq_len=32,
                            overrides=["model.hidden_size=32", "model.cond_dim=16", "model.n_heads=2",
                                       "model.n_blocks=1", "model.max_seq_len=32"])
    assert loaded.backbone.vocab_embed.embedding.shape[0] == ours.tokenizer.vocab_size + 1
    assert torch.equal(loaded.backbone.vocab_embed.embedding, shadow[0])


def test_bad_checkpoints(tmp_path, run):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.ckpt")
    bad = tmp_path / "corrupt.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(bad)
    from duo.data import CharTokenizer

    with pytest.raises(ValueError, match="ids but checkpoint"):
        load_checkpoint(run.run_dir, tokenizer=CharTokenizer())
