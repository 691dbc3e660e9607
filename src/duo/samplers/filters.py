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

from duo.utils.chunks import DEVICE_CHUNK

from .blocks import BLOCK, block_sums
from .workspace import Workspace

NUCLEI = ("exact", "approx")
# Buckets per factor of two in probability: 2 ** bits ("exact" sorts the crossing
# bucket's tokens; "approx" keeps that whole bucket, so it uses narrower ones).
_MANTISSA_BITS = {"exact": 4, "approx": 5}
_OCTAVES = 49  # factors of two of probability counted first, down to 2^-48
_MAX_MEMBERS = 4096  # a crossing bucket this crowded is checked for an all-tied row
_LOG2E = 1.4426950408889634
# Entries per chunk of the top-p histogram on CPU (elsewhere duo.utils.chunks'): its
# float32 probabilities and int64 buckets, 12 bytes an entry, then stay in the cache
# between passes; with duo.utils.chunks' 2M-entry chunks "approx" was ~15% slower.
_CPU_TOP_P_CHUNK = 1 << 20
_HIST_ENTRIES = 1 << 21  # "approx": histograms read at once (rows x buckets)


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


def _histogram(lp: Tensor, hist: Tensor, blocks: Tensor, bits: int, ws: Workspace, fast_exp: bool) -> Tensor:
    """Fill ``hist`` (r, 2 ** (8 + bits)) with the probability mass of rows of normalised
    log-probs (r, K) per bucket, and ``blocks`` (r, nb) with their block masses (a cheap
    extra reduction while the probabilities are in the cache). A token's bucket is the
    top bits of its float32 probability (exponent and ``bits`` mantissa bits), so buckets
    are ordered like the probabilities; ``fast_exp`` computes them through ``exp2``.
    Returns the buckets (r, K) int64, a workspace view."""
    device = lp.device
    src = lp
    if lp.dtype not in (torch.float32, torch.float64):  # bfloat16 masses would misplace the crossing
        src = ws.get("lp32", lp.shape, torch.float32, device).copy_(lp)
    p = ws.get("p", lp.shape, src.dtype, device)
    if fast_exp:
        # exp(x) as 2^(x log2 e): float32 exp2 is ~3x faster than exp on CPU, so the two
        # passes cost 40% less than one exp, but log2 e and the product are rounded to
        # float32: masses err by ~1e-7 relatively, mostly in one direction.
        p = torch.exp2(torch.mul(src, _LOG2E, out=p), out=p)
    else:
        p = torch.exp(src, out=p)
    block_sums(p, out=blocks)
    # Before the scatter: a NaN with its sign bit set would give a negative bucket.
    if bool(blocks.isnan().any()):
        raise ValueError("the denoiser returned NaN log-probabilities; check the model and its inputs")
    p32 = p if p.dtype == torch.float32 else ws.get("p32", lp.shape, torch.float32, device).copy_(p)
    # Widen, then shift in place: a shift of int32 into an int64 ``out`` is slower.
    bucket = ws.get("bucket", lp.shape, torch.long, device).copy_(p32.view(torch.int32))
    bucket.bitwise_right_shift_(23 - bits)
    hist.zero_().scatter_add_(1, bucket, p)
    return bucket


def _crossing(hist: Tensor, top_p: float, bits: int) -> tuple[Tensor, Tensor, Tensor]:
    """The bucket where each row's mass, counted from the top, reaches ``top_p``.

    ``hist`` (r, buckets) from :func:`_histogram`. Returns (crossing, mass above it, mass
    down to its lower edge), (r,) each, the masses float64.
    """
    buckets = hist.shape[1]
    # Count only over p in [2^-48, 2) (normalised rows have no p >= 2): a sixth of the
    # buckets. Rows that need the mass below 2^-48 use every bucket.
    hi = 128 << bits
    lo = hi - (_OCTAVES << bits)
    for lo, hi in ((lo, hi), (0, buckets)):
        # Mass from the top as the range's total less a cumulative sum from the bottom:
        # flipping the (r, buckets) float64 sums took ~6% of the whole top-p pass.
        below = torch.cumsum(hist[:, lo:hi], -1, dtype=torch.float64)
        total = below[:, -1:]
        # Buckets, counted from the top, before the mass reaches top_p.
        j = (below[:, :-1] > total - top_p).sum(-1, keepdim=True) + (total < top_p)
        if not bool((j >= hi - lo).any()):
            break
    k = (hi - lo - 1 - j).clamp_min_(0)  # the crossing bucket, from ``lo``
    above = total - below.gather(1, k)
    kept = total - torch.where(k > 0, below.gather(1, (k - 1).clamp_min(0)), 0.0)
    return (lo + k).squeeze(1), above.squeeze(1), kept.squeeze(1)


