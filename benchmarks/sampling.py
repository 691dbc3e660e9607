"""Sampling: Gen PPL and entropy against steps, sampling speed, and per-step overhead.

    python benchmarks/sampling.py                                   # trains a tiny Duo + AR judge first
    python benchmarks/sampling.py --duo runs/duo-x --judge runs/ar-y --num-samples 64
    python benchmarks/sampling.py --device cuda --steps 8 16 32 64 128 256 1024

1. Quality: for ancestral, greedy_tail and psi, generate ``--num-samples`` sequences at
   each step count and score them with the judge (an AR checkpoint trained by duo on the
   same corpus and tokenizer): Gen PPL and mean unigram entropy (MATH.md section 9),
   plus tokens/s. Writes ``gen_ppl_vs_steps.png`` and a markdown table.
2. Overhead: the share of a sampling step spent outside the network (posterior,
   filtering, categorical draw) at a GPT-2-sized vocabulary, K = 50,257, with the tiny
   architecture and random weights (timing does not depend on training). The denoiser
   is wrapped with a timer; share = 1 - denoiser time / whole-loop time. Target < 25%.
   ``--baseline REV`` also times the samplers as of git revision REV in the same process,
   alternating with the working tree's, ``--overhead-repeats`` times (medians reported).
   ``--clock cpu`` times with the process's CPU time instead of wall time: on a machine
   shared with other jobs it counts only this process's work (use it with ``--threads 1``,
   as waiting OpenMP threads count too).

Without ``--duo`` / ``--judge`` the script trains both on the built-in corpus for
``--train-steps`` steps into ``--work-dir`` (reused when already there).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from duo.checkpoints import load_checkpoint
from duo.evaluation import generate_batched, generative_perplexity, load_judge, unigram_entropy
from duo.config import build_config
from duo.samplers import generate, get_sampler

SAMPLERS = ("ancestral", "greedy_tail", "psi")
# The overhead table adds Psi without its default nucleus filter (top-p 0.9), to show
# the kappa mixture and the filter separately.
OVERHEAD_CASES = [(name, {}) for name in SAMPLERS] + [("psi", {"top_p": 1.0}), ("psi", {"nucleus": "approx"})]


def samplers_at(rev: str):
    """``duo.samplers`` as of git revision ``rev``, imported beside the working tree's
    (as ``duo.samplers_at_<rev>``) to time both code paths in one process."""
    import importlib
    import re
    import subprocess
    import tempfile

    import duo

    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout

    name = "samplers_at_" + re.sub(r"\W", "_", rev)
    pkg = Path(tempfile.mkdtemp()) / name
    pkg.mkdir()
    for path in git("ls-tree", "--name-only", rev, "src/duo/samplers/").split():
        (pkg / Path(path).name).write_text(git("show", f"{rev}:{path}"))
    duo.__path__.append(str(pkg.parent))
    return importlib.import_module(f"duo.{name}")


def train_tiny(algo: str, work_dir: Path, steps: int, device: str, overrides: list[str]) -> Path:
    from duo.training import train

    run_dir = work_dir / algo
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        return run_dir
    accelerator = "gpu" if device.startswith("cuda") else "cpu"
    cfg = build_config([
        f"algo={algo}", "model=tiny", "data=builtin", "data.show_progress=false", f"run_dir={run_dir}",
        f"trainer.max_steps={steps}", "trainer.batch_size=16", "trainer.warmup_steps=20",
        f"trainer.val_every={steps}", "trainer.val_batches=4", f"trainer.ckpt_every={steps}",
        "trainer.progress_bar=false", "trainer.loggers=[csv]", "sample.num_samples=0",
        f"trainer.accelerator={accelerator}", "trainer.devices=1", *overrides,
    ])
    result = train(cfg)
    print(f"trained {algo}: {result.checkpoint} (validation ppl {result.val_ppl})")
    return run_dir


def quality_sweep(loaded, judge, steps_list, num_samples: int, batch_size: int, device) -> list[dict]:
    rows = []
    for sampler in SAMPLERS:
        for steps in steps_list:
            gen = generate_batched(loaded, num_samples=num_samples, batch_size=batch_size, seed=0,
                                   seq_len=loaded.cfg.data.seq_len, sampler=sampler, steps=steps, device=device)
            scored = generative_perplexity(gen.texts, judge, batch_size=batch_size)
            rows.append({"sampler": sampler, "steps": steps, "gen_ppl": scored.gen_ppl,
                         "entropy": unigram_entropy(gen.tokens), "nfe": gen.nfe,
                         "tokens_per_second": gen.tokens_per_second})
            print(f"{sampler:12s} {steps:5d} steps: gen ppl {scored.gen_ppl:9.2f}  entropy "
                  f"{rows[-1]['entropy']:.3f}  {gen.tokens_per_second:8.1f} tok/s", flush=True)
    return rows


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_overhead(vocab: int, seq_len: int, batch: int, steps: int, device: torch.device,
                  baseline: str | None = None, repeats: int = 1, clock=time.perf_counter) -> list[dict]:
    """Time the network against the whole sampling loop for each sampler (and, with
    ``baseline``, for the samplers at that git revision, alternating)."""
    from duo.methods import build_method
    import duo.samplers as current

    cfg = build_config(["algo=duo", "model=tiny", f"model.max_seq_len={seq_len}"])
    backbone, method = build_method(cfg, vocab)
    with torch.no_grad():
        # The output layer starts at zero (uniform predictions, the filters' worst case);
        # random weights give peaked, text-like distributions instead.
        torch.manual_seed(0)
        backbone.output_layer.linear.weight.normal_(0.0, 0.3)
    backbone.to(device).eval()
    spent = [0.0]

    def timed(z, alpha):
        _sync(device)
        start = clock()
        out = method.denoiser(z, alpha)
        _sync(device)
        spent[0] += clock() - start
        return out

    versions = [("current", current)] + ([(baseline, samplers_at(baseline))] if baseline else [])
    runs = []
    for version, module in versions:
        for name, options in OVERHEAD_CASES:
            try:
                sampler = module.get_sampler(name, **options)
            except ValueError:  # an option that revision does not have
                continue
            label = name + "".join(f" {k}={v}" for k, v in options.items())
            runs.append({"version": version, "sampler": label, "obj": sampler, "generate": module.generate,
                         "step_ms": [], "network_ms": [], "outside_share": []})

    def run(r: dict, n: int) -> tuple[float, float]:
        spent[0] = 0.0
        _sync(device)
        start = clock()
        r["generate"](r["obj"], timed, method.schedule, batch_size=batch, seq_len=seq_len, vocab_size=vocab,
                      steps=n, seed=0, device=device)
        _sync(device)
        return clock() - start, spent[0]

    for r in runs:
        run(r, 2)  # warm-up: allocator, kernels
    for rep in range(repeats):
        for r in runs:  # alternating: each repeat times every sampler of every version once
            total, net = run(r, steps)
            r["step_ms"].append(1e3 * total / steps)
            r["network_ms"].append(1e3 * net / steps)
            r["outside_share"].append(1.0 - net / total)
    rows = []
    for r in runs:
        med = {k: sorted(r[k])[len(r[k]) // 2] for k in ("step_ms", "network_ms", "outside_share")}
        row = {"sampler": r["sampler"], **med}
        if baseline:
            row = {"version": r["version"], **row, "repeats": {k: r[k] for k in ("step_ms", "network_ms", "outside_share")}}
        rows.append(row)
        tag = f"[{r['version']}] " if baseline else ""
        print(f"{tag}{r['sampler']:22s} step {med['step_ms']:8.1f} ms, network {med['network_ms']:8.1f} ms, "
              f"outside the network {med['outside_share']:.1%}", flush=True)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for sampler in SAMPLERS:
        mine = [r for r in rows if r["sampler"] == sampler]
        ax1.plot([r["steps"] for r in mine], [r["gen_ppl"] for r in mine], marker="o", label=sampler)
        ax2.plot([r["steps"] for r in mine], [r["entropy"] for r in mine], marker="o", label=sampler)
    for ax, label in ((ax1, "Gen PPL (judge)"), (ax2, "unigram entropy (nats)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sampling steps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax1.set_yscale("log")
    ax1.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(quality: list[dict], overhead: list[dict], settings: dict) -> str:
    lines = [f"Settings: {json.dumps(settings)}", "",
             "| sampler | steps | Gen PPL | entropy | tokens/s |", "|---|---|---|---|---|"]
    lines += [f"| {r['sampler']} | {r['steps']} | {r['gen_ppl']:.2f} | {r['entropy']:.3f} | "
              f"{r['tokens_per_second']:.1f} |" for r in quality]
    lines += ["", f"Per-step overhead at K = {settings['overhead_vocab']}, L = {settings['overhead_seq_len']}, "
              f"B = {settings['overhead_batch']}, tiny DiT, {settings['device']}:", "",
              "| sampler | step (ms) | network (ms) | outside the network |", "|---|---|---|---|"]
    lines += [f"| {r['sampler']}{' @ ' + r['version'] if 'version' in r else ''} | {r['step_ms']:.1f} | "
              f"{r['network_ms']:.1f} | {r['outside_share']:.1%} |" for r in overhead]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duo", help="Duo run directory or .ckpt (default: train one)")
    p.add_argument("--judge", help="AR run directory / .ckpt or Hugging Face causal LM (default: train one)")
    p.add_argument("--work-dir", default="runs/bench-sampling", help="where trained models and results go")
    p.add_argument("--train-steps", type=int, default=150, help="CPU: about 1 s each")
    p.add_argument("--train-override", action="append", default=[],
                   help="extra key=value for both trainings, e.g. trainer.lr=3e-3 (repeatable)")
    p.add_argument("--steps", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--overhead-vocab", type=int, default=50257)
    p.add_argument("--overhead-seq-len", type=int, default=128)
    p.add_argument("--overhead-batch", type=int, default=8)
    p.add_argument("--overhead-steps", type=int, default=4)
    p.add_argument("--overhead-repeats", type=int, default=1, help="timed runs per sampler (medians reported)")
    p.add_argument("--baseline", help="also time the samplers of this git revision, alternating with the current ones")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="overhead timer: wall time, or this process's CPU time (shared machines)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads for the whole run")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    args = p.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    quality: list[dict] = []
    if not args.skip_quality:
        duo_path = args.duo or train_tiny("duo", work, args.train_steps, args.device, args.train_override)
        judge_path = args.judge or train_tiny("ar", work, args.train_steps, args.device, args.train_override)
        loaded = load_checkpoint(duo_path, device=device)
        judge = load_judge(str(judge_path), device)
        quality = quality_sweep(loaded, judge, args.steps, args.num_samples, args.batch_size, device)
        plot(quality, work / "gen_ppl_vs_steps.png")
    overhead = step_overhead(args.overhead_vocab, args.overhead_seq_len, args.overhead_batch,
                             args.overhead_steps, device, args.baseline, args.overhead_repeats,
                             time.process_time if args.clock == "cpu" else time.perf_counter)
    settings = {k: v for k, v in vars(args).items()}
    table = markdown(quality, overhead, settings)
    (work / "sampling.md").write_text(table)
    (work / "sampling.json").write_text(json.dumps({"settings": settings, "quality": quality,
                                                    "overhead": overhead}, indent=2))
    print(table)
    print(f"results in {work}")


if __name__ == "__main__":
    main()
