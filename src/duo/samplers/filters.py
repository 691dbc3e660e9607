"""Top-k and nucleus (top-p) filtering of a predicted distribution.

Both filters keep the tokens whose probability reaches a per-row threshold ``tau``, so
ties at the boundary are all kept and the result does not depend on sort order:

- top-k: ``tau`` is the k-th largest probability;
- top-p: in decreasing order, ``tau`` is the probability of the first token at which the
  cumulative mass reaches ``p`` (so the most likely token is always kept);
- both: top-k first, then top-p on the renormalised top-k distribution.

:func:`top_k_filter` / :func:`top_p_filter` are the dense reference on (B, L, K).
:func:`row_thresholds` finds the same thresholds from log-probabilities without sorting
whole rows (a partial top-k; for top-p a bucketed histogram of each row, sorting only
the bucket that holds the threshold), so the samplers never build a filtered
(B, L, K) tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .workspace import Workspace

_MANTISSA_BITS = 4  # 16 buckets per factor of two in probability
_BUCKETS = 1 << (8 + _MANTISSA_BITS - 1)  # float32 bit patterns of [0, 2) >> (23 - 4)
_MAX_MEMBERS = 4096  # a crossing bucket this crowded is checked for an all-tied row
_CPU_CHUNK = 1 << 21  # entries per chunk of rows on CPU (up to 16 MB per buffer)
_DEVICE_CHUNK = 1 << 25


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


def row_chunks(n: int, vocab: int, device: torch.device) -> list[slice]:
    """Row offsets for processing (n, vocab) in chunks that stay in the CPU cache.

    On CPU a pass over a chunk of about two million entries runs from the cache, several
    times faster than the same pass over a whole (B * L, K) tensor; elsewhere one chunk
    of up to 32M entries keeps the number of kernel launches small.
    """
    budget = _CPU_CHUNK if torch.device(device).type == "cpu" else _DEVICE_CHUNK
    rows = max(1, budget // vocab)
    return [slice(i, min(i + rows, n)) for i in range(0, n, rows)]


def _members(bucket: Tensor, crossing: Tensor, ws: Workspace) -> tuple[Tensor, Tensor]:
    """(row, col) of the entries of ``bucket`` (r, K) equal to their row's ``crossing``
    (r, 1), row-major. The few hits are found among 8-byte words of the boolean mask,
    which scans eight times fewer elements than ``nonzero`` on the mask itself."""
    r, vocab = bucket.shape
    n = r * vocab
    words = -(-n // 8)
    flat = ws.get("inside", (8 * words,), torch.bool, bucket.device)
    flat[n:] = False
    torch.eq(bucket, crossing, out=flat[:n].view(r, vocab))
    hit = flat.view(torch.int64).nonzero().squeeze(1)
    pos = (8 * hit[:, None] + torch.arange(8, device=bucket.device)).flatten()
    pos = pos[flat[pos]]
    return pos // vocab, pos % vocab


def _top_p_chunk(lp: Tensor, top_p: float, ws: Workspace) -> tuple[Tensor, Tensor]:
    """Exact top-p thresholds for rows of normalised log-probs (r, K), no sort of the rows.

    Every token goes to a bucket given by the top bits of its float32 probability
    (exponent and :data:`_MANTISSA_BITS` mantissa bits: buckets about 6% wide, ordered
    like the probabilities). One scatter-add gives each bucket's mass; counted from the
    top, the bucket where the mass reaches p holds the threshold, and only its tokens
    (a few per thousand in a broad row) are sorted. Returns (log_tau, log_mass) (r,).
    """
    r, vocab = lp.shape
    device = lp.device
    src = lp
    if lp.dtype not in (torch.float32, torch.float64):  # bfloat16 masses would misplace the crossing
        src = ws.get("lp32", lp.shape, torch.float32, device).copy_(lp)
    p = torch.exp(src, out=ws.get("p", lp.shape, src.dtype, device))
    p32 = p if p.dtype == torch.float32 else ws.get("p32", lp.shape, torch.float32, device).copy_(p)
    bucket = ws.get("bucket", lp.shape, torch.long, device)
    torch.bitwise_right_shift(p32.view(torch.int32), 23 - _MANTISSA_BITS, out=bucket)
    hist = ws.get("hist", (r, _BUCKETS), p.dtype, device).zero_().scatter_add_(1, bucket, p)
    from_top = hist.double().flip(-1).cumsum(-1)
    j = (from_top < top_p).sum(-1, keepdim=True).clamp_max(_BUCKETS - 1)
    above = torch.where(j > 0, from_top.gather(1, (j - 1).clamp_min(0)), 0.0)  # (r, 1)
    row, col = _members(bucket, _BUCKETS - 1 - j, ws)
    count = torch.bincount(row, minlength=r)
    flat = torch.zeros(r, dtype=torch.bool, device=device)
    crowded = (count > _MAX_MEMBERS).nonzero().squeeze(1)
    if crowded.numel():  # e.g. an untrained model's uniform rows: all tied, all kept
        sub = lp[crowded]
        flat[crowded] = sub.amax(-1) == sub.amin(-1)
        if bool(flat.any()):
            keep = ~flat[row]
            row, col = row[keep], col[keep]
            count = torch.where(flat, 0, count)
    vals = lp[row, col]
    order = vals.sort(descending=True, stable=True).indices
    order = order[row[order].sort(stable=True).indices]  # by row, then by value
    row, vals = row[order], vals[order]
    slot = torch.arange(row.numel(), device=device) - (count.cumsum(0) - count)[row]
    width = max(int(count.max()), 1) if row.numel() else 1
    v = lp.new_full((r, width), float("-inf"))
    v[row, slot] = vals
    q = v.double().exp()
    before = above + q.cumsum(-1) - q
    n_keep = torch.minimum((before < top_p).sum(-1, keepdim=True), count[:, None]).clamp_min(1)
    # A row whose float32 bucket masses never reach p keeps everything (tau = -inf).
    tau = torch.where(count[:, None] > 0, v.gather(1, n_keep - 1), float("-inf")).squeeze(1)
    mass = above.squeeze(1) + torch.where(v >= tau[:, None], q, 0.0).sum(-1)
    if bool(flat.any()):
        hi = lp[:, 0]  # a flat row is constant
        tau = torch.where(flat, hi, tau)
        mass = torch.where(flat, vocab * hi.double().exp(), mass)
    return tau, mass.log()


def row_thresholds(log_probs: Tensor, top_p: float = 1.0, top_k: int = 0,
                   workspace: Workspace | None = None) -> Thresholds | None:
    """Filter thresholds for rows of normalised log-probabilities (N, K); None if no filter.

    top-k (alone or before top-p): the top ``top_k + 1`` entries of each row decide the
    threshold, and the draw needs only them; rows with ties across the window edge are
    sorted. top-p alone: a bucketed histogram of each row (:func:`_top_p_chunk`),
    computed in cache-sized chunks of rows.
    """
    n, vocab = log_probs.shape
    if not filter_active(top_p, top_k, vocab):
        return None
    ws = workspace or Workspace()
    device = log_probs.device
    top_k = top_k if 0 < top_k < vocab else 0
    if not top_k:
        log_tau = log_probs.new_empty(n)
        log_mass = torch.empty(n, dtype=torch.float64, device=device)
        for rows in row_chunks(n, vocab, device):
            log_tau[rows], log_mass[rows] = _top_p_chunk(log_probs[rows], top_p, ws)
        return Thresholds(log_tau, log_mass)
    width = min(vocab, top_k + 1)
    full = width >= vocab
    top = log_probs.sort(-1, descending=True) if full else log_probs.topk(width, -1)
    log_tau, log_mass, windowed = _resolve(top.values, top_p, top_k, full)
    todo = (~windowed).nonzero().squeeze(1)
    if todo.numel():
        tau, mass, _ = _resolve(log_probs[todo].sort(-1, descending=True).values, top_p, top_k, True)
        log_tau[todo], log_mass[todo] = tau, mass
    return Thresholds(log_tau, log_mass, top.values, top.indices, windowed)
