"""Cost and stability of the lm-eval adapter on CPU (docs/benchmarks.md, docs/lm_eval.md).

Trains a tiny Duo and a tiny AR model (seconds), builds N multiple-choice questions from
held-out sentences of the tiny corpus (the true ending vs 3 endings of other sentences),
then measures

- seconds per 1,000 loglikelihood requests (one request = one (context, choice) pair) for
  AR and for Duo at 1, 4 and 16 NELBO samples;
- Duo's accuracy over 5 seeds at 1, 4 and 16 NELBO samples (mean and spread).

    python benchmarks/lm_eval_cost.py [--questions 100] [--out benchmarks/results/lm_eval_cost_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def train_tiny(root: Path, algo: str, steps: int):
    from conftest import tiny_overrides, write_tiny_corpus
    from duo.checkpoints import load_checkpoint
    from duo.config import build_config
    from duo.training import train

    corpus = root / "tiny.txt"
    if not corpus.exists():
        write_tiny_corpus(corpus)
    cfg = build_config(tiny_overrides(str(corpus), str(root / "cache"), root / algo, f"algo={algo}",
                                      f"trainer.max_steps={steps}", "trainer.val_every=100000"))
    return load_checkpoint(train(cfg).run_dir)


def questions(n: int, seed: int = 1):
    from conftest import write_tiny_corpus

    with tempfile.TemporaryDirectory() as tmp:
        text = Path(write_tiny_corpus(Path(tmp) / "q.txt", n_docs=200, seed=seed)).read_text()
    sentences = [s.strip() + "." for s in text.replace("\n", " ").split(".") if len(s.split()) >= 6]
    rng = random.Random(seed)
    out = []
    for s in rng.sample(sentences, n):
        words = s.split()
        cut = len(words) // 2
        others = [o.split() for o in rng.sample(sentences, 3)]
        endings = [" " + " ".join(words[cut:])] + [" " + " ".join(o[len(o) // 2:]) for o in others]
        out.append((" ".join(words[:cut]), endings))
    return out


def accuracy(lm, tok, qs) -> tuple[float, float]:
    """Accuracy and seconds; every (context, choice) pair is one request, as in lm-eval."""
    pairs = [(tok.encode(ctx), tok.encode(e)) for ctx, endings in qs for e in endings]
    start = time.perf_counter()
    scores = [lp for lp, _ in lm.score_tokens(pairs)]
    seconds = time.perf_counter() - start
    correct = sum(max(range(4), key=lambda j: scores[4 * i + j]) == 0 for i in range(len(qs)))
    return correct / len(qs), seconds


def main() -> None:
    from duo.evaluation.lm_eval_model import DuoLM

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--steps", type=int, default=150, help="training steps of the tiny models")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/lm_eval_cost_cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        models = {algo: train_tiny(Path(tmp), algo, args.steps) for algo in ("duo", "ar")}
    qs = questions(args.questions)
    requests = 4 * len(qs)
    result = {"device": "cpu", "threads": torch.get_num_threads(), "questions": len(qs), "requests": requests,
              "model": "tiny DiT (1 block, hidden 32, seq_len 32, 300-token BPE)", "train_steps": args.steps,
              "batch_size": 32, "ar": {}, "duo": {}}
    acc, sec = accuracy(DuoLM(loaded=models["ar"], batch_size=32), models["ar"].tokenizer, qs)
    result["ar"] = {"accuracy": acc, "seconds_per_1000_requests": 1000 * sec / requests}
    print(f"ar: accuracy {acc:.3f}, {1000 * sec / requests:.2f} s / 1000 requests")
    for n in (1, 4, 16):
        accs, secs = [], []
        for seed in range(5):
            lm = DuoLM(loaded=models["duo"], nelbo_samples=n, batch_size=32, seed=seed)
            a, s = accuracy(lm, models["duo"].tokenizer, qs)
            accs.append(a)
            secs.append(s)
        row = {"accuracy_per_seed": accs, "accuracy_mean": statistics.mean(accs),
               "accuracy_stdev": statistics.stdev(accs), "accuracy_range": max(accs) - min(accs),
               "seconds_per_1000_requests": 1000 * statistics.mean(secs) / requests}
        result["duo"][str(n)] = row
        print(f"duo, {n:2d} NELBO samples: accuracy {row['accuracy_mean']:.3f} +- {row['accuracy_stdev']:.3f} "
              f"(range {row['accuracy_range']:.3f}), {row['seconds_per_1000_requests']:.2f} s / 1000 requests")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
