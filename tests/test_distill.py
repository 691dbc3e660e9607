import copy
import hashlib

import lightning.pytorch as pl
import pytest
import torch

from duo.checkpoints import load_checkpoint
from duo.utils.typed_config import ConfigError
from duo.config import build_config
from duo.methods import DistillConfig, round_and_delta
from duo.training import train
from duo.training.distill import distill
from duo.methods import build_method

from conftest import TINY_DISTILL, randomise_zero_layers, tiny_overrides
from test_training import losses


@pytest.fixture(scope="module")
def teacher_run(tiny_corpus, duo_cache, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("teacher") / "duo"
    train(build_config(tiny_overrides(tiny_corpus, duo_cache, run_dir, "trainer.max_steps=25")))
    return run_dir


def student_teacher_pair():
    """A tiny distill method whose teacher is a perturbed copy of its student (delta = 1/8)."""
    torch.manual_seed(0)
    student, method = build_method(build_config(TINY_DISTILL), 30)
    randomise_zero_layers(student, 0.1)
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.1 * torch.randn_like(p))
    method.teacher = teacher
    return student, teacher, method


DISTILL = ["distill.rounds=3", "distill.steps_per_round=4", "distill.T0=16", "trainer.lr=1e-3",
           "trainer.log_every=1", "trainer.val_every=1000", "trainer.progress_bar=false",
           "trainer.loggers=[csv]", "sample.num_samples=0"]


def test_round_and_delta():
    cfg = DistillConfig(rounds=5, steps_per_round=10, T0=512)
    assert round_and_delta(0, cfg) == (0, 1 / 512)
    assert round_and_delta(25, cfg) == (2, 4 / 512)
    assert round_and_delta(10_000, cfg) == (4, 16 / 512)  # stays in the last round
    with pytest.raises(ValueError, match="delta"):
        DistillConfig(rounds=10, T0=512).validate()


def test_loss_is_zero_for_the_same_network_at_the_same_point():
    cfg = build_config(["algo=distill", "algo.T0=1000000000", "model.hidden_size=32", "model.cond_dim=16",
                        "model.n_heads=2", "model.n_blocks=1", "model.max_seq_len=16"])
    torch.manual_seed(0)
    backbone, method = build_method(cfg, 30)
    randomise_zero_layers(backbone)
    method.teacher = backbone
    x = torch.randint(0, 30, (4, 16), generator=torch.Generator().manual_seed(0))
    out = method.training_loss({"input_ids": x}, torch.tensor([0.1, 0.3, 0.6, 0.9]), step=0,
                               generator=torch.Generator().manual_seed(1))
    assert abs(out.loss.item()) < 1e-6
    # a perturbed student is penalised
    method.teacher = copy.deepcopy(backbone)
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = method.training_loss({"input_ids": x}, torch.tensor([0.1, 0.3, 0.6, 0.9]), step=0,
                               generator=torch.Generator().manual_seed(1))
    assert out.loss.item() > 1e-4


class TeacherFingerprints(pl.Callback):
    def __init__(self, refresh):
        self.refresh = refresh
        self.seen = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        h = hashlib.sha256()
        for p in self.refresh.teacher.parameters():
            h.update(p.detach().cpu().numpy().tobytes())
        self.seen[trainer.global_step] = h.hexdigest()


def test_teacher_changes_only_at_round_boundaries(teacher_run, tmp_path, monkeypatch):
    from duo.training import distill as distill_mod

    made = []
    original = distill_mod.TeacherRefresh

    class Recording(original):
        def __init__(self):
            super().__init__()
            made.append(self)

    monkeypatch.setattr(distill_mod, "TeacherRefresh", Recording)
    probe = TeacherFingerprints(None)

    class Bind(pl.Callback):
        def on_fit_start(self, trainer, module):
            probe.refresh = made[0]

    result = distill(teacher_run, [*DISTILL, f"run_dir={tmp_path / 'student'}"], callbacks=[Bind(), probe])
    steps = sorted(probe.seen)
    changes = [s for a, s in zip(steps, steps[1:]) if probe.seen[a] != probe.seen[s]]
    assert changes == [4, 8]
    assert made[0].refreshes == [4, 8]
    assert (result.run_dir / "plots" / "distill_loss.png").is_file()
    loaded = load_checkpoint(result.run_dir)
    assert loaded.cfg.algo == "distill"
    assert loaded.metadata["sampler"] == "greedy_tail" and loaded.metadata["steps"] == 8
    rounds = {s: r["round"] for s, r in ((s, r) for s, r in _records(result.run_dir).items())}
    assert rounds[1] == 0 and rounds[5] == 1 and rounds[12] == 2


def _records(run_dir):
    import json

    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["split"] == "train":
            out[rec["step"]] = rec
    return out


