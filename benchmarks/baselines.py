"""Every baseline of the papers' tables with one equal budget on the built-in corpus (CPU).

    python benchmarks/baselines.py                      # ~15-20 min on 2 shared CPU cores
    python benchmarks/baselines.py --train-steps 1000 --device cuda

Trains AR, MDLM, SEDD (absorbing, score parameterisation), D3PM (absorbing, T = 1000),
UDLM (``algo=duo algo.curriculum=none``) and Duo (top-k curriculum over the first half)
with the same model (``model=tiny``), data, batch, learning rate, seed and number of
steps, then reports for each: the validation perplexity (a bound for the diffusion
models, exact for AR; MATH.md 9), Gen PPL of ``--num-samples`` samples at 8 / 32 / 128
steps (each method's default sampler) under a local judge (the AR run), and their mean
unigram entropy. Writes ``--out`` (JSON, with the machine's load average) and prints a
markdown table. Runs already in ``--work-dir`` are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from duo.checkpoints import load_checkpoint
from duo.config import build_config
from duo.evaluation import corpus_perplexity, generative_perplexity, load_judge, sample, unigram_entropy
from duo.samplers import SamplingConfig

RUNS = {  # name -> overrides (the papers' table order: AR, then the diffusion models)
    "AR": ["algo=ar"],
    "MDLM": ["algo=mdlm"],
    "SEDD": ["algo=sedd"],
    "D3PM": ["algo=d3pm", "algo.T=1000"],
    "UDLM": ["algo=duo", "algo.curriculum=none"],
    "Duo": ["algo=duo", "algo.curriculum=topk"],
}


def train_run(name: str, work_dir: Path, args) -> tuple[Path, float]:
    from duo.training import train

    run_dir = work_dir / name.lower()
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        return run_dir, float("nan")
    steps = args.train_steps
    accelerator = "gpu" if args.device.startswith("cuda") else "cpu"
    cfg = build_config([
        *RUNS[name], "model=tiny", "data=builtin", "data.show_progress=false", f"run_dir={run_dir}",
        f"trainer.max_steps={steps}", f"trainer.batch_size={args.batch_size}", "trainer.lr=3e-3",
        "trainer.warmup_steps=20", f"trainer.val_every={steps}", "trainer.val_batches=2",
        f"trainer.ckpt_every={steps}", "trainer.progress_bar=false", "trainer.loggers=[csv]",
        "sample.num_samples=0", f"trainer.accelerator={accelerator}", "trainer.devices=1", "trainer.seed=0",
    ])
    start = time.perf_counter()
    train(cfg)
    return run_dir, time.perf_counter() - start


def evaluate(name: str, run_dir: Path, judge, args) -> dict:
    loaded = load_checkpoint(run_dir, device=args.device)
    ppl = corpus_perplexity(loaded, batch_size=16, max_batches=args.val_batches, seed=0, device=args.device)
    row = {"method": name, "val_ppl": ppl.ppl, "bound": ppl.bound, "diffusion_ppl": ppl.diffusion_ppl,
           "val_tokens": ppl.num_tokens, "gen": {}}
    step_list = [None] if not loaded.method.process.diffusion else args.steps
    for steps in step_list:
        gen = sample(loaded, SamplingConfig(num_samples=args.num_samples, steps=steps, seed=0), device=args.device)
        scored = generative_perplexity(gen.texts, judge, batch_size=16)
        row["gen"][str(steps or "ar")] = {"gen_ppl": scored.gen_ppl, "entropy": unigram_entropy(gen.tokens),
                                          "nfe": gen.nfe, "seconds": gen.seconds}
    row["sampler"] = loaded.method.process.default_sampler
    return row


def table(rows: list[dict], steps: list[int]) -> str:
    head = "| method | val PPL | " + " | ".join(f"Gen PPL {s}" for s in steps) + " | entropy (128) |"
    lines = [head, "|" + "---|" * (3 + len(steps))]
    for r in rows:
        g = r["gen"]
        if "ar" in g:
            gens = [f"{g['ar']['gen_ppl']:.1f}*"] * len(steps)
            ent = g["ar"]["entropy"]
        else:
            gens = [f"{g[str(s)]['gen_ppl']:.1f}" for s in steps]
            ent = g[str(steps[-1])]["entropy"]
        bound = ("<= " if r["bound"] else "") + f"{r['val_ppl']:.1f}"
        lines.append(f"| {r['method']} | {bound} | " + " | ".join(gens) + f" | {ent:.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default="/tmp/duo-baselines")
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, nargs="+", default=[8, 32, 128])
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--val-batches", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/baselines_cpu.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    load_start = os.getloadavg()
    start = time.perf_counter()
    seconds = {}
    for name in RUNS:
        run_dir, secs = train_run(name, work, args)
        seconds[name] = secs
        print(f"trained {name} in {secs:.0f}s -> {run_dir}", flush=True)
    judge = load_judge(work / "ar", device=args.device)
    rows = []
    for name in RUNS:
        rows.append(evaluate(name, work / name.lower(), judge, args))
        rows[-1]["train_seconds"] = seconds[name]
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "settings": {**vars(args), "model": "tiny", "data": "builtin", "runs": RUNS, "judge": "the AR run"},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
                    "wall_seconds": time.perf_counter() - start},
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows, args.steps))
    print(f"(* AR samples once, ancestrally; the judge is the AR run itself.) wrote {args.out}")


if __name__ == "__main__":
    main()
