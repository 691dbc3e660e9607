"""Does the Gaussian-relaxation curriculum speed up training? (issue 5, MATH.md 4-5)

    python benchmarks/curriculum.py --steps 1500 --seeds 0 1 --out runs/bench-curriculum

Trains the tiny model on the built-in corpus three ways with the same seeds, steps and
batch: (a) discrete loss only, (b) ``curriculum=full``, (c) ``curriculum=topk`` (k=2);
the curriculum covers the first ``--fraction`` of training (the paper: half). Reports
the validation perplexity-bound curves (PNG), the steps (b) and (c) need to reach the
perplexity (a) has at its last step, and the gradient variance of each loss on one
fixed batch (summed variance over all weights across repeated draws of t and noise,
measured at (a)'s final weights). Writes ``curriculum.md``, ``curriculum.json`` and
``curriculum.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from duo.checkpoints import load_checkpoint
from duo.config import build_config
from duo.training import train
from duo.training.callbacks import read_history
from duo.methods import build_method

VARIANTS = {
    "discrete": ["algo.curriculum=none"],
    "full": ["algo.curriculum=full"],
    "topk": ["algo.curriculum=topk", "algo.curriculum_k=2"],
}


def run_variant(name: str, seed: int, args) -> dict:
    run_dir = Path(args.out) / f"{name}-seed{seed}"
    cfg = build_config([
        "algo=duo", *VARIANTS[name], f"algo.curriculum_fraction={args.fraction}", f"algo.tau={args.tau}",
        f"trainer.max_steps={args.steps}", f"trainer.batch_size={args.batch}", f"trainer.lr={args.lr}",
        f"trainer.val_every={args.val_every}", f"trainer.val_batches={args.val_batches}",
        f"trainer.ckpt_every={args.steps}", f"trainer.seed={seed}", f"data.seed={seed}",
        "trainer.log_every=25", "trainer.progress_bar=false", "sample.num_samples=0",
        f"trainer.accelerator={args.accelerator}", f"data.seq_len={args.seq_len}",
        f"model.max_seq_len={max(args.seq_len, 128)}", f"run_dir={run_dir}", "trainer.resume=false",
    ])
    start = time.perf_counter()
    train(cfg)
    _, val = read_history(run_dir)
    return {"variant": name, "seed": seed, "seconds": time.perf_counter() - start,
            "steps": [r["step"] for r in val], "ppl": [r["ppl"] for r in val], "run_dir": str(run_dir)}


def steps_to_reach(steps: list[int], ppl: list[float], target: float) -> float | None:
    """First step (linearly interpolated between validations) at which ppl <= target."""
    for i, (s, p) in enumerate(zip(steps, ppl)):
        if p <= target:
            if i == 0:
                return float(s)
            s0, p0 = steps[i - 1], ppl[i - 1]
            return s0 + (s - s0) * (p0 - target) / max(p0 - p, 1e-12)
    return None


def gradient_variance(run_dir: str, args, draws: int = 32) -> dict[str, float]:
    loaded = load_checkpoint(run_dir, use_ema=False)
    torch.manual_seed(0)
    from duo.data import build_data

    batch = next(iter(build_data(loaded.cfg.data).train_loader(args.batch)))
    out = {}
    for name, extra in VARIANTS.items():
        cfg = build_config([*extra, "algo.curriculum_steps=1000000", f"algo.tau={args.tau}"],
                           base={k: v for k, v in loaded.cfg.to_dict().items() if k != "algo"})
        backbone, method = build_method(cfg, loaded.tokenizer.vocab_size)
        backbone.load_state_dict(loaded.backbone.state_dict())
        gen = torch.Generator().manual_seed(1)
        grads = []
        for _ in range(draws):
            t = torch.rand(batch["input_ids"].shape[0], generator=gen) * 0.999 + 1e-3
            backbone.zero_grad()
            method.training_loss(batch, t, step=0, generator=gen).loss.backward()
            grads.append(torch.cat([p.grad.flatten() for p in backbone.parameters() if p.grad is not None]))
        g = torch.stack(grads)
        out[name] = float(g.var(0).sum())
    return out


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, colour in zip(VARIANTS, ("C0", "C1", "C2")):
        runs = [r for r in results if r["variant"] == name]
        mean = np.mean([r["ppl"] for r in runs], axis=0)
        ax.plot(runs[0]["steps"], mean, marker="o", ms=3, color=colour, label=name)
    ax.set(xlabel="step", ylabel="validation perplexity (upper bound)", yscale="log",
           title="tiny Duo on the built-in corpus")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--tau", type=float, default=1e-3)
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--val-every", type=int, default=100)
    ap.add_argument("--val-batches", type=int, default=8)
    ap.add_argument("--accelerator", default="auto")
    ap.add_argument("--out", default="runs/bench-curriculum")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    results = [run_variant(v, s, args) for s in args.seeds for v in VARIANTS]
    mean_curve = {v: np.mean([r["ppl"] for r in results if r["variant"] == v], axis=0) for v in VARIANTS}
    steps = results[0]["steps"]
    target = float(mean_curve["discrete"][-1])
    reach = {v: steps_to_reach(steps, list(mean_curve[v]), target) for v in VARIANTS}
    variance = gradient_variance(next(r["run_dir"] for r in results if r["variant"] == "discrete"), args)
    plot(results, out / "curriculum.png")

    summary = {"args": vars(args), "target_ppl": target, "steps_to_reach": reach, "grad_variance": variance,
               "final_ppl": {v: float(c[-1]) for v, c in mean_curve.items()},
               "seconds": {v: float(np.mean([r["seconds"] for r in results if r["variant"] == v])) for v in VARIANTS},
               "runs": results, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    (out / "curriculum.json").write_text(json.dumps(summary, indent=1))
    lines = [
        f"device: {summary['device']}; steps {args.steps}, batch {args.batch} x {args.seq_len}, seeds {args.seeds}, "
        f"curriculum fraction {args.fraction}, tau {args.tau}",
        "",
        "| variant | final val ppl (<=) | steps to reach discrete's final ppl | fraction of discrete's steps | grad variance | wall (s) |",
        "|---|---|---|---|---|---|",
    ]
    for v in VARIANTS:
        r = reach[v]
        frac = f"{r / args.steps:.2f}" if r is not None else "not reached"
        lines.append(f"| {v} | {summary['final_ppl'][v]:.1f} | {r if r is None else round(r)} | {frac} | "
                     f"{variance[v]:.4g} | {summary['seconds'][v]:.0f} |")
    (out / "curriculum.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