def test_resume_mid_round_continues_exactly(teacher_run, tmp_path):
    full = distill(teacher_run, [*DISTILL, "trainer.ckpt_every=6", f"run_dir={tmp_path / 'full'}"])
    part = [*DISTILL, "trainer.ckpt_every=6", f"run_dir={tmp_path / 'part'}"]
    distill(teacher_run, [*part, "trainer.max_steps=6"])
    distill(teacher_run, part)  # resumes at step 6, mid round 1
    a, b = losses(full.run_dir), losses(tmp_path / "part")
    for step in range(7, 13):
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-9), step
    assert max(a.values()) > 0


def test_distill_needs_a_duo_checkpoint(teacher_run, tiny_corpus, duo_cache, tmp_path):
    from duo.training.distill import distill_config

    ar = train(build_config(tiny_overrides(tiny_corpus, duo_cache, tmp_path / "ar", "algo=ar",
                                           "trainer.max_steps=2")))
    with pytest.raises(ValueError, match="needs a duo checkpoint"):
        distill(ar.run_dir, [])
    with pytest.raises(ConfigError, match="sets algo=distill"):
        distill_config(teacher_run, ["algo=mdlm"])
    with pytest.raises(ValueError, match="distill.rounds=0"):
        distill_config(teacher_run, ["distill.rounds=0"])


def test_distillation_loss_is_kl_of_student_at_t_from_teacher_at_s():
    """Replays the coupled draw: the loss is KL(student(z_t, t) || teacher(z_s, s)) with
    t ~ U[delta, 1], s = t - delta (MATH.md 6), and the forward KL differs from it."""
    from duo.losses import distillation_kl
    from duo.relaxation import coupled_pair
    from duo.schedules import sigma_from_alpha
    from duo.duality import diffusion_transform

    student, teacher, method = student_teacher_pair()
    x = torch.randint(0, 30, (4, 16), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.1, 0.3, 0.6, 0.9])
    got = method.training_loss({"input_ids": x}, t, step=0, generator=torch.Generator().manual_seed(7))

    delta = 1 / 8
    u = (t.double() - 1e-3) / (1 - 1e-3)
    t_hi = delta + (1 - delta) * u
    g_t, g_s = method.path.gamma(t_hi), method.path.gamma(t_hi - delta)
    a_t = diffusion_transform(g_t, 30).alpha.float()
    a_s = diffusion_transform(g_s, 30).alpha.float()
    pair = coupled_pair(x, g_t.float()[:, None], g_s.float()[:, None], 30,
                        generator=torch.Generator().manual_seed(7))
    s_lp = student(pair.z_t, sigma_from_alpha(a_t)).log_softmax(-1)
    t_lp = teacher(pair.z_s, sigma_from_alpha(a_s)).log_softmax(-1)
    expected = distillation_kl(s_lp, t_lp, "reverse").mean()
    assert got.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert (pair.z_t != pair.z_s).any()  # the two points differ, so the test can tell them apart
    forward = distillation_kl(s_lp, t_lp, "forward").mean()
    assert abs(forward.item() - expected.item()) > 1e-4 * expected.item()


def test_refreshed_teacher_is_the_students_current_weights_not_the_ema(teacher_run, tmp_path):
    seen = {}

    class Compare(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step in (4, 8):
                teacher = module.method.teacher
                same = all(torch.equal(a, b) for a, b in zip(teacher.parameters(), module.backbone.parameters()))
                ema = all(torch.equal(a, b.to(a.dtype)) for a, b in zip(teacher.parameters(), module.ema.shadow))
                seen[trainer.global_step] = (same, ema)

    distill(teacher_run, [*DISTILL, "trainer.ema=0.9", f"run_dir={tmp_path / 's'}"], callbacks=[Compare()])
    assert seen == {4: (True, False), 8: (True, False)}


def test_distillation_loss_does_not_depend_on_chunking():
    _, _, method = student_teacher_pair()
    x = torch.randint(0, 30, (4, 16), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.1, 0.3, 0.6, 0.9])
    losses, grads = [], []
    params = [p for p in method.backbone.parameters() if p.requires_grad]
    for chunk in (2**24, 5 * 30):  # one pass, then checkpointed chunks of 5 tokens
        method.loss_chunk_elements = chunk
        loss = method.training_loss({"input_ids": x}, t, generator=torch.Generator().manual_seed(7)).loss
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, params, allow_unused=True))
    assert torch.allclose(losses[0], losses[1], atol=1e-6)
    scale = max(float(g.abs().max()) for g in grads[0] if g is not None)
    assert scale > 0
    for a, b in zip(*grads):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, rtol=0, atol=1e-6 * scale)


