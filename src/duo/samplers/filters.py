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

from duo.utils.chunks import row_chunks

from .blocks import BLOCK, block_sums
from .workspace import Workspace

NUCLEI = ("exact", "approx")
# Buckets per factor of two in probability: 2 ** bits ("exact" sorts the crossing
# bucket's tokens; "approx" keeps that whole bucket, so it uses narrower ones).
_MANTISSA_BITS = {"exact": 4, "approx": 5}
_OCTAVES = 49  # factors of two of probability counted first, down to 2^-48
_MAX_MEMBERS = 4096  # a crossing bucket this crowded is checked for an all-tied row


def check_filter(top_p: float, top_k: int) -> None:
    """One-line errors for bad filter settings."""
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p!r} must lie in (0, 1]; use 1.0 to disable nucleus sampling")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k={top_k!r} must be an integer >= 0; use 0 to disable it")


def check_nucleus(nucleus: str) -> None:
    if nucleus not in NUCLEI:
        raise ValueError(f"unknown nucleus {nucleus!r}; valid: {', '.join(NUCLEI)}")


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
    ``block_mass`` (N, ceil(K / BLOCK)), when present, holds the unfiltered probability
    mass of each block of tokens (:mod:`duo.samplers.blocks`), kept from the pass that
    found the thresholds so that a draw can propose a token without another pass.
    """

    log_tau: Tensor
    log_mass: Tensor
    window_lp: Tensor | None = None
    window_ids: Tensor | None = None
    windowed: Tensor | None = None
    block_mass: Tensor | None = None

    def take(self, rows: Tensor) -> "Thresholds":
        def sub(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[rows]

        return Thresholds(self.log_tau[rows], self.log_mass[rows], sub(self.window_lp),
                          sub(self.window_ids), sub(self.windowed), sub(self.block_mass))


def _resolve_top_k(v: Tensor, top_p: float, top_k: int, full: bool) -> tuple[Tensor, Tensor, Tensor]:
    """top-k (then top-p) thresholds from the ``w > top_k`` largest log-probs ``v`` (n, w),
    sorted descending (``full``: the whole row).

    Returns (log_tau, log_mass, ok); ``ok`` is False where a tie run at the top-k
    threshold may continue past the window (those rows need the whole row).
    """
    tau_k = v[:, top_k - 1]
    in_k = v >= tau_k[:, None]
    p = torch.where(in_k, v.double().exp(), 0.0)
    tau = tau_k
    if top_p < 1.0:
        q = p / p.sum(-1, keepdim=True)
        before = q.cumsum(-1) - q
        # Only top-k tokens count: with p within rounding of 1 the zero-weight tail
        # would otherwise pass ``before < p`` too.
        n_keep = torch.minimum((before < top_p).sum(-1, keepdim=True), in_k.sum(-1, keepdim=True))
        tau = v.gather(1, n_keep.clamp_min(1) - 1).squeeze(1)
    ok = torch.ones_like(tau_k, dtype=torch.bool) if full else v[:, -1] < tau_k
    mass = torch.where(v >= tau[:, None], p, 0.0).sum(-1)
    return tau, mass.log(), ok


def _members(bucket: Tensor, crossing: Tensor, ws: Workspace) -> tuple[Tensor, Tensor]:
    """(row, col) of the entries of ``bucket`` (r, K) equal to their row's ``crossing``
    (r, 1), row-major. The few hits are found among 8-byte words of the boolean mask,
    which scans eight times fewer elements than ``nonzero`` on the mask itself."""
    r, vocab = bucket.shape
    n = r * vocab
    mask = ws.get("inside", (8 * -(-n // 8),), torch.bool, bucket.device)
    mask[n:] = False
    torch.eq(bucket, crossing, out=mask[:n].view(r, vocab))
    hit = mask.view(torch.int64).nonzero().squeeze(1)
    pos = (8 * hit[:, None] + torch.arange(8, device=bucket.device)).flatten()
    pos = pos[mask[pos]]
    return pos // vocab, pos % vocab


def _tied_rows(lp: Tensor, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Which of ``rows`` of ``lp`` (r, K) have all finite entries equal (an untrained
    model: uniform, perhaps with a -inf mask token). Returns (tied, log_tau, log_mass),
    (r,) each; the last two are meaningful where ``tied``."""
    tied = torch.zeros(lp.shape[0], dtype=torch.bool, device=lp.device)
    tau = lp.new_zeros(lp.shape[0])
    mass = torch.ones(lp.shape[0], dtype=torch.float64, device=lp.device)
    if rows.numel():
        sub = lp[rows]
        finite = sub > float("-inf")
        tau[rows] = sub.amax(-1)
        tied[rows] = tau[rows] == torch.where(finite, sub, float("inf")).amin(-1)
        mass[rows] = finite.sum(-1) * tau[rows].double().exp()
    return tied, tau, mass.log()


