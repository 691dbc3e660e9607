"""nucleus="approx" vs the exact top-p filter: total-variation distance per row at K = 50,257.

    python benchmarks/results/nucleus_tv.py > benchmarks/results/nucleus_approx_tv_2026-12-06.txt
"""
import torch
from duo.samplers import row_thresholds
from duo.samplers.filters import nucleus_tv_bound
def filt(lp, th): return torch.where(lp >= th.log_tau[:, None], (lp.double() - th.log_mass[:, None]).exp(), 0.0)
vocab = 50257
g = torch.Generator().manual_seed(0)
cases = {f"softmax(randn*{s})": (s * torch.randn(16, vocab, generator=g)).log_softmax(-1) for s in (0.5, 1.0, 2.0, 4.0, 8.0)}
ranks = torch.arange(1, vocab + 1, dtype=torch.float32)
for s in (0.8, 1.0, 1.2):
    cases[f"zipf s={s}"] = torch.stack([(-s * ranks.log())[torch.randperm(vocab, generator=g)] for _ in range(4)]).log_softmax(-1)
for name, lp in cases.items():
    for top_p in (0.9, 0.95):
        e, a = row_thresholds(lp, top_p), row_thresholds(lp, top_p, nucleus="approx")
        tv = 0.5 * (filt(lp, e) - filt(lp, a)).abs().sum(-1)
        print(f"{name:18s} p={top_p}: TV median {tv.median():.1e} max {tv.max():.1e}  bound max {nucleus_tv_bound(lp, top_p).max():.1e}")
