import math

import pytest
import torch

from duo.config import build_config
from duo.methods import DuoConfig, curriculum_length, tau_at
from duo.methods import build_method

from conftest import randomise_zero_layers
from test_training import split_run

TINY_MODEL = ["model.hidden_size=32", "model.cond_dim=16", "model.n_heads=2", "model.n_blocks=1",
              "model.max_seq_len=32"]


def gradient_variance(curriculum: str, draws: int = 48) -> float:
    """Summed variance over parameters of the gradient, across draws of (t, noise) on one batch."""
    cfg = build_config(["algo=duo", *TINY_MODEL, f"algo.curriculum={curriculum}", "algo.curriculum_steps=100"])
    torch.manual_seed(0)
    backbone, method = build_method(cfg, 200)
    with torch.no_grad():  # leave the zero-initialised (adaLN / output) layers so every weight gets gradient
        for p in backbone.parameters():
            if p.dim() > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.02)
    x = torch.randint(0, 200, (8, 32), generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    grads = []
    for _ in range(draws):
        t = torch.rand(8, generator=gen) * 0.999 + 1e-3
        backbone.zero_grad()
        method.training_loss({"input_ids": x}, t, step=0, generator=gen).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in backbone.parameters() if p.grad is not None]))
    return torch.stack(grads).var(0).sum().item()


def test_curriculum_lowers_gradient_variance():
    """The curriculum loss (gamma drawn where T spans [0.05, 0.95], relaxed input at
    tau = 1e-3) against the discrete loss on the log-linear schedule. At tau = 1e-3 the
    input is nearly one-hot, so most of the reduction comes from the restricted alpha
    range and its loss weights rather than from the softness of the input."""
    discrete = gradient_variance("none")
    assert gradient_variance("full") < 0.7 * discrete
    assert gradient_variance("topk") < 0.7 * discrete


def test_tau_schedule_and_phase_length():
    cfg = DuoConfig(curriculum="full", tau=1e-2, tau_end=1e-4, tau_anneal_start=10, tau_anneal_end=30)
    assert tau_at(0, cfg) == pytest.approx(1e-2)
    assert tau_at(20, cfg) == pytest.approx(1e-3)  # halfway in log10 space
    assert tau_at(99, cfg) == pytest.approx(1e-4)
    assert tau_at(5, DuoConfig(tau=3e-3)) == 3e-3
    assert curriculum_length(DuoConfig(curriculum="none"), 100) == 0
    assert curriculum_length(DuoConfig(curriculum="full"), 100) == 50
    assert curriculum_length(DuoConfig(curriculum="topk", curriculum_steps=7), 100) == 7
    assert curriculum_length(DuoConfig(curriculum="topk", curriculum_fraction=0.25), 100) == 25
    with pytest.raises(ValueError, match="only one"):
        DuoConfig(curriculum_steps=3, curriculum_fraction=0.5).validate()
    with pytest.raises(ValueError, match="together"):
        DuoConfig(tau=1e-2, tau_end=1e-4).validate()  # would silently never anneal
    with pytest.raises(ValueError, match="must be after"):
        DuoConfig(tau=1e-2, tau_end=1e-4, tau_anneal_start=10, tau_anneal_end=10).validate()


def test_gamma_range_is_derived_from_the_vocabulary():
    cfg = build_config(["algo=duo", *TINY_MODEL, "algo.curriculum=full"])
    _, method = build_method(cfg, 50257)
    sched = method.gaussian_schedule
    assert (sched.gamma_min, sched.gamma_max) == pytest.approx((-3.55, -1.85), abs=0.02)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert sched.alpha(t).tolist() == pytest.approx([0.95, 0.05], abs=1e-9)


def test_curriculum_loss_is_the_discrete_loss_at_tau_zero():
    """At tau = 0 the relaxed input is the one-hot of z_t = argmax w_t, so the curriculum
    loss equals the discrete NELBO evaluated at the same z_t and alpha = T(gamma)."""
    from duo.losses import usdm_nelbo
    from duo.schedules import sigma_from_alpha

    cfg = build_config(["algo=duo", *TINY_MODEL, "algo.curriculum=full", "algo.tau=0",
                        "algo.curriculum_steps=10"])
    torch.manual_seed(0)
    backbone, method = build_method(cfg, 50)
    randomise_zero_layers(backbone)  # a zero output layer would make any input look alike
    x = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.1, 0.4, 0.6, 0.9])
    out = method.training_loss({"input_ids": x}, t, step=0, generator=torch.Generator().manual_seed(5))
    # replay the same draw to get z_t
    from duo import relaxation

    sched = method.gaussian_schedule
    gamma = sched.gamma(t.double())
    relaxed = relaxation.full_relaxation(x, gamma.float()[:, None], 50, 0.0,
                                         generator=torch.Generator().manual_seed(5))
    alpha = sched.alpha(t.double()).float()[:, None]
    dalpha = sched.dalpha(t.double()).float()[:, None]
    log_p = backbone(relaxed.z_t, sigma_from_alpha(alpha[:, 0])).log_softmax(-1)
    expected = usdm_nelbo(log_p, relaxed.z_t, x, alpha, dalpha).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.parametrize("curriculum", ["full", "topk"])
def test_resume_across_the_phase_boundary_is_exact(curriculum, tiny_corpus, duo_cache, tmp_path):
    common = ["trainer.ckpt_every=4", f"algo.curriculum={curriculum}", "algo.curriculum_steps=6",
              "algo.tau=1e-2", "algo.tau_end=1e-3", "algo.tau_anneal_end=6"]
    full, resumed = split_run(tiny_corpus, duo_cache, tmp_path, common, stop=4, end=9)
    for step in range(5, 10):
        assert resumed[step] == pytest.approx(full[step], rel=1e-5, abs=1e-6), step
    assert all(math.isfinite(v) for v in full.values())


def test_polynomial_alpha_fit_changes_the_loss_only_slightly():
    x = torch.randint(0, 200, (4, 32), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.1, 0.4, 0.6, 0.9])
    losses = []
    for extra in ([], ["algo.poly_fit_degree=9"]):
        cfg = build_config(["algo=duo", *TINY_MODEL, "algo.curriculum=topk", "algo.curriculum_steps=10", *extra])
        torch.manual_seed(0)
        _, method = build_method(cfg, 200)
        losses.append(method.training_loss({"input_ids": x}, t, step=0,
                                           generator=torch.Generator().manual_seed(1)).loss.item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)