def test_paper_time_draw_has_an_atom_of_mass_delta_at_one():
    """time_draw=paper: t = min(t' + delta, 1) from the training's stratified t' on
    [eps, 1]: mass delta / (1 - eps) at t = 1, the rest uniform on [eps + delta, 1);
    ours: uniform on [delta, 1], no atom (MATH.md 11)."""
    from duo.methods.distill import distill_times

    eps, delta, n = 1e-3, 1 / 8, 200_000
    t = eps + (1 - eps) * (torch.arange(n, dtype=torch.float64) + torch.rand(n, dtype=torch.float64)) / n
    paper = distill_times(t, delta, DistillConfig(time_draw="paper"))
    at_one = paper == 1.0
    assert at_one.float().mean().item() == pytest.approx(delta / (1 - eps), abs=1e-3)
    rest = paper[~at_one]
    assert rest.min().item() >= eps + delta - 1e-12 and rest.max().item() < 1.0
    # uniform on [eps + delta, 1): its deciles sit on the even grid
    deciles = torch.quantile(rest, torch.linspace(0.1, 0.9, 9, dtype=torch.float64))
    expected = eps + delta + (1 - eps - delta) * torch.linspace(0.1, 0.9, 9, dtype=torch.float64)
    assert torch.allclose(deciles, expected, atol=3e-3)
    ours = distill_times(t, delta, DistillConfig())
    assert (ours < 1.0).float().mean().item() > 0.999 and ours.min().item() >= delta - 1e-12
    assert (ours - delta).mean().item() == pytest.approx((1 - delta) / 2, abs=2e-3)


def test_training_loss_uses_the_chosen_time_draw():
    seen = []
    for draw in ("ours", "paper"):
        cfg = build_config([*TINY_DISTILL, f"algo.time_draw={draw}"])  # T0=8: delta = 1/8
        torch.manual_seed(0)
        backbone, method = build_method(cfg, 30)
        method.teacher = copy.deepcopy(backbone)
        gamma = method.path.gamma
        calls = []
        method.path.gamma = lambda t, _g=gamma, _c=calls: (_c.append(t.clone()), _g(t))[1]
        x = torch.randint(0, 30, (2, 16), generator=torch.Generator().manual_seed(0))
        method.training_loss({"input_ids": x}, torch.tensor([0.95, 0.5]), step=0,
                             generator=torch.Generator().manual_seed(1))
        seen.append(calls[0])  # the later time t of each pair
    u = (torch.tensor([0.95, 0.5], dtype=torch.float64) - 1e-3) / (1 - 1e-3)
    assert torch.allclose(seen[0], 1 / 8 + (7 / 8) * u)
    assert torch.allclose(seen[1], torch.tensor([1.0, 0.625], dtype=torch.float64))


def test_student_init_raw_starts_from_the_raw_weights_and_restores_the_ema(teacher_run, tmp_path):
    """student_init=raw: the student (and the first teacher) hold the checkpoint's trained
    weights, not its EMA, and the EMA state (shadows, decay, update count) is the checkpoint's."""
    from duo.checkpoints import read_checkpoint

    saved = read_checkpoint(teacher_run / "checkpoints" / "last.ckpt")
    raw = {k[len("backbone."):]: v for k, v in saved["state_dict"].items() if k.startswith("backbone.")}
    seen = {}

    class Probe(pl.Callback):
        def on_train_start(self, trainer, module):
            seen["student"] = {k: v.detach().cpu().clone() for k, v in module.backbone.state_dict().items()}
            seen["teacher"] = {k: v.detach().cpu().clone() for k, v in module.method.teacher.state_dict().items()}
            seen["ema"] = module.ema.state_dict()

    distill(teacher_run, [*DISTILL, "distill.student_init=raw", "trainer.ema=0.5", "trainer.max_steps=1",
                          f"run_dir={tmp_path / 's'}"], callbacks=[Probe()])
    for name in ("student", "teacher"):
        assert seen[name].keys() == raw.keys()
        assert all(torch.equal(seen[name][k], raw[k].to(seen[name][k].dtype)) for k in raw), name
    ema, want = seen["ema"], saved["ema"]
    assert ema["decay"] == want["decay"] != 0.5 and ema["num_updates"] == want["num_updates"] > 0
    assert len(ema["shadow_params"]) == len(want["shadow_params"])
    assert all(torch.equal(a.float(), b.float()) for a, b in zip(ema["shadow_params"], want["shadow_params"]))
    # the EMA differs from the raw weights, so the test tells the two starts apart
    params = [raw[k] for k, _ in load_checkpoint(teacher_run).backbone.named_parameters()]
    assert any(not torch.equal(a.float(), b.float()) for a, b in zip(params, want["shadow_params"]))


def test_distill_recipe_applies_over_the_teachers_settings(teacher_run):
    from duo.training.distill import distill_config

    cfg, _ = distill_config(teacher_run, ["recipe=dcd-owt", "distill.T0=64"])
    assert cfg.algo == "distill" and cfg.recipe == "dcd-owt"
    assert (cfg.algo_cfg.T0, cfg.algo_cfg.time_draw, cfg.algo_cfg.student_init) == (64, "paper", "raw")
    assert (cfg.trainer.lr, cfg.trainer.batch_size, cfg.trainer.max_steps) == (6e-5, 128, 50_000)
    assert cfg.data.seq_len == 32  # the teacher's data
    with pytest.raises(ConfigError, match="trains from scratch"):
        distill_config(teacher_run, ["recipe=duo-owt"])
