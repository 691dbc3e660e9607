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
_LOG_RANGE = 80.0  # buckets span at most this far below a row's largest log-prob


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
    Shapes (N,): ``log_tau`` in the log-probs' dtype, ``log_mass`` float64. Where
    ``windowed`` is True every kept token is among the row's ``window_ids`` (N, w) with
    log-probs ``window_lp`` (N, w), so a draw needs only the window, not the row.
    """

    log_tau: Tensor
    log_mass: Tensor
    window_lp: Tensor | None = None
    window_ids: Tensor | None = None
    windowed: Tensor | None = None

    def take(self, rows: Tensor) -> "Thresholds":
        if self.windowed is None:
            return Thresholds(self.log_tau[rows], self.log_mass[rows])
        return Thresholds(self.log_tau[rows], self.log_mass[rows], self.window_lp[rows],
                          self.window_ids[rows], self.windowed[rows])


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

    Buckets each row's log-probs evenly between its maximum and its minimum (at most
    ``_LOG_RANGE`` below), finds the bucket where the mass counted from the top reaches
    p, and orders only that bucket's tokens. Bucket masses are summed in the log-probs'
    dtype, so with float32 the crossing is exact up to float32 rounding of the
    cumulative mass (the order to which float32 log-probs are normalised anyway).
    Returns (log_tau, log_mass, ok); ``ok`` is False where the crossing bucket may hold
    more than ``_MAX_BUCKET`` tokens (those rows are sorted instead).
    """
    n, vocab = lp.shape
    hi = lp.amax(-1, keepdim=True)
    lo = torch.maximum(lp.amin(-1, keepdim=True), hi - _LOG_RANGE)  # -inf entries (a mask)
    flat = (hi == lo).squeeze(1)  # all-equal rows: everything is kept
    if bool(flat.all()):  # e.g. an untrained model with a zero output layer
        return hi.squeeze(1), (vocab * hi.squeeze(1).double().exp()).log(), flat
    scale = torch.where(hi > lo, (_BUCKETS - 1) / (hi - lo), 0.0)
    tmp = ws.get("hist_f", lp.shape, lp.dtype, lp.device)
    torch.sub(hi, lp, out=tmp).mul_(scale).clamp_(0, _BUCKETS - 1)
    bucket = ws.get("hist_i", lp.shape, torch.long, lp.device).copy_(tmp)  # 0: largest
    torch.exp(lp, out=tmp)
    hist = lp.new_zeros(n, _BUCKETS).scatter_add_(1, bucket, tmp).double()
    cum = hist.cumsum(-1)
    crossing = (cum < top_p).sum(-1, keepdim=True).clamp_max(_BUCKETS - 1)
    above = torch.where(crossing > 0, cum.gather(1, (crossing - 1).clamp_min(0)), 0.0)
    # Members of bucket c have log-prob above hi - (c + 1) / scale: bound their number.
    floor = (hi.double() - (crossing + 1) / scale.double().clamp_min(1e-300)).exp()
    bound = 1.01 * hist.gather(1, crossing) / floor + 1.0
    ok = (bound.squeeze(1) <= _MAX_BUCKET) | flat
    crossing = torch.where((ok & ~flat)[:, None], crossing, -1)  # -1 selects nothing
    inside = torch.eq(bucket, crossing, out=ws.get("hist_b", lp.shape, torch.bool, lp.device))
    row, col = inside.nonzero().unbind(1)  # row-major: grouped by row
    vals = lp[row, col]
    count = torch.bincount(row, minlength=n)
    order = vals.sort(descending=True, stable=True).indices
    order = order[row[order].sort(stable=True).indices]  # by row, then by value
    row, vals = row[order], vals[order]
    slot = torch.arange(row.numel(), device=lp.device) - (count.cumsum(0) - count)[row]
    width = max(int(count.max()), 1) if row.numel() else 1
    v = lp.new_full((n, width), float("-inf"))
    v[row, slot] = vals
    q = v.double().exp()
    before = above + q.cumsum(-1) - q
    n_keep = torch.minimum((before < top_p).sum(-1, keepdim=True), count[:, None]).clamp_min(1)
    tau = torch.where(flat[:, None], hi, v.gather(1, n_keep - 1)).squeeze(1)
    mass = above.squeeze(1) + torch.where(v >= tau[:, None], q, 0.0).sum(-1)
    mass = torch.where(flat, vocab * hi.squeeze(1).double().exp(), mass)
    return tau, mass.log(), ok


def row_thresholds(log_probs: Tensor, top_p: float = 1.0, top_k: int = 0,
                   workspace: Workspace | None = None) -> Thresholds | None:
    """Filter thresholds for rows of normalised log-probabilities (N, K); None if no filter.

    Three stages, each only for the rows the previous one could not decide: the top
    ``max(64, top_k + 1)`` entries of each row (skipped for top-p rows whose largest
    probability shows the window cannot hold mass p); for top-p alone, a histogram of
    the row (:func:`_histogram`); a full sort.
    """
    n, vocab = log_probs.shape
    if not filter_active(top_p, top_k, vocab):
        return None
    top_k = top_k if 0 < top_k < vocab else 0
    width = min(vocab, max(_FIRST_WINDOW, top_k + 1))
    full = width >= vocab
    device = log_probs.device
    log_tau = log_probs.new_empty(n)
    log_mass = torch.empty(n, dtype=torch.float64, device=device)
    window_lp = log_probs.new_full((n, width), float("-inf"))
    window_ids = torch.zeros((n, width), dtype=torch.long, device=device)
    windowed = torch.zeros(n, dtype=torch.bool, device=device)
    histogram = top_p < 1.0 and not top_k
    if histogram and not full:
        reach = width * log_probs.amax(-1).double().exp() >= top_p
        tried = reach.nonzero().squeeze(1)
    else:
        tried = torch.arange(n, device=device)
    if tried.numel():
        rows = log_probs if tried.numel() == n else log_probs[tried]
        top = rows.sort(-1, descending=True) if full else rows.topk(width, -1)
        tau, mass, ok = _resolve(top.values, top_p, top_k, full)
        window_lp[tried], window_ids[tried] = top.values, top.indices
        log_tau[tried], log_mass[tried], windowed[tried] = tau, mass, ok
    todo = (~windowed).nonzero().squeeze(1)
    for stage in ["histogram", "sort"] if histogram else ["sort"]:
        if not todo.numel():
            break
        rows = log_probs if todo.numel() == n else log_probs[todo]
        if stage == "histogram":
            tau, mass, done = _histogram(rows, top_p, workspace or Workspace())
        else:
            tau, mass, done = _resolve(rows.sort(-1, descending=True).values, top_p, top_k, True)
        log_tau[todo[done]] = tau[done]
        log_mass[todo[done]] = mass[done]
        todo = todo[~done]
    return Thresholds(log_tau, log_mass, window_lp, window_ids, windowed)


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