def _crossing_thresholds(lp: Tensor, row: Tensor, col: Tensor, above: Tensor, top_p: float
                         ) -> tuple[Tensor, Tensor]:
    """Threshold inside each row's crossing bucket, whose tokens are ``lp[row, col]``
    (grouped by row) and whose mass above is ``above`` (r,) float64. Sorts only those
    tokens. Returns (log_tau, log_mass) (r,); a row with no tokens keeps everything."""
    r = lp.shape[0]
    vals = lp[row, col]
    count = torch.bincount(row, minlength=r)
    order = vals.sort(descending=True, stable=True).indices
    order = order[row[order].sort(stable=True).indices]  # by row, then by value
    row, vals = row[order], vals[order]
    slot = torch.arange(row.numel(), device=lp.device) - (count.cumsum(0) - count)[row]
    v = lp.new_full((r, max(int(count.max()), 1) if row.numel() else 1), float("-inf"))
    v[row, slot] = vals
    q = v.double().exp()
    before = above[:, None] + q.cumsum(-1) - q
    n_keep = torch.minimum((before < top_p).sum(-1, keepdim=True), count[:, None]).clamp_min(1)
    # No tokens: the float32 bucket masses never reached p, so everything is kept.
    tau = torch.where(count[:, None] > 0, v.gather(1, n_keep - 1), float("-inf")).squeeze(1)
    return tau, (above + torch.where(v >= tau[:, None], q, 0.0).sum(-1)).log()


def _top_p_chunk(lp: Tensor, top_p: float, ws: Workspace, nucleus: str) -> tuple[Tensor, Tensor, Tensor]:
    """top-p thresholds for rows of normalised log-probs (r, K) without sorting the rows.

    Every token goes to a bucket given by the top bits of its float32 probability
    (exponent and ``_MANTISSA_BITS[nucleus]`` mantissa bits: buckets 4.4% ("exact") or
    2.2% ("approx") wide, ordered like the probabilities). One scatter-add gives each
    bucket's mass; counted from the top, the bucket where the mass reaches p holds the
    threshold. "exact" sorts only that bucket's tokens (a few per thousand in a broad
    row): exact up to float32 rounding of the bucket masses (below float32 log-softmax's
    own normalisation error). "approx" keeps the whole bucket, a superset of the exact
    nucleus (:func:`nucleus_tv_bound`), and skips the pass that finds its tokens.
    Returns (log_tau, log_mass) (r,) and the rows' block masses (r, nb), a cheap extra
    reduction while the probabilities are in the cache.
    """
    r, vocab = lp.shape
    device = lp.device
    bits = _MANTISSA_BITS[nucleus]
    buckets = 1 << (8 + bits)  # non-negative float32 patterns >> (23 - bits): [0, 2) fills
    # the lower half; inf and NaN land in the upper half instead of out of range.
    src = lp
    if lp.dtype not in (torch.float32, torch.float64):  # bfloat16 masses would misplace the crossing
        src = ws.get("lp32", lp.shape, torch.float32, device).copy_(lp)
    p = torch.exp(src, out=ws.get("p", lp.shape, src.dtype, device))
    blocks = block_sums(p)
    # Before the scatter: a NaN with its sign bit set would give a negative bucket.
    if bool(blocks.sum(-1).isnan().any()):
        raise ValueError("the denoiser returned NaN log-probabilities; check the model and its inputs")
    p32 = p if p.dtype == torch.float32 else ws.get("p32", lp.shape, torch.float32, device).copy_(p)
    # Widen, then shift in place: a shift of int32 into an int64 ``out`` is ~3x slower.
    bucket = ws.get("bucket", lp.shape, torch.long, device).copy_(p32.view(torch.int32))
    bucket.bitwise_right_shift_(23 - bits)
    hist = ws.get("hist", (r, buckets), p.dtype, device).zero_().scatter_add_(1, bucket, p)
    # Count from the top only over p in [2^-48, 2) (normalised rows have no p >= 2): a
    # sixth of the buckets. Rows that need the mass below 2^-48 use every bucket.
    hi = 128 << bits
    lo = hi - (_OCTAVES << bits)
    from_top = hist[:, lo:hi].double().flip(-1).cumsum_(-1)
    j = (from_top < top_p).sum(-1, keepdim=True)
    if bool((j >= hi - lo).any()):
        lo, hi = 0, buckets
        from_top = hist.double().flip(-1).cumsum_(-1)
        j = (from_top < top_p).sum(-1, keepdim=True)
    j = j.clamp_max_(hi - lo - 1)
    crossing = hi - 1 - j  # the bucket where the mass from the top reaches p
    if nucleus == "approx":
        # Keep the crossing bucket whole: p >= the smallest float32 in it.
        low = (crossing.squeeze(1) << (23 - bits)).to(torch.int32).view(torch.float32)
        tau = torch.where(low > 0, low.double().log(), float("-inf")).to(log_tau_dtype(lp.dtype, nucleus))
        return tau, from_top.gather(1, j).squeeze(1).log(), blocks
    above = torch.where(j > 0, from_top.gather(1, (j - 1).clamp_min(0)), 0.0).squeeze(1)
    row, col = _members(bucket, crossing, ws)
    count = torch.bincount(row, minlength=r)
    tied, tied_tau, tied_mass = _tied_rows(lp, (count > _MAX_MEMBERS).nonzero().squeeze(1))
    if bool(tied.any()):  # sorting a whole tied row would be slow and pointless: keep all
        keep = ~tied[row]
        row, col = row[keep], col[keep]
    # Per chunk: the padded (rows, widest crossing bucket) sort stays bounded.
    tau, log_mass = _crossing_thresholds(lp, row, col, above, top_p)
    return torch.where(tied, tied_tau, tau), torch.where(tied, tied_mass, log_mass), blocks


