"""Losses at a GPT-2 vocabulary: autograd through log-softmax versus the losses from
logits with hand-written backward passes (Duo's NELBO, `duo.losses.fused_nelbo`; the
distillation KL, `duo.losses.fused_kl`).

    python benchmarks/loss_speed.py                      # CPU: 1,024 tokens, K = 50,257
    python benchmarks/loss_speed.py --loss kl            # the reverse distillation KL
    python benchmarks/loss_speed.py --device cuda --tokens 16384
    python benchmarks/loss_speed.py --compile            # adds torch.compile'd variants
    python benchmarks/loss_speed.py --loss nelbo-backends --device cuda   # Triton vs PyTorch passes

For each variant: forward + backward time of the loss on float32 logits (min and median
of ``--repeats`` runs, both variants alternating in one process so they see the same
machine), and the bytes autograd keeps for backward (counted with saved-tensor hooks;
on CUDA also the peak memory allocated). The network is left out: this is the part of
a training step the two variants differ in.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from duo.losses.fused_kl import distillation_kl_from_logits
from duo.losses.fused_nelbo import usdm_nelbo_from_logits
from duo.losses import distillation_kl, usdm_nelbo
from duo.utils.memory import saved_tensor_bytes

def _with_triton(flag: str, fn, *args):
    """``fn(*args)`` with the Triton kernels on ("1") or off ("0"); the loss reads the
    flag in forward and backward, so it stays set until backward is done."""
    os.environ["DUO_TRITON"] = flag
    return fn(*args)


# Every variant takes (logits, z, x, alpha, dalpha, teacher log-probs).
LOSSES = {
    "nelbo": {
        "autograd (log_softmax + usdm_nelbo)":
            lambda s, z, x, a, da, t: usdm_nelbo(s.log_softmax(-1), z, x, a, da),
        "fused (usdm_nelbo_from_logits)":
            lambda s, z, x, a, da, t: usdm_nelbo_from_logits(s, z, x, a, da),
    },
    # On CUDA with Triton the fused losses run Triton kernels; these add their PyTorch passes.
    "nelbo-backends": {
        "fused, Triton kernels where available":
            lambda s, z, x, a, da, t: _with_triton("1", usdm_nelbo_from_logits, s, z, x, a, da),
        "fused, PyTorch passes":
            lambda s, z, x, a, da, t: _with_triton("0", usdm_nelbo_from_logits, s, z, x, a, da),
    },
    "kl-backends": {
        "fused KL, Triton kernels where available":
            lambda s, z, x, a, da, t: _with_triton("1", distillation_kl_from_logits, s, t),
        "fused KL, PyTorch passes":
            lambda s, z, x, a, da, t: _with_triton("0", distillation_kl_from_logits, s, t),
    },
    "kl": {
        "autograd (log_softmax + distillation_kl)":
            lambda s, z, x, a, da, t: distillation_kl(s.log_softmax(-1), t),
        "fused (distillation_kl_from_logits)":
            lambda s, z, x, a, da, t: distillation_kl_from_logits(s, t),
    },
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--loss", choices=sorted(LOSSES), default="nelbo")
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true",
                   help="also time each variant under torch.compile (fused forward + backward)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    dev = torch.device(args.device)
    g = torch.Generator(device=dev).manual_seed(0)
    B = 8
    L = args.tokens // B
    logits = torch.randn(B, L, args.vocab, device=dev, generator=g)
    x = torch.randint(0, args.vocab, (B, L), device=dev, generator=g)
    z = torch.where(torch.rand(B, L, device=dev, generator=g) < 0.5, x,
                    torch.randint(0, args.vocab, (B, L), device=dev, generator=g))
    a = torch.rand(B, 1, device=dev, generator=g) * 0.9 + 0.05
    da = -torch.ones(B, 1, device=dev)
    teacher = (logits + torch.randn(logits.shape, device=dev, generator=g)).log_softmax(-1)
    variants = dict(LOSSES[args.loss])
    if args.compile:
        variants.update({f"{name}, compiled": torch.compile(fn) for name, fn in LOSSES[args.loss].items()})

    def step(fn):
        leaf = logits.detach().requires_grad_()
        fn(leaf, z, x, a, da, teacher).sum().backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    times = {name: [] for name in variants}
    peaks = {}
    for name, fn in variants.items():
        step(fn)  # warm-up
    for _ in range(args.repeats):
        for name, fn in variants.items():
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            step(fn)
            times[name].append(time.perf_counter() - start)
            if dev.type == "cuda":
                peaks[name] = torch.cuda.max_memory_allocated() / 2**30
    rows = []
    for name, fn in variants.items():
        leaf = logits.detach().requires_grad_()
        try:
            kept = saved_tensor_bytes(lambda: fn(leaf, z, x, a, da, teacher)) / 2**20
        except Exception:  # compiled graphs may refuse saved-tensor hooks
            kept = float("nan")
        rows.append({"variant": name, "min_ms": 1e3 * min(times[name]),
                     "median_ms": 1e3 * statistics.median(times[name]), "saved_mib": kept,
                     "peak_gib": peaks.get(name)})
    print(f"N = {B * L} tokens, K = {args.vocab}, {dev}, float32 logits ({B * L * args.vocab * 4 / 2**20:.0f} MiB)")
    print("| variant | fwd+bwd min (ms) | median (ms) | kept for backward (MiB) | peak (GiB) |")
    print("|---|---|---|---|---|")
    for r in rows:
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
        print(f"| {r['variant']} | {r['min_ms']:.1f} | {r['median_ms']:.1f} | {r['saved_mib']:.0f} | {peak} |")
    for r in rows[1:]:
        print(f"speed-up of {r['variant']} over {rows[0]['variant']} (median): "
              f"{rows[0]['median_ms'] / r['median_ms']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
