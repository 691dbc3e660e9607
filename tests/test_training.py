import json
from pathlib import Path

import pytest
import torch

from duo.utils.typed_config import ConfigError
from duo.config import build_config
from duo.training import train
from duo.training.checkpoint_io import AtomicCheckpointIO

from conftest import tiny_overrides


def losses(run_dir) -> dict[int, float]:
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["split"] == "train":
            out[rec["step"]] = rec["loss"]
    return out


def split_run(corpus, cache, tmp_path, common, stop: int, end: int) -> tuple[dict[int, float], dict[int, float]]:
    """Training losses of one run of ``end`` steps (``tmp_path/full``) and of a run stopped
    at ``stop``, then extended to ``end`` (``tmp_path/part``, resumed from last.ckpt)."""
    full = losses(train(build_config(tiny_overrides(corpus, cache, tmp_path / "full",
                                                    f"trainer.max_steps={end}", *common))).run_dir)
    part = tiny_overrides(corpus, cache, tmp_path / "part", *common)
    train(build_config([*part, f"trainer.max_steps={stop}"]))
    train(build_config([*part, f"trainer.max_steps={end}"]))
    return full, losses(tmp_path / "part")


@pytest.mark.parametrize("algo", ["duo", "mdlm", "ar"])
def test_a_few_steps_lower_the_loss(algo, tiny_corpus, duo_cache, tmp_path):
    cfg = build_config(tiny_overrides(tiny_corpus, duo_cache, tmp_path / algo, f"algo={algo}",
                                      "trainer.max_steps=40", "sample.num_samples=2", "sample.steps=4"))
    result = train(cfg)
    assert len(result.samples) == 2  # decoded at the end, with each method's sampler
    curve = losses(result.run_dir)
    first = sum(curve[s] for s in range(1, 6)) / 5
    last = sum(curve[s] for s in range(36, 41)) / 5
    assert last < 0.8 * first, (first, last)
    assert result.val_ppl is not None and result.val_ppl > 1
    # The tiny validation set is read several times (fresh times each) by diffusion models.
    val = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
           if json.loads(line)["split"] == "val"][-1]
    if algo == "ar":
        assert val["passes"] == 1
    else:  # enough for MIN_DRAWS over the rows read: val_batches=2 x batch 8 (tiny_overrides)
        from duo.data import build_data
        from duo.evaluation.perplexity import validation_passes

        rows = min(len(build_data(cfg.data).validation), 2 * 8)
        assert val["passes"] == validation_passes(rows, None) > 1, val
    assert (result.run_dir / "plots" / "training.png").is_file()
    assert (result.run_dir / "config.yaml").is_file()
    assert result.checkpoint.is_file()


def test_the_last_steps_are_saved_when_max_steps_is_not_a_multiple_of_ckpt_every(tiny_corpus, duo_cache, tmp_path,
                                                                               monkeypatch):
    from duo.models.dit import DiT

    checked = []
    original = DiT._check_range
    monkeypatch.setattr(DiT, "_check_range", lambda self, ids: (checked.append(self.check_inputs),
                                                                original(self, ids)))
    cfg = build_config(tiny_overrides(tiny_corpus, duo_cache, tmp_path / "run", "trainer.max_steps=5",
                                      "trainer.ckpt_every=3"))
    result = train(cfg)
    # training and validation steps skip the range check (a device sync per step)
    assert len(checked) >= 5 and not any(checked)
    ckpts = result.run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("*.ckpt")) == ["last.ckpt", "step_3.ckpt", "step_5.ckpt"]
    last = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 5 and "ema" in last
    # resuming the finished run trains nothing and writes nothing new
    before = (ckpts / "last.ckpt").stat().st_mtime_ns
    train(cfg)
    assert (ckpts / "last.ckpt").stat().st_mtime_ns == before


def test_a_run_extended_from_a_final_checkpoint_continues_like_the_uninterrupted_run(tiny_corpus, duo_cache,
                                                                                     tmp_path):
    # The final step (7, not a multiple of ckpt_every) is saved inside the loop: extending
    # the run to 12 steps continues the same epoch and data order.
    common = ("trainer.ckpt_every=5", "algo.curriculum=none", "trainer.batch_size=4")
    full, resumed = split_run(tiny_corpus, duo_cache, tmp_path, common, stop=7, end=12)
    for step in range(8, 13):
        assert resumed[step] == pytest.approx(full[step], rel=1e-5, abs=1e-6), step


