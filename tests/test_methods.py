import pytest
import torch

from duo.config import build_config
from duo.methods import build_method

from conftest import randomise_zero_layers as _randomise

TINY = ["model.hidden_size=32", "model.cond_dim=16", "model.n_heads=2", "model.n_blocks=1", "model.max_seq_len=16"]




@pytest.mark.parametrize("algo", ["duo", "mdlm", "ar", "duo-topk"])
def test_chunked_token_loss_equals_the_direct_one(algo, monkeypatch):
    """Chunks of 5 tokens under checkpointing give the same loss and gradients as one pass."""
    extra = ["algo=duo", "algo.curriculum=topk", "algo.curriculum_steps=10"] if algo == "duo-topk" else [f"algo={algo}"]
    cfg = build_config([*extra, *TINY])
    torch.manual_seed(0)
    backbone, method = build_method(cfg, 40)
    _randomise(backbone)
    x = torch.randint(0, 40, (4, 16), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.2, 0.4, 0.6, 0.8])

    def run():
        backbone.zero_grad()
        out = method.training_loss({"input_ids": x}, t, generator=torch.Generator().manual_seed(3))
        out.loss.backward()
        return out.loss.detach(), [p.grad.clone() for p in backbone.parameters() if p.grad is not None]

    loss_direct, grads_direct = run()
    method.loss_chunk_elements = 5 * 40  # chunks of 5 tokens
    loss_chunked, grads_chunked = run()
    assert torch.allclose(loss_direct, loss_chunked, atol=1e-6)
    assert len(grads_direct) == len(grads_chunked)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads_direct, grads_chunked))


@pytest.mark.parametrize("chunk", [None, 5 * 40])
def test_duo_loss_on_the_padded_output_layer_equals_the_plain_one(chunk, monkeypatch):
    """On CUDA the output layer pads its rows to a multiple of 64 and Duo's fused loss
    takes the padded logits (its gradient then needs no zero-padded copy): the loss and
    every gradient equal those of the plain layer (forced here on CPU)."""
    import duo.methods.duo as duo_method

    widths = []
    fused = duo_method.usdm_nelbo_from_logits

    def spy(logits, *args, **kwargs):
        widths.append(logits.shape[-1])
        return fused(logits, *args, **kwargs)

    monkeypatch.setattr(duo_method, "usdm_nelbo_from_logits", spy)
    cfg = build_config(["algo=duo", *TINY])
    backbone, method = build_method(cfg, 40)
    _randomise(backbone)
    method.loss_chunk_elements = chunk
    x = torch.randint(0, 40, (4, 16), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.2, 0.4, 0.6, 0.8])

    def run(align):
        backbone.output_layer.align = align
        backbone.zero_grad()
        out = method.training_loss({"input_ids": x}, t, generator=torch.Generator().manual_seed(3))
        out.loss.backward()
        return out.loss.detach(), [p.grad.clone() for p in backbone.parameters() if p.grad is not None]

    loss, grads = run(None)
    loss_padded, grads_padded = run(64)
    assert set(widths) == {40, 64}
    if chunk is not None:  # chunks of ``chunk`` padded logits, each run again in backward
        assert widths.count(40) == 2 * -(-64 // (chunk // 40))
        assert widths.count(64) == 2 * -(-64 // (chunk // 64))
    assert torch.allclose(loss, loss_padded, atol=1e-6)
    assert len(grads) == len(grads_padded)
    assert all(a.shape == b.shape and torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, grads_padded))


def test_hidden_then_head_equals_forward():
    cfg = build_config(["algo=duo", *TINY])
    backbone, _ = build_method(cfg, 30)
    _randomise(backbone)
    z = torch.randint(0, 30, (2, 16))
    sigma = torch.tensor([0.5, 2.0])
    h, c = backbone.hidden(z, sigma)
    assert torch.allclose(backbone.output_layer(h, c), backbone(z, sigma), atol=1e-6)


@pytest.mark.parametrize("kind, dtype", [("autograd", torch.float32), ("fused-nelbo", torch.bfloat16),
                                         ("fused-kl", torch.bfloat16)])
@pytest.mark.parametrize("chunked", [False, True])
def test_token_loss_hands_fused_losses_the_bf16_logits(kind, dtype, chunked):
    # Under bf16 autocast the output layer gives bf16 logits: the fused losses read them
    # as they are (an upcast copy adds no precision), the others get float32.
    from duo.losses import token_loss

    cfg = build_config(["algo=duo", *TINY])
    backbone, _ = build_method(cfg, 40)
    _randomise(backbone)
    x = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(0))
    seen = []

    def fn(logits, ids, vocab_size=None):
        seen.append(logits.dtype)
        logits = logits[..., :vocab_size].float()
        return logits.logsumexp(-1) - logits.gather(-1, ids[..., None])[..., 0]

    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = token_loss(fn, backbone, x, torch.rand(2), x, kind=kind,
                         max_elements=8 * 40 if chunked else None)
    out.sum().backward()
    assert out.shape == (2, 16) and seen and set(seen) == {dtype}
    assert backbone.output_layer.linear.weight.grad is not None


def test_default_loss_chunk_is_large_only_for_the_fused_nelbo_with_its_kernels(monkeypatch):
    import duo.losses.chunked as base

    t = torch.zeros(1)
    assert base.default_chunk("fused-nelbo", t) == base.default_chunk("autograd", t) == 2**24  # CPU
    monkeypatch.setattr(base, "LOSS_CHUNK", {})  # as on an accelerator
    monkeypatch.setattr(base, "kernels_available", lambda t: True)
    assert base.default_chunk("fused-nelbo", t) == 2**32
    assert base.default_chunk("fused-kl", t) == base.default_chunk("autograd", t) == 2**27
    # without the kernels the fused NELBO runs its PyTorch passes: autograd's chunk
    monkeypatch.setattr(base, "kernels_available", lambda t: False)
    assert base.default_chunk("fused-nelbo", t) == 2**27
