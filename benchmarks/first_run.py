"""Does the first `duo train` a newcomer runs end with samples that read like the corpus?

    python benchmarks/first_run.py                          # the default `duo train`, timed
    python benchmarks/first_run.py --overrides model.n_blocks=6 trainer.lr=2e-3 --tag deeper
    python benchmarks/first_run.py --calibrate              # real and shuffled text only
    python benchmarks/first_run.py --resample "sampler=greedy_tail" "top_p=0.9"   # + other samplers

Runs `duo train` with the given overrides in a subprocess (wall time measured), reads the
printed validation bound and samples, and scores the samples against the built-in
corpus's training split. Text is split into tokens: runs of letters, runs of digits and
single punctuation marks, lower-cased. Reported:
- words: the share of words (letter runs of 2+) that occur in the training split;
- pairs: the share of adjacent token pairs that occur in the training split;
- distinct / entropy_bits: distinct tokens and unigram entropy over the first 2,000
  tokens (a low nucleus buys words and pairs with repetition; these show the price).
For calibration the same scores of real validation text and of shuffled training tokens
are reported beside them. ``--resample`` scores other sampler settings on the trained run
(``duo sample``, ``--resample-samples`` samples each) without training again. Appends one
JSON record per run to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

TOKEN = re.compile(r"[a-z]+|[0-9]+|[^\sa-z0-9]")


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text.lower())


def reference(docs) -> tuple[set[str], set[tuple[str, str]]]:
    words, pairs = set(), set()
    for doc in docs:
        toks = tokens(doc)
        words.update(t for t in toks if t.isalpha() and len(t) >= 2)
        pairs.update(zip(toks, toks[1:]))
    return words, pairs


def scores(texts: list[str], words: set[str], pairs: set[tuple[str, str]]) -> dict[str, float]:
    w_hit = w_all = p_hit = p_all = 0
    for text in texts:
        toks = tokens(text)
        ws = [t for t in toks if t.isalpha() and len(t) >= 2]
        w_all += len(ws)
        w_hit += sum(w in words for w in ws)
        ps = list(zip(toks, toks[1:]))
        p_all += len(ps)
        p_hit += sum(p in pairs for p in ps)
    return {"words": round(w_hit / max(w_all, 1), 3), "pairs": round(p_hit / max(p_all, 1), 3),
            "num_words": w_all, "num_pairs": p_all, **diversity([t for text in texts for t in tokens(text)])}


def diversity(toks: list[str], n: int = 2000) -> dict[str, float]:
    """Distinct tokens among the first ``n`` and the unigram entropy (bits) of those: a low
    nucleus raises words and pairs by repeating frequent tokens, which these show."""
    toks = toks[:n]
    counts = Counter(toks)
    total = max(len(toks), 1)
    entropy = -sum(c / total * math.log2(c / total) for c in counts.values())
    return {"distinct": round(len(counts) / total, 3), "entropy_bits": round(entropy, 2)}


def parse_output(out: str) -> tuple[float | None, list[str]]:
    bound = re.search(r"validation perplexity (?:<= )?([0-9.]+)", out)
    parts = re.split(r"^--- sample \d+ ---$", out, flags=re.M)[1:]
    samples = [re.split(r"^checkpoint: ", p, flags=re.M)[0].strip() for p in parts]
    return (float(bound.group(1)) if bound else None), samples


def resample(run_dir: str, variant: str, n: int, words, pairs) -> dict:
    """Score ``n`` samples of the trained run drawn with the settings ``variant``."""
    name = re.sub(r"[^A-Za-z0-9_.=-]+", "_", variant) or "defaults"  # the same settings overwrite their file
    out = Path(run_dir) / "samples" / f"resample-{name}.jsonl"
    cmd = [sys.executable, "-m", "duo.cli", "-q", "sample", f"checkpoint={run_dir}", f"num_samples={n}",
           f"out={out}", *variant.split()]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"settings": variant, "error": proc.stderr.strip().splitlines()[-1:]}
    texts = [json.loads(line)["text"] for line in out.read_text().splitlines() if line.strip()]
    return {"settings": variant, "seconds": round(time.perf_counter() - start, 1), "num_samples": len(texts),
            **scores(texts, words, pairs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--overrides", nargs="*", default=[])
    ap.add_argument("--tag", default="default")
    ap.add_argument("--run-dir", default=None, help="default: a fresh folder under /tmp")
    ap.add_argument("--calibrate", action="store_true", help="only score real and shuffled text")
    ap.add_argument("--resample", nargs="*", default=[],
                    help="sampler settings to score after training, each a quoted list of key=value")
    ap.add_argument("--resample-samples", type=int, default=16)
    ap.add_argument("--resample-only", action="store_true", help="score --resample on --run-dir, no training")
    ap.add_argument("--out", default="benchmarks/results/first_run_cpu.jsonl")
    args = ap.parse_args()

    from duo.data import get_corpus

    corpus = get_corpus("builtin")
    train_docs, val_docs = list(corpus.documents("train")), list(corpus.documents("validation"))
    words, pairs = reference(train_docs)
    toks = [t for d in train_docs for t in tokens(d)]
    random.Random(0).shuffle(toks)
    calibration = {"validation text": scores(val_docs, words, pairs),
                   "shuffled training tokens": scores([" ".join(toks[:20000])], words, pairs)}
    record = {"tag": args.tag, "date": time.strftime("%Y-%m-%d %H:%M"), "calibration": calibration}
    if args.resample_only:
        if not args.run_dir:
            sys.exit("--resample-only needs --run-dir (a trained run)")
        record["run_dir"] = args.run_dir
        record["resampled"] = [resample(args.run_dir, v, args.resample_samples, words, pairs) for v in args.resample]
    elif not args.calibrate:
        run_dir = args.run_dir or f"/tmp/first-run-{args.tag}-{int(time.time())}"
        cmd = [sys.executable, "-m", "duo.cli", "train", f"run_dir={run_dir}", "trainer.progress_bar=false",
               *args.overrides]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"duo train failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
        bound, samples = parse_output(proc.stdout)
        record.update({"command": "duo train " + " ".join(args.overrides), "seconds": round(seconds, 1),
                       "val_ppl": bound, "num_samples": len(samples), **scores(samples, words, pairs),
                       "samples_head": [s[:200] for s in samples]})
        record["resampled"] = [resample(run_dir, v, args.resample_samples, words, pairs) for v in args.resample]
    print(json.dumps(record, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as fh:
        fh.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
