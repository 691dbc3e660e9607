"""Two CPU processes (gloo): DDP and FSDP2 (``trainer.strategy=fsdp``) training runs."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides

# Every multi-process job here runs in one pytest-xdist worker (``--dist loadgroup`` in
# pyproject.toml), one at a time: jobs running side by side on a 2-core machine can
# interfere (a CI run once failed with a reset gloo connection while, in the other
# worker, a second 2-process job ran), and the module's fixtures are then built once.
pytestmark = pytest.mark.xdist_group("distributed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(corpus, cache, run_dir: Path, strategy: str, steps: int, *extra: str,
           envs: list[dict] | None = None) -> Path:
    """Train on two CPU processes; each rank writes a SHA-256 of the weights it holds."""
    overrides = tiny_overrides(
        corpus, cache, run_dir, f"trainer.max_steps={steps}", "trainer.accelerator=cpu",
        "trainer.devices=2", f"trainer.strategy={strategy}", "model.n_blocks=2",
        "algo.curriculum=none", "trainer.val_every=2", "trainer.ckpt_every=2",
        # chunks of 4 tokens under activation checkpointing; 2 micro-batches per step
        "trainer.loss_chunk_elements=1200", "trainer.micro_batch_size=2", *extra)
    return run_script(run_dir, f"{run_dir.name}_{steps}",
                      f"train(build_config({overrides!r}), callbacks=[Fingerprint()])", envs)


def run_script(run_dir: Path, name: str, call: str, envs: list[dict] | None = None) -> Path:
    """Run ``result = <call>`` (``train`` or ``distill``) in a fresh Python process, or
    in one per entry of ``envs`` (processes started by hand, as a cluster launcher
    would)."""
    script = run_dir.parent / f"{name}.py"
    script.write_text(textwrap.dedent(f"""
        import hashlib, json
        import lightning.pytorch as pl
        from duo.config import build_config
        from duo.training import train
        from duo.training.distill import distill

        class Fingerprint(pl.Callback):
            def on_train_end(self, trainer, module):
                h = hashlib.sha256()
                for p in module.backbone.parameters():
                    p = p.to_local() if hasattr(p, "to_local") else p  # an FSDP shard
                    h.update(p.detach().cpu().numpy().tobytes())
                out = {str(run_dir)!r} + f"/rank{{trainer.global_rank}}.txt"
                open(out, "w").write(h.hexdigest())

        result = {call}
        if result.samples:
            json.dump(result.samples, open({str(run_dir)!r} + "/returned_samples.json", "w"))
    """))
    procs = [subprocess.Popen([sys.executable, str(script)], env={**os.environ, **env},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for env in (envs or [{}])]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        # the first error (often another rank's) and the end
        assert proc.returncode == 0, err[:2000] + "\n...\n" + err[-3000:]
    return run_dir


def checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def val_nelbo(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["nelbo"] for r in map(json.loads, lines) if r["split"] == "val"]


@pytest.fixture(scope="module")
def ddp_run(tiny_corpus, duo_cache, tmp_path_factory):
    return launch(tiny_corpus, duo_cache, tmp_path_factory.mktemp("ddp") / "run", "ddp", 4)


def test_ddp_two_cpu_processes_end_with_identical_weights(ddp_run):
    fingerprints = [(ddp_run / f"rank{r}.txt").read_text() for r in range(2)]
    assert fingerprints[0] == fingerprints[1]


@pytest.fixture(scope="module")
def fsdp_run(tiny_corpus, duo_cache, tmp_path_factory):
    return launch(tiny_corpus, duo_cache, tmp_path_factory.mktemp("fsdp") / "run", "fsdp", 4,
                  "sample.num_samples=2", "sample.steps=4")


def test_fsdp_trains_like_ddp(ddp_run, fsdp_run):
    """Sharding changes where the weights live, not what training computes: FSDP ends
    with DDP's weights, EMA and validation NELBO up to the order of float additions
    (gradient-norm clip, micro-batch sums: ~1e-6 after 4 Adam steps); its single-file checkpoint has DDP's layout; the samples
    drawn at the end (every rank gathers the shards) are saved by rank 0."""
    ref, got = checkpoint(ddp_run), checkpoint(fsdp_run)
    assert got["state_dict"].keys() == ref["state_dict"].keys()
    for key, value in ref["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert got["ema"]["num_updates"] == ref["ema"]["num_updates"] == 4
    for a, b in zip(got["ema"]["shadow_params"], ref["ema"]["shadow_params"]):
        assert a.shape == b.shape  # gathered, not one rank's shard
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert val_nelbo(fsdp_run) == pytest.approx(val_nelbo(ddp_run), rel=1e-5)
    # Ranks hold different shards; rank 0 saved the samples every rank drew.
    assert (fsdp_run / "rank0.txt").read_text() != (fsdp_run / "rank1.txt").read_text()
    saved = json.loads(next((fsdp_run / "samples").glob("step_*.json")).read_text())["texts"]
    assert saved == json.loads((fsdp_run / "returned_samples.json").read_text()) and len(saved) == 2


def test_fsdp_resumes_exactly(fsdp_run, tiny_corpus, duo_cache, tmp_path):
    """A run stopped at step 2 and resumed ends where the uninterrupted one does, EMA
    included."""
    part = tmp_path / "part"
    launch(tiny_corpus, duo_cache, part, "fsdp", 2)
    launch(tiny_corpus, duo_cache, part, "fsdp", 4)  # resumes from last.ckpt at step 2
    got, resumed = checkpoint(fsdp_run), checkpoint(part)
    for key, value in got["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    assert resumed["ema"]["num_updates"] == 4
    for a, b in zip(resumed["ema"]["shadow_params"], got["ema"]["shadow_params"]):
        assert torch.equal(a, b)


def test_two_nodes_train_like_one_node_with_two_devices(fsdp_run, tiny_corpus, duo_cache, tmp_path):
    """trainer.num_nodes=2 with one process per node, started by hand with the variables
    a cluster launcher sets, is the same 2-rank job as one node with two devices."""
    port = free_port()
    envs = [{"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
             "WORLD_SIZE": "2", "NODE_RANK": str(node), "LOCAL_RANK": "0"} for node in (0, 1)]
    nodes = launch(tiny_corpus, duo_cache, tmp_path / "nodes", "fsdp", 4, "trainer.devices=1",
                   "trainer.num_nodes=2", "sample.num_samples=2", "sample.steps=4", envs=envs)
    got, ref = checkpoint(nodes), checkpoint(fsdp_run)
    for key, value in ref["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), key


def test_fsdp_distillation_matches_ddp(ddp_run, tmp_path):
    """The teacher is a whole copy of the (sharded) student, refreshed each round."""
    runs = {}
    for strategy in ("ddp", "fsdp"):
        out = tmp_path / strategy
        overrides = ["distill.rounds=2", "distill.steps_per_round=2", "distill.T0=16",
                     "trainer.accelerator=cpu", "trainer.devices=2", f"trainer.strategy={strategy}",
                     "trainer.ckpt_every=2", "trainer.val_every=2", f"run_dir={out}"]
        run_script(out, f"distill_{strategy}", f"distill({str(ddp_run)!r}, {overrides!r}, callbacks=[Fingerprint()])")
        runs[strategy] = checkpoint(out)
    ref, got = runs["ddp"], runs["fsdp"]
    assert got["global_step"] == 4
    for key, value in ref["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    teachers = [r["callbacks"]["TeacherRefresh"] for r in (ref, got)]
    assert teachers[0]["round"] == teachers[1]["round"] == 1
    for key, value in teachers[0]["teacher"].items():
        torch.testing.assert_close(teachers[1]["teacher"][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_fsdp_clips_fused_adamw_gradients_like_foreach(tiny_corpus, duo_cache, tmp_path):
    # On CUDA, FSDP runs fused AdamW, whose gradients (DTensor shards) the module clips
    # itself (Lightning's mixed-precision plugin refuses to). CPU has fused AdamW too.
    def run(name: str, fused: bool) -> dict:
        overrides = tiny_overrides(
            tiny_corpus, duo_cache, tmp_path / name, "trainer.max_steps=4", "trainer.accelerator=cpu",
            "trainer.devices=2", "trainer.strategy=fsdp", "algo.curriculum=none",
            # a norm of 1e-7 leaves Adam's updates ~100x smaller (its eps is 1e-8): visible
            "trainer.precision=bf16-mixed", "trainer.grad_clip=1e-7")
        patch = "setattr(__import__('duo.training.module', fromlist=['_']), 'fused_adamw', lambda p, prec: True)"
        call = f"train(build_config({overrides!r}))"
        run_script(tmp_path / name, name, f"({patch}, {call})[1]" if fused else call)
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return {r["step"]: r["loss"] for r in map(json.loads, lines) if r["split"] == "train"}

    fused, foreach = run("fused", True), run("foreach", False)
    assert sorted(fused) == [1, 2, 3, 4]
    for step in fused:
        assert fused[step] == pytest.approx(foreach[step], rel=1e-3), step