def test_resume_reproduces_the_uninterrupted_run(tiny_corpus, duo_cache, tmp_path):
    # curriculum=none: with a curriculum fraction the phase boundary would move with max_steps
    common = ("trainer.ckpt_every=5", "algo.curriculum=none", "trainer.batch_size=4", "trainer.micro_batch_size=2")
    full, resumed = split_run(tiny_corpus, duo_cache, tmp_path, common, stop=5, end=10)
    for step in range(6, 11):
        assert resumed[step] == pytest.approx(full[step], rel=1e-5, abs=1e-6), step
    # The EMA, too, continues as if never interrupted (it must not miss the update of
    # the step a checkpoint was written at).
    ema = [torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["ema"]
           for d in (tmp_path / "full", tmp_path / "part")]
    assert ema[0]["num_updates"] == ema[1]["num_updates"] == 10
    for a, b in zip(ema[0]["shadow_params"], ema[1]["shadow_params"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)

    def crash(obj, f, *a, **k):  # torch.save gets an open file (or a path)
        if hasattr(f, "write"):
            f.write(b"half a checkpoint")
        else:
            Path(f).write_bytes(b"half a checkpoint")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["algo=diffusion"], "valid algos: ar, d3pm, distill, duo, mdlm, sedd"),
        (["model=huge"], "valid presets: .*small.*tiny"),
        (["trainer.max_stepz=3"], "unknown key trainer.max_stepz"),
        (["trainer.max_steps=many"], "trainer.max_steps='many' has the wrong type"),
        (["algo.curriculum=half"], "algo.curriculum='half' is not one of"),
        (["algo=ar", "algo.tau=0.1"], "unknown key algo.tau"),
        (["trainer.batch_size=10", "trainer.micro_batch_size=4"], None),
        (["oops"], "not key=value"),
        (["trainer.strategy=fsdp_cpu_offload"], "flattens the weights.*use trainer.strategy=fsdp"),
        (["trainer.loss_chunk_elements=0"], "loss_chunk_elements=0 must be >= 1"),
        (["trainer.val_passes=0"], "val_passes=0 must be >= 1"),
        (["trainer.strategy=fsdp", "trainer.precision=16-mixed"], "16-mixed' is not supported with.*bf16-mixed"),
    ],
)
def test_bad_config_gives_one_line_errors(overrides, match, tmp_path):
    if match is None:  # an error only known once the world size is
        from duo.training.run import batch_plan

        with pytest.raises(ConfigError, match="not a multiple"):
            batch_plan(build_config(overrides), world=1)
        return
    with pytest.raises(ValueError, match=match) as info:
        build_config(overrides)
    assert "\n" not in str(info.value)


def test_config_round_trips_through_yaml(tmp_path):
    from duo.utils.typed_config import load_yaml, save_yaml

    cfg = build_config(["algo=duo", "algo.curriculum=topk", "model.hidden_size=64", "trainer.lr=1e-4"])
    save_yaml(cfg.to_dict(), tmp_path / "c.yaml")
    again = build_config([f"config={tmp_path / 'c.yaml'}"])
    assert again.to_dict() == cfg.to_dict()
    assert again.algo_cfg.curriculum == "topk" and again.model.hidden_size == 64
    # a selection change drops the previous method's fields
    assert build_config([f"config={tmp_path / 'c.yaml'}", "algo=mdlm"]).algo == "mdlm"


