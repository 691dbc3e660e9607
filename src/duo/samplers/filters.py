"""Top-k and nucleus (top-p) filtering of a predicted distribution.

Both filters keep the tokens whose probability reaches a per-row threshold ``tau``, so
ties at the boundary are all kept and the result does not depend on sort order:

- top-k: ``tau`` is the k-th largest probability;
- top-p: in decreasing order, ``tau`` is the probability of the first token at which the
  cumulative mass reaches ``p`` (so the most likely token is always kept);
- both: top-k first, then top-p on the renormalised top-k distribution.

:func:`top_k_filter` / :func:`top_p_filter` are the dense reference on (B, L, K).
:func:`row_thresholds` finds the same thresholds from log-probabilities without sorting
whole rows (a partial top-k, then a histogram of the row, sorting only what is left), so
the samplers never touch a filtered (B, L, K) tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .workspace import Workspace

_FIRST_WINDOW = 64
_BUCKETS = 2048
_MAX_BUCKET = 2048  # a more crowded crossing bucket falls back to a full sort


def check_filter(top_p: float, top_k: int) -> None:
    """One-line errors for bad filter settings."""
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p!r} must lie in (0, 1]; use 1.0 to disable nucleus sampling")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k={top_k!r} must be an integer >= 0; use 0 to disable it")


def filter_active(top_p: float, top_k: int, vocab_size: int) -> bool:
    return top_p < 1.0 or 0 < top_k < vocab_size


def top_k_filter(probs: Tensor, k: int) -> Tensor:
    """Keep the ``k`` most likely tokens (and ties), renormalise. (B, L, K) -> float64."""
    check_filter(1.0, k)
    probs = probs.double()
    if 0 < k < probs.shape[-1]:
        tau = probs.topk(k, dim=-1).values[..., -1:]
        probs = torch.where(probs >= tau, probs, 0.0)
    return probs / probs.sum(-1, keepdim=True)


def top_p_filter(probs: Tensor, p: float) -> Tensor:
    """Keep the smallest high-probability set of mass >= ``p`` (and ties), renormalise.

    (B, L, K) -> float64; at least one token is always kept.
    """
    check_filter(p, 0)
    probs = probs.double()
    probs = probs / probs.sum(-1, keepdim=True)
    if p >= 1.0:
        return probs
    ranked = probs.sort(dim=-1, descending=True).values
    before = ranked.cumsum(-1) - ranked
    n_keep = (before < p).sum(-1, keepdim=True).clamp_min(1)
    tau = ranked.gather(-1, n_keep - 1)
    kept = torch.where(probs >= tau, probs, 0.0)
    return kept / kept.sum(-1, keepdim=True)


def filter_probs(probs: Tensor, top_p: float = 1.0, top_k: int = 0) -> Tensor:
    """top-k, then top-p. (B, L, K) -> float64 renormalised probabilities."""
    return top_p_filter(top_k_filter(probs, top_k), top_p)


@dataclass(frozen=True)
class Thresholds:
    """Per-row filter: keep token j iff ``log_probs_j >= log_tau``; kept mass ``exp(log_mass)``.

    The filtered probability of a kept token is ``exp(log_probs_j - log_mass)``.
    Shapes (N,): ``log_tau`` in the log-probs' dtype, ``log_mass`` float64.
    """

    log_tau: Tensor
    log_mass: Tensor

    def take(self, rows: Tensor) -> "Thresholds":
        return Thresholds(self.log_tau[rows], self.log_mass[rows])


def _resolve(v: Tensor, top_p: float, top_k: int, full: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Thresholds from the ``w`` largest log-probs ``v`` (n, w), sorted descending.

    Returns (log_tau, log_mass, ok); ``ok`` is False where the window is too narrow to
    decide (the nucleus or a tie run may continue past it).
    """
    p = v.double().exp()
    ok = torch.ones(v.shape[0], dtype=torch.bool, device=v.device)
    tau = v[:, -1]
    if top_k:
        tau = v[:, top_k - 1]
        p = torch.where(v >= tau[:, None], p, 0.0)
    # Every token at or above the top-k (else the final) threshold must be in the window.
    bound = tau
    if top_p < 1.0:
        # Rows are normalised log-probs, so without top-k the total mass is one.
        q = p / p.sum(-1, keepdim=True) if top_k else p
        cum = q.cumsum(-1)
        n_keep = ((cum - q) < top_p).sum(-1, keepdim=True).clamp_min(1)
        tau = v.gather(1, n_keep - 1).squeeze(1)
        if not full:
            ok = cum.gather(1, n_keep - 1).squeeze(1) >= top_p
    if not full:
        ok = ok & (v[:, -1] < (bound if top_k else tau))
    mass = torch.where(v >= tau[:, None], v.double().exp(), 0.0).sum(-1)
    return tau, mass.log(), ok


