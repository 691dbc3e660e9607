import pytest
import torch

from duo.experiment import build_config
from duo.methods.base import chunked_token_loss
from duo.training.module import build_method

TINY = ["model.hidden_size=32", "model.cond_dim=16", "model.n_heads=2", "model.n_blocks=1", "model.max_seq_len=16"]


def test_chunked_loss_equals_direct_in_value_and_gradient():
    logits = torch.randn(6, 5, 11, requires_grad=True)
    target = torch.randint(0, 11, (6, 5))

    def fn(lg, tg):
        return torch.nn.functional.cross_entropy(lg.flatten(0, 1), tg.flatten(), reduction="none").view_as(tg)

    direct = fn(logits, target)
    (g_direct,) = torch.autograd.grad(direct.sum(), logits)
    chunked = chunked_token_loss(fn, logits, target, max_elements=2 * 5 * 11)  # 2 rows per chunk
    (g_chunked,) = torch.autograd.grad(chunked.sum(), logits)
    assert torch.allclose(direct, chunked) and torch.allclose(g_direct, g_chunked)


@pytest.mark.parametrize("algo", ["duo", "mdlm", "ar"])
def test_method_loss_does_not_depend_on_chunking(algo, monkeypatch):
    cfg = build_config([f"algo={algo}", *TINY])
    torch.manual_seed(0)
    backbone, method = build_method(cfg, 40)
    with torch.no_grad():
        for p in backbone.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    x = torch.randint(0, 40, (4, 16), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.2, 0.4, 0.6, 0.8])

    def run():
        backbone.zero_grad()
        out = method.training_loss({"input_ids": x}, t, generator=torch.Generator().manual_seed(3))
        out.loss.backward()
        return out.loss.detach(), [p.grad.clone() for p in backbone.parameters() if p.grad is not None]

    loss_a, grads_a = run()
    import duo.methods.base as base

    original = base.chunked_token_loss
    monkeypatch.setattr(base, "chunked_token_loss",
                        lambda fn, lg, *r, max_elements=0: original(fn, lg, *r, max_elements=lg[0].numel()))
    for mod in ("duo.methods.duo", "duo.methods.mdlm", "duo.methods.ar"):
        monkeypatch.setattr(f"{mod}.chunked_token_loss", base.chunked_token_loss)
    loss_b, grads_b = run()
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads_a, grads_b))
