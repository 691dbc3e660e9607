"""Training throughput (tokens/s) and model-FLOPs utilisation of a full optimiser step.

    python benchmarks/train_throughput.py --presets tiny small --batch 8 --seq-len 128
    python benchmarks/train_throughput.py --presets small --batch 16 --seq-len 1024 --compile   # GPU

One step = Duo's discrete loss (forward noise, DiT forward, NELBO), backward, AdamW.
On CUDA the step runs under bf16 autocast. MFU = model FLOPs of a step / step time /
peak. The step's FLOPs come from ``duo.models.flops.training_flops``, the strict count:
6 x per-token parameters + 12 n_blocks L D per token, and the per-sequence layers (time
embedding, adaLN) 6 x their parameters once per sequence. MFU up to the sixth session
counted those per token, about 5% more for small at L = 1024. The peak is
``--peak-tflops`` (H100 SXM dense bf16: 989).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time

import torch

from duo.config import build_config
from duo.losses import usdm_nelbo
from duo.methods.duo import _nelbo_from_logits as duo_nelbo_from_logits
from duo.models import compile_backbone, count_parameters
from duo.models.flops import training_flops
from duo.methods import build_method


def _autograd_nelbo(s, z, x, a, da, vocab_size=None):
    # (Duo's loss gets the padded output layer's logits on CUDA: the first vocab_size columns)
    return usdm_nelbo(s[..., :vocab_size].float().log_softmax(-1), z, x, a, da)


def _triton(on: bool):
    def pick():
        # the fused loss's Triton kernels (on CUDA, when installed) or its PyTorch passes
        os.environ["DUO_TRITON"] = "1" if on else "0"
        return duo_nelbo_from_logits
    return pick


# The Duo NELBO from logits: the library's hand-written backward (eager; compiling it
# made it 5x slower on CPU, benchmarks/loss_speed.py --compile), or autograd through
# log-softmax, eager or fused by torch.compile (the best on an H100 in session 2).
LOSSES = {
    "fused": _triton(True),
    "fused-pytorch": _triton(False),
    "autograd": lambda: _autograd_nelbo,
    "autograd-compiled": lambda: torch.compile(_autograd_nelbo),
}


def bench(preset: str, batch: int, seq_len: int, steps: int, warmup: int, device: str,
          compile_model: bool, vocab: int, algo: str, curriculum: str,
          chunks: list[int | None], losses: list[str], profile: str | None = None,
          compile_mode: str | None = None) -> list[dict]:
    """One row per (loss, chunk) variant, all on one model (compiled once)."""
    overrides = [f"algo={algo}", f"model={preset}", f"model.max_seq_len={max(seq_len, 8)}"]
    if algo == "duo" and curriculum != "none":
        overrides += [f"algo.curriculum={curriculum}", "algo.curriculum_steps=1000000"]
    cfg = build_config(overrides)
    backbone, method = build_method(cfg, vocab)
    backbone.to(device).train()
    backbone.check_inputs = False
    import duo.methods.duo as duo_method

    if compile_model:
        # what trainer.compile=true does (mode None); other modes for comparison
        compile_backbone(backbone, **({"mode": compile_mode} if compile_mode else {}))
    opt = torch.optim.AdamW(backbone.parameters(), lr=1e-4, fused=device == "cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randint(0, vocab, (batch, seq_len), device=device, generator=gen)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda"
                else contextlib.nullcontext())
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        t = torch.rand(batch, device=device, generator=gen) * 0.999 + 1e-3
        with autocast:
            out = method.training_loss({"input_ids": x}, t, step=0, generator=gen)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    rows = []
    step_flops = training_flops(backbone.config, batch, seq_len)
    for loss in losses:
        duo_method._nelbo_from_logits = LOSSES[loss]()
        for chunk in chunks:
            method.loss_chunk_elements = chunk
            for _ in range(warmup):
                step()
            sync()
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            sync()
            dt = (time.perf_counter() - t0) / steps
            tok_s = batch * seq_len / dt
            rows.append({
                "preset": preset, "algo": algo, "curriculum": curriculum, "device": device,
                "compile": (compile_mode or True) if compile_model else False, "loss": loss, "chunk": chunk, "batch": batch,
                "seq_len": seq_len, "vocab": vocab, "params": count_parameters(backbone),
                "step_s": dt, "tokens_per_s": tok_s, "tflops": step_flops / dt / 1e12,
                "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
            })
    if profile:
        _profile(step, sync, profile, losses[-1], chunks[-1])
    return rows


def _profile(step, sync, path: str, loss: str, chunk) -> None:
    """Kernel times of two steps of the last variant, by kernel and by kind, to ``path``."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        for _ in range(2):
            step()
        sync()
    from torch.autograd import DeviceType

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    attr = "self_device_time_total" if dev == "cuda" else "self_cpu_time_total"
    # On CUDA only the kernels themselves: the operators that launch them report the
    # same time again as theirs.
    kind = DeviceType.CUDA if dev == "cuda" else DeviceType.CPU
    events = [e for e in prof.key_averages() if e.device_type == kind and getattr(e, attr, 0) > 0]
    events.sort(key=lambda e: -getattr(e, attr))
    total = sum(getattr(e, attr) for e in events)
    kinds = {"matmul (gemm)": ("gemm", "matmul", "cutlass", "nvjet", "xmma", "aten::mm", "aten::addmm", "aten::bmm"),
             "attention": ("flash", "fmha", "attention", "efficient"),
             "loss kernels (duo Triton)": ("_forward_kernel", "_backward_kernel", "nelbo"),
             "optimizer": ("adam", "foreach", "multi_tensor"),
             "inductor fused": ("triton_",)}
    by_kind: dict[str, float] = {}
    for e in events:
        name = e.key.lower()
        kind = next((k for k, keys in kinds.items() if any(s in name for s in keys)), "other")
        by_kind[kind] = by_kind.get(kind, 0.0) + getattr(e, attr)
    with open(path, "w") as fh:
        fh.write(f"profile of 2 steps, loss {loss}, chunk {chunk}: {total / 2e3:.1f} ms of "
                 f"{dev} kernel time per step\n\n| kind | ms per step | share |\n|---|---|---|\n")
        for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1]):
            fh.write(f"| {k} | {v / 2e3:.2f} | {v / total:.1%} |\n")
        fh.write("\n| kernel | calls per step | ms per step | share |\n|---|---|---|---|\n")
        for e in events[:30]:
            t = getattr(e, attr)
            fh.write(f"| {e.key[:90]} | {e.count / 2:g} | {t / 2e3:.2f} | {t / total:.1%} |\n")
    print(open(path).read())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--tiny-vocab", type=int, default=4096)
    ap.add_argument("--algo", default="duo")
    ap.add_argument("--curriculum", default="none", choices=["none", "full", "topk"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--loss", nargs="+", choices=sorted(LOSSES), default=["fused"],
                    help="Duo's NELBO: hand-written backward (the library's) or autograd; "
                         "several are timed one after the other on one (compiled) model")
    ap.add_argument("--loss-chunk-elements", type=int, nargs="+", default=[None],
                    help="logits elements per chunk of the output layer + loss "
                         "(default: the library's, chosen by device); several are timed in turn")
    ap.add_argument("--profile", help="write a kernel-time table of the last variant here")
    ap.add_argument("--compile-mode", default=None,
                    help="torch.compile mode with --compile, e.g. max-autotune-no-cudagraphs "
                         "(default: torch's default, as trainer.compile=true)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--json", help="append results as JSON lines to this file")
    args = ap.parse_args()
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    rows = []
    for preset in args.presets:
        vocab = args.tiny_vocab if preset == "tiny" else args.vocab
        rows += bench(preset, args.batch, args.seq_len, args.steps, args.warmup, args.device,
                      args.compile, vocab, args.algo, args.curriculum, args.loss_chunk_elements,
                      args.loss, args.profile, args.compile_mode)
    print(f"device: {torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| preset | algo | curriculum | compile | loss | chunk | B x L | K | step (s) | tokens/s | TFLOP/s | MFU | peak mem (GiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mfu = r["tflops"] / args.peak_tflops if args.device == "cuda" else float("nan")
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "-"
        print(f"| {r['preset']} | {r['algo']} | {r['curriculum']} | {r['compile']} | {r['loss']} | {r['chunk'] or 'default'} | {r['batch']} x {r['seq_len']} | "
              f"{r['vocab']} | {r['step_s']:.3f} | {r['tokens_per_s']:,.0f} | {r['tflops']:.2f} | "
              f"{mfu:.1%} | {mem} |")
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps({**r, "mfu": mfu}) + "\n")


if __name__ == "__main__":
    main()
