"""Time the on-the-fly operator T (and dT/dgamma) against scipy.integrate.quad.

    python benchmarks/duality_speed.py --vocab-size 50257 --points 100000

quad is timed on a sample of points (each evaluating P and dP, as the library does)
and extrapolated to the full batch. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import numpy as np
import torch
from scipy import integrate, stats

from duo.duality import diffusion_transform


def quad_T_and_dT(gamma: float, K: int) -> tuple[float, float]:
    mu = math.exp(-gamma / 2)
    z_star = stats.norm.isf(1.0 / K)
    pts = sorted({mu - 8, mu, mu + 8, z_star - 2, z_star, z_star + 2})
    edges = [-np.inf, *pts, np.inf]

    def step(z):
        return math.exp((K - 1) * stats.norm.logcdf(z))

    def p_integrand(z):
        return stats.norm.pdf(z - mu) * step(z)

    def d_integrand(z):
        return (z - mu) * stats.norm.pdf(z - mu) * step(z)

    kw = dict(epsabs=1e-14, epsrel=1e-13, limit=200)
    p = sum(integrate.quad(p_integrand, a, b, **kw)[0] for a, b in zip(edges[:-1], edges[1:]))
    d = sum(integrate.quad(d_integrand, a, b, **kw)[0] for a, b in zip(edges[:-1], edges[1:]))
    return (K * p - 1) / (K - 1), K / (K - 1) * (-mu / 2) * d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab-size", type=int, default=50257)
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--quad-sample", type=int, default=200)
    ap.add_argument("--gamma-min", type=float, default=-8.0)
    ap.add_argument("--gamma-max", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    K = args.vocab_size
    gammas = torch.linspace(args.gamma_min, args.gamma_max, args.points, dtype=torch.float64)

    diffusion_transform(gammas[:16], K)  # build (and cache) the rule once
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = diffusion_transform(gammas, K)
        times.append(time.perf_counter() - t0)
    t_ours = min(times)

    idx = np.linspace(0, args.points - 1, args.quad_sample).astype(int)
    t0 = time.perf_counter()
    ref = np.array([quad_T_and_dT(float(gammas[i]), K) for i in idx])
    t_quad_per_point = (time.perf_counter() - t0) / len(idx)
    err_T = np.abs(out.alpha.numpy()[idx] - ref[:, 0]).max()
    err_dT = np.abs(out.dalpha_dgamma.numpy()[idx] - ref[:, 1]).max()
    t_quad_total = t_quad_per_point * args.points

    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}")
    print(f"| K | points | duo T+dT (s) | quad T+dT (s, extrapolated) | speed-up | max err T | max err dT |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {K} | {args.points} | {t_ours:.3f} | {t_quad_total:.0f} | "
        f"{t_quad_total / t_ours:,.0f}x | {err_T:.1e} | {err_dT:.1e} |"
    )


if __name__ == "__main__":
    main()