def log_tau_dtype(dtype: torch.dtype, nucleus: str) -> torch.dtype:
    """dtype of the thresholds: the log-probs' ("approx" on bfloat16 rows: float32, its
    thresholds are bucket edges, not log-probs)."""
    return dtype if nucleus == "exact" or dtype in (torch.float32, torch.float64) else torch.float32


def _top_p_thresholds(lp: Tensor, top_p: float, ws: Workspace, nucleus: str) -> Thresholds:
    """top-p thresholds of rows of normalised log-probs (N, K), in cache-sized chunks of
    rows (:func:`_top_p_chunk`), with the rows' block masses for the draw."""
    n, vocab = lp.shape
    log_tau = torch.empty(n, dtype=log_tau_dtype(lp.dtype, nucleus), device=lp.device)
    log_mass = torch.empty(n, dtype=torch.float64, device=lp.device)
    blocks = []
    for rows in row_chunks(n, vocab, lp.device):
        log_tau[rows], log_mass[rows], mass = _top_p_chunk(lp[rows], top_p, ws, nucleus)
        blocks.append(mass)
    block_mass = torch.cat(blocks) if blocks else lp.new_zeros((0, -(-vocab // BLOCK)))
    return Thresholds(log_tau, log_mass, block_mass=block_mass)


def nucleus_tv_bound(log_probs: Tensor, top_p: float) -> Tensor:
    """Per row of normalised log-probs (N, K): an upper bound on the total-variation
    distance between ``nucleus="approx"`` and the exact top-p filter.

    The approximate kept set contains the exact one, so the distance is one minus the
    ratio of their masses, at most ``(m - top_p) / m`` with ``m`` the approximate kept
    mass: the part of the crossing bucket (width 1/S in log-probability) past ``top_p``.
    """
    th = row_thresholds(log_probs, top_p, nucleus="approx")
    if th is None:
        return torch.zeros(log_probs.shape[0], dtype=torch.float64, device=log_probs.device)
    kept = th.log_mass.exp()
    return ((kept - top_p) / kept).clamp_min(0.0)


def row_thresholds(log_probs: Tensor, top_p: float = 1.0, top_k: int = 0,
                   workspace: Workspace | None = None, nucleus: str = "exact") -> Thresholds | None:
    """Filter thresholds for rows of normalised log-probabilities (N, K); None if no filter.

    top-k (alone or before top-p): the top ``top_k + 1`` entries of each row decide the
    threshold, and the draw needs only them; rows with ties across the window edge are
    sorted. top-p alone: a bucketed histogram of each row (:func:`_top_p_thresholds`),
    exact, or with ``nucleus="approx"`` the whole crossing bucket kept (see
    :func:`nucleus_tv_bound`); top-k windows are always exact.
    """
    check_nucleus(nucleus)
    n, vocab = log_probs.shape
    if not filter_active(top_p, top_k, vocab):
        return None
    ws = workspace or Workspace()
    top_k = top_k if 0 < top_k < vocab else 0
    if not top_k:
        return _top_p_thresholds(log_probs, top_p, ws, nucleus)
    width = min(vocab, top_k + 1)
    full = width >= vocab
    top = log_probs.sort(-1, descending=True) if full else log_probs.topk(width, -1)
    log_tau, log_mass, windowed = _resolve_top_k(top.values, top_p, top_k, full)
    todo = (~windowed).nonzero().squeeze(1)
    if todo.numel():
        tau, mass, _ = _resolve_top_k(log_probs[todo].sort(-1, descending=True).values, top_p, top_k, True)
        log_tau[todo], log_mass[todo] = tau, mass
    return Thresholds(log_tau, log_mass, top.values, top.indices, windowed)