def _histogram(lp: Tensor, top_p: float, ws: Workspace) -> tuple[Tensor, Tensor, Tensor]:
    """top-p thresholds for broad rows (n, K) without sorting them.

    Buckets each row's log-probs evenly on its [min, max] range, finds the bucket where
    the mass counted from the top reaches p, and orders only that bucket's tokens. The
    bucket masses are float32 sums when the log-probs are float32, so the crossing is
    exact up to float32 rounding of the cumulative mass (the order to which float32
    log-probs are normalised anyway). Returns (log_tau, log_mass, ok); ``ok`` is False
    where the crossing bucket is too crowded to sort cheaply.
    """
    n, vocab = lp.shape
    hi = lp.amax(-1, keepdim=True)
    lo = lp.amin(-1, keepdim=True)
    flat = (hi == lo).squeeze(1)  # all-equal rows: everything is kept
    scale = torch.where(hi > lo, (_BUCKETS - 1) / (hi - lo), 0.0)
    tmp = ws.get("hist_f", lp.shape, lp.dtype, lp.device)
    torch.sub(hi, lp, out=tmp).mul_(scale).clamp_(0, _BUCKETS - 1)
    bucket = ws.get("hist_i", lp.shape, torch.long, lp.device).copy_(tmp)  # 0: largest
    torch.exp(lp, out=tmp)
    hist = lp.new_zeros(n, _BUCKETS).scatter_add_(1, bucket, tmp)
    counts = lp.new_zeros(n, _BUCKETS).scatter_add_(1, bucket, lp.new_ones(1, 1).expand(n, vocab))
    cum = hist.double().cumsum(-1)
    crossing = (cum < top_p).sum(-1, keepdim=True).clamp_max(_BUCKETS - 1)
    above = torch.where(crossing > 0, cum.gather(1, (crossing - 1).clamp_min(0)), 0.0)
    count = counts.gather(1, crossing).squeeze(1).long()
    ok = (count <= _MAX_BUCKET) | flat
    small = count[count <= _MAX_BUCKET]
    width = max(int(small.max()), 1) if small.numel() else 1
    inside = torch.eq(bucket, crossing, out=ws.get("hist_b", lp.shape, torch.bool, lp.device))
    torch.where(inside, lp, lp.new_tensor(float("-inf")), out=tmp)
    v = tmp.topk(width, -1).values
    q = v.double().exp()
    before = above + q.cumsum(-1) - q
    n_keep = torch.minimum((before < top_p).sum(-1, keepdim=True), count[:, None]).clamp_min(1)
    tau = torch.where(hi == lo, hi, v.gather(1, n_keep - 1)).squeeze(1)
    mass = above.squeeze(1) + torch.where(v >= tau[:, None], q, 0.0).sum(-1)
    mass = torch.where(flat, vocab * hi.squeeze(1).double().exp(), mass)
    return tau, mass.log(), ok


def row_thresholds(log_probs: Tensor, top_p: float = 1.0, top_k: int = 0,
                   workspace: Workspace | None = None) -> Thresholds | None:
    """Filter thresholds for rows of normalised log-probabilities (N, K); None if no filter.

    Three stages, each only for the rows the previous one could not decide: the top
    ``max(64, top_k + 1)`` entries of each row; for top-p alone, a histogram of the
    row (:func:`_histogram`); a full sort.
    """
    n, vocab = log_probs.shape
    if not filter_active(top_p, top_k, vocab):
        return None
    top_k = top_k if 0 < top_k < vocab else 0
    log_tau = log_probs.new_empty(n)
    log_mass = torch.empty(n, dtype=torch.float64, device=log_probs.device)
    todo = torch.arange(n, device=log_probs.device)
    width = min(vocab, max(_FIRST_WINDOW, top_k + 1))
    stages = ["window", "histogram", "sort"] if top_p < 1.0 and not top_k else ["window", "sort"]
    for stage in stages:
        if not todo.numel():
            break
        rows = log_probs if todo.numel() == n else log_probs[todo]
        if stage == "histogram":
            tau, mass, ok = _histogram(rows, top_p, workspace or Workspace())
        else:
            full = stage == "sort" or width >= vocab
            v = rows.sort(-1, descending=True).values if full else rows.topk(width, -1).values
            tau, mass, ok = _resolve(v, top_p, top_k, full)
        log_tau[todo[ok]] = tau[ok]
        log_mass[todo[ok]] = mass[ok]
        todo = todo[~ok]
    return Thresholds(log_tau, log_mass)


def filtered_cdf(log_probs: Tensor, thresholds: Thresholds | None,
                 workspace: Workspace | None = None) -> Tensor:
    """Unnormalised float64 cumulative weights of the filtered rows (N, K) -> (N, K)."""
    ws = workspace or Workspace()
    w = ws.get("cdf", log_probs.shape, torch.float64, log_probs.device).copy_(log_probs).exp_()
    if thresholds is not None:
        drop = torch.lt(log_probs, thresholds.log_tau[:, None],
                        out=ws.get("cdf_b", log_probs.shape, torch.bool, log_probs.device))
        w.masked_fill_(drop, 0.0)
    return w.cumsum_(-1)