def _exact_in_chunk(lp: Tensor, hist: Tensor, bucket: Tensor, top_p: float, ws: Workspace
                    ) -> tuple[Tensor, Tensor]:
    """Exact top-p thresholds of rows (r, K) from their histogram and buckets
    (:func:`_histogram`): sorts only the crossing bucket's tokens (a few per thousand in a
    broad row). Exact up to float32 rounding of the bucket masses (below float32
    log-softmax's own normalisation error). Returns (log_tau, log_mass) (r,)."""
    r = lp.shape[0]
    crossing, above, _ = _crossing(hist, top_p, _MANTISSA_BITS["exact"])
    row, col = _members(bucket, crossing[:, None], ws)
    count = torch.bincount(row, minlength=r)
    tied, tied_tau, tied_mass = _tied_rows(lp, (count > _MAX_MEMBERS).nonzero().squeeze(1))
    if bool(tied.any()):  # sorting a whole tied row would be slow and pointless: keep all
        keep = ~tied[row]
        row, col = row[keep], col[keep]
    # Per chunk: the padded (rows, widest crossing bucket) sort stays bounded.
    tau, log_mass = _crossing_thresholds(lp, row, col, above, top_p)
    return torch.where(tied, tied_tau, tau), torch.where(tied, tied_mass, log_mass)


def log_tau_dtype(dtype: torch.dtype, nucleus: str) -> torch.dtype:
    """dtype of the thresholds: the log-probs' ("approx" on bfloat16 rows: float32, its
    thresholds are bucket edges, not log-probs)."""
    return dtype if nucleus == "exact" or dtype in (torch.float32, torch.float64) else torch.float32


def _top_p_thresholds(lp: Tensor, top_p: float, ws: Workspace, nucleus: str) -> Thresholds:
    """top-p thresholds of rows of normalised log-probs (N, K) without sorting the rows,
    with the rows' block masses for the draw.

    Each chunk of rows gets a bucketed histogram of its probabilities
    (:func:`_histogram`, buckets 4.4% ("exact") or 2.2% ("approx") wide); counted from
    the top, the bucket where the mass reaches p holds the threshold. "exact" sorts that
    bucket's tokens, chunk by chunk (:func:`_exact_in_chunk`). "approx" keeps the whole
    bucket, a superset of the exact nucleus (:func:`nucleus_tv_bound`): it needs no pass
    to find the bucket's tokens, and reads the thresholds off several chunks'
    histograms at once (fewer small operations per row).
    """
    n, vocab = lp.shape
    device = lp.device
    bits = _MANTISSA_BITS[nucleus]
    buckets = 1 << (8 + bits)  # non-negative float32 patterns >> (23 - bits): [0, 2) fills
    # the lower half; inf and NaN land in the upper half instead of out of range.
    mass_dtype = torch.float64 if lp.dtype == torch.float64 else torch.float32
    block_mass = torch.empty((n, -(-vocab // BLOCK)), dtype=mass_dtype, device=device)
    log_tau = torch.empty(n, dtype=log_tau_dtype(lp.dtype, nucleus), device=device)
    log_mass = torch.empty(n, dtype=torch.float64, device=device)
    exact = nucleus == "exact"
    step = max(1, (_CPU_TOP_P_CHUNK if device.type == "cpu" else DEVICE_CHUNK) // vocab)
    group = step if exact else max(1, _HIST_ENTRIES // (buckets * step)) * step
    for start in range(0, n, group):
        rows_g = slice(start, min(start + group, n))
        hist = ws.get("hist", (rows_g.stop - start, buckets), mass_dtype, device)
        for first in range(start, rows_g.stop, step):
            rows = slice(first, min(first + step, rows_g.stop))
            h = hist[first - start:rows.stop - start]
            bucket = _histogram(lp[rows], h, block_mass[rows], bits, ws, fast_exp=not exact)
            if exact:
                log_tau[rows], log_mass[rows] = _exact_in_chunk(lp[rows], h, bucket, top_p, ws)
        if not exact:
            crossing, _, kept = _crossing(hist, top_p, bits)
            # Keep the crossing bucket whole: p >= the smallest float32 in it.
            low = (crossing << (23 - bits)).to(torch.int32).view(torch.float32)
            log_tau[rows_g] = torch.where(low > 0, low.double().log(), float("-inf"))
            log_mass[rows_g] = kept.log()
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
