"""Few-step Duo against an autoregressive model of the same size: time to generate.

    python benchmarks/generation_speed.py                                # CPU, random weights
    python benchmarks/generation_speed.py --device cuda --preset small --vocab-size 50257 \\
        --lengths 128 1024 --batches 1 16 64
    python benchmarks/generation_speed.py --duo runs/duo --ar runs/ar --judge runs/ar   # + quality

For each (L, B): Duo's greedy-tail sampler at each step count (NFE reported: steps, or
steps + 1 under --protocol paper), duo's AR baseline with its key/value cache (one
position per network call) and without it, and Hugging Face GPT-2 ``generate`` (same
width, depth, heads and vocabulary; random weights; KV cache) as the outside reference.
Reports the fastest of ``--repeats`` runs' wall time, tokens/s and peak memory (CUDA: allocator peak; CPU: not measured).
Timing does not depend on the weights, so the default uses random ones; ``--duo/--ar``
load trained runs, and ``--judge`` adds Gen PPL and entropy beside the speed.
Writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from duo.config import build_config
from duo.generation import generate_tokens
from duo.methods import build_method
from duo.utils.memory import tune_cpu_allocator


def _models(args, device):
    """(duo method, ar method, tokenizer or None) from runs, or random weights."""
    if args.duo and args.ar:
        from duo.checkpoints import load_checkpoint

        duo, ar = load_checkpoint(args.duo, device=device), load_checkpoint(args.ar, device=device)
        return duo.method, ar.method, duo.tokenizer, (duo, ar)
    methods = []
    for algo in ("duo", "ar"):
        cfg = build_config([f"algo={algo}", f"model={args.preset}", f"model.max_seq_len={max(args.lengths)}"])
        torch.manual_seed(0)
        backbone, method = build_method(cfg, args.vocab_size)
        with torch.no_grad():  # zero-initialised output layers would make every draw uniform
            for name, p in backbone.named_parameters():
                if "norm" not in name:
                    p.normal_(0.0, 0.02)
        methods.append(method)
        backbone.to(device).eval()
    return methods[0], methods[1], None, None


def _hf_gpt2(ar_method, max_len: int, device):
    from transformers import GPT2Config, GPT2LMHeadModel

    c = ar_method.backbone.config
    cfg = GPT2Config(vocab_size=ar_method.vocab_size, n_positions=max_len, n_embd=c.hidden_size,
                     n_layer=c.n_blocks, n_head=c.n_heads, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    return GPT2LMHeadModel(cfg).to(device).eval()


REPEATS = 3


def _timed(fn, device) -> tuple[float, float | None, object]:
    """Fastest of REPEATS runs (a shared machine slows some runs, never speeds one up)."""
    best, out = float("inf"), None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(REPEATS):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return best, peak, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 1024])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    ap.add_argument("--protocol", default="ours", choices=["ours", "paper"])
    ap.add_argument("--no-hf", action="store_true", help="skip Hugging Face GPT-2 generate")
    ap.add_argument("--no-uncached", action="store_true", help="skip AR without its cache")
    ap.add_argument("--duo"), ap.add_argument("--ar"), ap.add_argument("--judge")
    ap.add_argument("--repeats", type=int, default=3, help="time each case this often; report the fastest")
    ap.add_argument("--system-allocator", action="store_true",
                    help="leave glibc's allocator as it is (the duo command tunes it: duo.utils.memory)")
    ap.add_argument("--out", default="benchmarks/results/generation_speed_cpu.json")
    args = ap.parse_args()
    global REPEATS
    REPEATS = max(1, args.repeats)
    device = torch.device(args.device)
    tuned = False if args.system_allocator else tune_cpu_allocator()
    duo, ar, tokenizer, loaded = _models(args, device)
    judge = None
    if args.judge:
        from duo.evaluation import load_judge

        judge = load_judge(args.judge, device)
    hf = None if args.no_hf else _hf_gpt2(ar, max(args.lengths), device)
    rows = []

    def record(kind, L, B, steps, nfe, seconds, peak, tokens=None):
        row = {"model": kind, "seq_len": L, "batch": B, "steps": steps, "nfe": nfe, "seconds": round(seconds, 4),
               "tokens_per_s": round(B * L / seconds, 1), "peak_gib": peak}
        if judge is not None and tokens is not None and tokenizer is not None:
            from duo.evaluation import generative_perplexity, unigram_entropy
            from duo.generation import decode

            texts = decode(tokenizer, tokens.cpu())
            row["gen_ppl"] = round(generative_perplexity(texts, judge).gen_ppl, 2)
            row["entropy"] = round(float(unigram_entropy(tokens.cpu())), 3)
        rows.append(row)
        print(json.dumps(row), flush=True)

    for L in args.lengths:
        for B in args.batches:
            generate_tokens(duo, num_samples=B, seq_len=L, sampler="greedy_tail", steps=2, device=device)  # warm-up
            for steps in args.steps:
                seconds, peak, (tokens, nfe, _) = _timed(lambda: generate_tokens(
                    duo, num_samples=B, seq_len=L, sampler="greedy_tail", steps=steps, device=device,
                    protocol=args.protocol), device)
                record("duo greedy_tail", L, B, steps, nfe, seconds, peak, tokens)
            variants = [("ar kv-cache", {})] + ([] if args.no_uncached or L > 256 else [("ar no cache", {"kv_cache": False})])
            generate_tokens(ar, num_samples=B, seq_len=min(L, 8), sampler="ar", device=device,
                            options={"bos_id": 0})  # warm-up
            for kind, opts in variants:
                seconds, peak, (tokens, nfe, _) = _timed(lambda: generate_tokens(
                    ar, num_samples=B, seq_len=L, sampler="ar", device=device, options={"bos_id": 0, **opts}), device)
                record(kind, L, B, None, nfe, seconds, peak, tokens)
            if hf is not None:
                start = torch.zeros((B, 1), dtype=torch.long, device=device)
                with torch.no_grad():
                    seconds, peak, out = _timed(lambda: hf.generate(
                        start, attention_mask=torch.ones_like(start), do_sample=True, max_new_tokens=L - 1,
                        min_new_tokens=L - 1, use_cache=True, pad_token_id=0), device)
                record("hf gpt2 generate", L, B, None, L - 1, seconds, peak)
    meta = {"device": str(device), "preset": args.preset, "vocab_size": args.vocab_size, "protocol": args.protocol,
            "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "allocator": "tuned" if tuned else "system", "date": time.strftime("%Y-%m-%d"),
            "weights": "trained runs" if loaded else "random"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
