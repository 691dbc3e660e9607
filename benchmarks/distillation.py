"""Few-step generation by Discrete Consistency Distillation (issue 7, MATH.md 6).

    python benchmarks/distillation.py --teacher RUN --judge RUN --rounds 5 --steps-per-round 200

A tiny Duo teacher (trained with the curriculum; ``--teacher``, or trained here for
``--teacher-steps``) is distilled for several rounds; generative perplexity under a
tiny AR judge (``--judge``, or trained here) and unigram entropy are measured at
4, 8, 16, 32, 64 and 256 steps for teacher and student, with ancestral and greedy-tail
noise removal. Writes ``distillation.{md,json,png}`` into ``--out``. Target (the
paper's shape): the student at 8 steps reaches the teacher's 64-step Gen PPL or
better, with entropy within 5% of the teacher's.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from duo.checkpoints import load_checkpoint
from duo.evaluation import load_judge, sample_quality
from duo.config import build_config
from duo.training import train
from duo.training.distill import distill

SAMPLERS = ("ancestral", "greedy_tail")


def _train(overrides: list[str]) -> Path:
    return train(build_config(overrides)).run_dir


def ensure_models(args) -> tuple[Path, Path]:
    out = Path(args.out)
    common = [f"trainer.batch_size={args.batch}", f"trainer.accelerator={args.accelerator}",
              "trainer.progress_bar=false", "sample.num_samples=0", "trainer.log_every=25",
              f"trainer.val_every={max(args.teacher_steps // 5, 1)}"]
    teacher = Path(args.teacher) if args.teacher else _train([
        "algo=duo", "algo.curriculum=topk", "algo.curriculum_k=2", f"trainer.max_steps={args.teacher_steps}",
        *common, f"run_dir={out / 'teacher'}"])
    judge = Path(args.judge) if args.judge else _train([
        "algo=ar", f"trainer.max_steps={args.teacher_steps}", *common, f"run_dir={out / 'judge'}"])
    return teacher, judge


def evaluate(run: Path, judge, label: str, args, device: str) -> list[dict]:
    loaded = load_checkpoint(run, device=device)
    rows = []
    for sampler in SAMPLERS:
        for steps in args.eval_steps:
            q = sample_quality(loaded, judge, sampler=sampler, steps=steps, num_samples=args.num_samples,
                               batch_size=args.num_samples, seed=args.seed, device=device)
            rows.append({"model": label, "sampler": sampler, "steps": steps,
                         "gen_ppl": q.gen_ppl.gen_ppl, "entropy": q.entropy})
            print(f"{label:8s} {sampler:12s} {steps:4d} steps: gen ppl {q.gen_ppl.gen_ppl:9.2f}  "
                  f"entropy {q.entropy:.3f}", flush=True)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (model, sampler), style in zip(
        [(m, s) for m in ("teacher", "student") for s in SAMPLERS], ("C0-", "C0--", "C3-", "C3--")
    ):
        sel = [r for r in rows if r["model"] == model and r["sampler"] == sampler]
        xs = [r["steps"] for r in sel]
        axes[0].plot(xs, [r["gen_ppl"] for r in sel], style, marker="o", ms=3, label=f"{model}, {sampler}")
        axes[1].plot(xs, [r["entropy"] for r in sel], style, marker="o", ms=3, label=f"{model}, {sampler}")
    axes[0].set(xscale="log", yscale="log", xlabel="sampling steps", ylabel="generative perplexity (AR judge)")
    axes[1].set(xscale="log", xlabel="sampling steps", ylabel="mean unigram entropy")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", help="a duo run directory (default: train one with the top-k curriculum)")
    ap.add_argument("--judge", help="an ar run directory (default: train one)")
    ap.add_argument("--teacher-steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps-per-round", type=int, default=200)
    ap.add_argument("--T0", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--eval-steps", type=int, nargs="+", default=[4, 8, 16, 32, 64, 256])
    ap.add_argument("--num-samples", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--accelerator", default="auto")
    ap.add_argument("--out", default="runs/bench-distillation")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() and args.accelerator != "cpu" else "cpu"

    start = time.perf_counter()
    teacher, judge_run = ensure_models(args)
    t_models = time.perf_counter() - start
    student = distill(teacher, [
        f"distill.rounds={args.rounds}", f"distill.steps_per_round={args.steps_per_round}",
        f"distill.T0={args.T0}", f"trainer.lr={args.lr}", f"trainer.batch_size={args.batch}",
        "trainer.warmup_steps=50", f"trainer.accelerator={args.accelerator}", "trainer.progress_bar=false",
        "trainer.log_every=25", f"trainer.val_every={args.steps_per_round}", "sample.num_samples=0",
        f"run_dir={out / 'student'}", "trainer.resume=false",
    ]).run_dir
    t_distill = time.perf_counter() - start - t_models
    judge = load_judge(judge_run, device=device)
    rows = evaluate(teacher, judge, "teacher", args, device) + evaluate(student, judge, "student", args, device)
    t_total = time.perf_counter() - start
    plot(rows, out / "distillation.png")

    def get(model, sampler, steps, key):
        return next(r[key] for r in rows if (r["model"], r["sampler"], r["steps"]) == (model, sampler, steps))

    checks = {}
    if 8 in args.eval_steps and 64 in args.eval_steps:
        for sampler in SAMPLERS:
            s8, t64 = get("student", sampler, 8, "gen_ppl"), get("teacher", sampler, 64, "gen_ppl")
            e8, e64 = get("student", sampler, 8, "entropy"), get("teacher", sampler, 64, "entropy")
            checks[sampler] = {"student_8": s8, "teacher_64": t64, "gen_ppl_met": s8 <= t64,
                               "entropy_ratio": e8 / e64, "entropy_met": abs(e8 / e64 - 1) <= 0.05}
    summary = {"args": vars(args), "rows": rows, "checks": checks, "teacher": str(teacher),
               "judge": str(judge_run), "student": str(student),
               "seconds": {"teacher_and_judge": t_models, "distillation": t_distill, "total": t_total},
               "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
    (out / "distillation.json").write_text(json.dumps(summary, indent=1))
    lines = [f"device: {summary['device']}; rounds {args.rounds} x {args.steps_per_round} steps, T0 {args.T0}, "
             f"{args.num_samples} samples per point; wall: models {t_models:.0f} s, distillation "
             f"{t_distill:.0f} s, total {t_total:.0f} s", "",
             "| model | sampler | " + " | ".join(f"{s} steps" for s in args.eval_steps) + " |",
             "|---|---|" + "---|" * len(args.eval_steps)]
    for model in ("teacher", "student"):
        for sampler in SAMPLERS:
            cells = [f"{get(model, sampler, s, 'gen_ppl'):.1f} ({get(model, sampler, s, 'entropy'):.2f})"
                     for s in args.eval_steps]
            lines.append(f"| {model} | {sampler} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: generative perplexity (mean unigram entropy)."]
    for sampler, c in checks.items():
        lines.append(f"- {sampler}: student@8 {c['student_8']:.1f} vs teacher@64 {c['teacher_64']:.1f} "
                     f"({'met' if c['gen_ppl_met'] else 'not met'}); entropy ratio {c['entropy_ratio']:.3f} "
                     f"({'within' if c['entropy_met'] else 'outside'} 5%)")
    (out / "distillation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
