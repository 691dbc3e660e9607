"""Data-layer throughput: building the packed cache and loading batches from it.

    python benchmarks/data_throughput.py                      # builtin corpus, default BPE
    python benchmarks/data_throughput.py --num-workers 0 2 --batches 2000

Prints a markdown table: BPE training time, cache build (tokenize + pack + write) in
tokens/s, reopening a built cache, and batches/s + tokens/s through the resumable
DataLoader. Uses a fresh temporary cache unless --cache-dir is given.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from duo.data import DataConfig, build_data, get_corpus, get_tokenizer, pack_split


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="builtin")
    p.add_argument("--tokenizer", default=None, help="default: the corpus's default (BPE for builtin)")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--packing", default="wrap", choices=["wrap", "pad"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=1000, help="batches to load per measurement")
    p.add_argument("--num-workers", type=int, nargs="+", default=[0])
    p.add_argument("--repeats", type=int, default=3, help="cache builds to time (median reported)")
    p.add_argument("--cache-dir", default=None, help="default: a temporary directory, deleted afterwards")
    return p.parse_args()


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _load_rate(bundle, batch_size: int, batches: int, num_workers: int) -> tuple[float, float]:
    bundle.config.num_workers = num_workers
    loader = bundle.train_loader(batch_size)
    it = iter(loader)
    next(it)  # worker start-up is a one-off cost, not throughput
    start, n = time.perf_counter(), 0
    while n < batches:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        n += 1
    elapsed = time.perf_counter() - start
    return n / elapsed, n * batch["input_ids"].numel() / elapsed


def main() -> None:
    args = _parse()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    root = Path(args.cache_dir) if args.cache_dir else Path(tempfile.mkdtemp(prefix="duo-bench-"))
    try:
        cfg = DataConfig(
            corpus=args.corpus,
            tokenizer=args.tokenizer,
            vocab_size=args.vocab_size,
            seq_len=args.seq_len,
            packing=args.packing,
            cache_dir=str(root),
            show_progress=False,
        ).validate()
        corpus, corpus_s = _timed(lambda: get_corpus(cfg.corpus))
        tok, tok_s = _timed(
            lambda: get_tokenizer(
                cfg.tokenizer or corpus.default_tokenizer,
                corpus=corpus,
                vocab_size=cfg.vocab_size,
                cache_dir=root,
                show_progress=False,
            )
        )
        build_times, entry = [], None
        for _ in range(args.repeats):
            shutil.rmtree(root / "packed", ignore_errors=True)
            entry, seconds = _timed(
                lambda: pack_split(
                    corpus, "train", tok, packing=cfg.packing, seq_len=cfg.seq_len, cache_dir=root, show_progress=False
                )
            )
            build_times.append(seconds)
        build_s = statistics.median(build_times)
        n_tokens = entry.meta["stats"]["num_tokens"]
        bundle, warm_s = _timed(lambda: build_data(cfg))  # train entry cached; builds the small validation split
        _, reopen_s = _timed(lambda: build_data(cfg))  # everything cached: the "second run"

        rows = [
            ("corpus load", f"{corpus_s:.2f} s", f"{args.corpus}: {len(corpus.documents('train'))} train docs"),
            ("tokenizer (trained if BPE)", f"{tok_s:.2f} s", f"{tok.name} (vocab {tok.vocab_size})"),
            (
                "cache build (train)",
                f"{n_tokens / build_s:,.0f} tokens/s",
                f"{n_tokens:,} tokens -> {entry.num_rows:,} rows x {cfg.seq_len} in {build_s:.2f} s "
                f"(median of {args.repeats})",
            ),
            ("first build_data, train cached", f"{warm_s:.2f} s", "builds the validation split"),
            ("second run: build_data, all cached", f"{reopen_s:.2f} s", "reopens memmaps only"),
        ]
        for workers in args.num_workers:
            bps, tps = _load_rate(bundle, args.batch_size, args.batches, workers)
            rows.append(
                (
                    f"load batches, num_workers={workers}",
                    f"{bps:,.0f} batches/s",
                    f"{tps:,.0f} tokens/s; batch {args.batch_size} x {cfg.seq_len}, {args.batches} batches",
                )
            )
        print(f"\nmachine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}\n")
        print("| measurement | rate | detail |")
        print("|---|---|---|")
        for name, rate, detail in rows:
            print(f"| {name} | {rate} | {detail} |")
    finally:
        if not args.cache_dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