def test_end_of_training_samples_default_per_method(tmp_path):
    """Duo prints Psi samples with a 0.6 nucleus (the first-run sweep's choice); naming
    another sampler takes only the step count; other methods print 128 plain steps. The
    defaults apply when used, so a saved config does not carry them to another method."""
    from duo.config import end_sample_config
    from duo.utils.typed_config import save_yaml

    def end(*overrides):
        cfg = build_config(list(overrides))
        s = end_sample_config(cfg.algo, cfg.sample)
        return s.sampler, s.steps, s.top_p

    assert end("algo=duo") == ("psi", 256, 0.6)
    assert end("algo=duo", "sample.sampler=ancestral") == ("ancestral", 256, None)
    assert end("algo=duo", "sample.top_p=0.9") == ("psi", 256, 0.9)
    assert end("algo=ar") == end("algo=mdlm") == (None, 128, None)
    save_yaml(build_config(["algo=duo"]).to_dict(), tmp_path / "duo.yaml")
    assert end(f"config={tmp_path / 'duo.yaml'}") == ("psi", 256, 0.6)
    assert end(f"config={tmp_path / 'duo.yaml'}", "algo=ar") == (None, 128, None)
    assert end(f"config={tmp_path / 'duo.yaml'}", "sample.sampler=ancestral") == ("ancestral", 256, None)


def test_times_are_stratified_over_the_global_batch_and_noise_differs_per_rank():
    """Two ranks x two micro-batches of 4: together the 16 times are antithetic_times(16)
    with one shared u, and each (rank, micro) draws its own noise."""
    from types import SimpleNamespace

    from duo.schedules import antithetic_times
    from duo.training.module import DiffusionLM, step_seed

    cfg = build_config(["algo=duo", "model.hidden_size=32", "model.cond_dim=16", "model.n_heads=2",
                        "model.n_blocks=1", "model.max_seq_len=16"])
    module = DiffusionLM(cfg, 40)
    times, seeds = [], set()
    for rank in range(2):
        trainer = SimpleNamespace(world_size=2, accumulate_grad_batches=2, global_rank=rank)
        object.__setattr__(module, "_trainer", trainer)  # global_rank and world size come from it
        for micro in range(2):
            times.append(module._times(4, step=7, micro=micro))
            seeds.add(step_seed(cfg.trainer.seed, 7, rank, micro, 2))
    u_gen = torch.Generator().manual_seed(step_seed(cfg.trainer.seed, 7, 0, 0, 1))
    u = torch.rand((), generator=u_gen, dtype=torch.float64)
    assert torch.allclose(torch.cat(times), antithetic_times(16, u=u))
    assert len(seeds) == 4


def test_ema_refuses_parameters_a_strategy_has_flattened():
    """Lightning's FSDP1 strategies (use_orig_params) leave each parameter a flat view of
    the local shard; the EMA must say so at fit start instead of averaging mismatched
    tensors."""
    from duo.training.ema import EMA

    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    ema = EMA(net, 0.99)
    ema.align(net)  # unchanged parameters pass
    with torch.no_grad():
        net[0].weight.data = net[0].weight.data.flatten()[:5].clone()  # a rank's shard
    with pytest.raises(RuntimeError, match="original shapes.*trainer.strategy=fsdp or ddp"):
        ema.align(net)


def test_fused_adamw_clips_gradients_under_bf16_mixed(tiny_corpus, duo_cache, tmp_path, monkeypatch):
    # On CUDA the optimiser is fused AdamW, which Lightning's mixed-precision plugin
    # refuses to clip for; the module clips it itself. CPU runs fused AdamW too, so the
    # GPU path is exercised here: it must train as the foreach AdamW does, clipping included.
    import duo.training.module as module

    clip_norm = torch.nn.utils.clip_grad_norm_
    norms = []

    def spy(params, max_norm, *args, **kwargs):
        params = list(params)
        before = clip_norm(params, max_norm, *args, **kwargs)
        after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        norms.append((float(before), float(after)))
        return before

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)

    def run(name, fused):
        monkeypatch.setattr(module, "fused_adamw", lambda params, precision: fused)
        cfg = build_config(tiny_overrides(tiny_corpus, duo_cache, tmp_path / name, "trainer.max_steps=6",
                                          "trainer.precision=bf16-mixed", "trainer.grad_clip=0.05"))
        norms.clear()
        train(cfg)
        return losses(tmp_path / name), list(norms)

    (fused, fused_norms), (foreach, _) = run("fused", True), run("foreach", None)
    assert len(fused_norms) == 6, fused_norms
    assert all(before > 0.05 and after <= 0.05 * 1.001 for before, after in fused_norms), fused_norms
    for step in range(1, 7):
        assert fused[step] == pytest.approx(foreach[step], rel=1e-3), step
