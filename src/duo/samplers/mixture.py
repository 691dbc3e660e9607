"""One reverse step as a mixture of four simple distributions (MATH.md sections 1, 7, 8).

Every step of the diffusion samplers, for either process, draws each position from

    q = keep * e_z + mask * e_mask + uniform * 1/K + x * x_theta

with weights (B, L) in float64 that sum to one and ``x_theta`` the (filtered) prediction.
The §1 posterior has this form (its numerator is ``(a_s - a_t) x_theta + const * 1 +
(K a_t x_theta[z] + a_ts - a_t) e_z``), and so do the masked posterior and the Psi
corrector. Sampling the mixture directly needs only ``x_theta[z]`` per position and a
categorical draw from ``x_theta`` for the few positions that pick that component, instead
of several float64 passes over (B, L, K): at K = 50,257 those passes would cost more
than a small network. :meth:`Mixture.dense` expands it for tests and small K; the process adapters
(:mod:`duo.samplers.processes`) give the weights and, for checking, the same step built from
``duo.processes``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from duo.utils.chunks import row_chunks

from .blocks import blocked_draw, pick
from .filters import Thresholds, filter_active, row_thresholds
from .workspace import Workspace

Weight = Tensor | float


@dataclass(frozen=True)
class Mixture:
    """Per-position weights (B, L) float64 (or scalars) of the four components."""

    keep: Weight
    mask: Weight
    uniform: Weight
    x: Weight

    def mix(self, other: "Mixture", kappa: float) -> "Mixture":
        """``kappa * self + (1 - kappa) * other`` (kappa = 1 returns self's values exactly)."""
        c = 1.0 - kappa
        return Mixture(kappa * self.keep + c * other.keep, kappa * self.mask + c * other.mask,
                       kappa * self.uniform + c * other.uniform, kappa * self.x + c * other.x)

    def dense(self, x_probs: Tensor, z: Tensor, mask_id: int | None = None) -> Tensor:
        """The mixture as probabilities (B, L, K) float64; ``x_probs`` (B, L, K) is x_theta."""
        x_probs = x_probs.double()
        shape = z.shape + (1,)

        def col(w: Weight) -> Tensor:
            w = torch.as_tensor(w, dtype=torch.float64, device=z.device)
            return w.expand(z.shape).reshape(shape)

        out = col(self.x) * x_probs + col(self.uniform) / x_probs.shape[-1]
        out = out.scatter_add(-1, z[..., None], col(self.keep))
        if mask_id is not None:
            out[..., mask_id] += col(self.mask).squeeze(-1)
        return out


def search_cdf(cdf: Tensor, u: Tensor) -> Tensor:
    """Categorical draws from unnormalised cumulative weights (N, K) with uniforms u (N,).

    ``right=True`` makes a zero-weight token impossible to draw.
    """
    target = (u * cdf[:, -1])[:, None]
    idx = torch.searchsorted(cdf, target, right=True).squeeze(1)
    return idx.clamp_max(cdf.shape[-1] - 1)


def inverse_cdf(weights: Tensor, u: Tensor) -> Tensor:
    """Categorical draws from unnormalised non-negative weights (N, K) with uniforms u (N,)."""
    return search_cdf(weights.cumsum(-1), u)


def draw(
    m: Mixture,
    log_probs: Tensor,
    z: Tensor,
    *,
    mask_id: int | None,
    uses_noise: bool,
    thresholds: Thresholds | None,
    top_p: float,
    top_k: int,
    generator: torch.Generator | None,
    workspace: Workspace | None = None,
    nucleus: str = "exact",
    dense: bool | None = None,
) -> Tensor:
    """Sample every position of ``z`` (B, L) from mixture ``m``; returns int64 ids (B, L).

    How many random numbers are drawn depends only on the shapes and the filter
    settings, so two samplers with equal weights give equal tokens under the same
    generator state.

    Only the positions that pick the ``x`` component need a draw from the prediction.
    Finding them (``nonzero``) makes the host wait for the device, so with ``dense``
    every position draws from the prediction and the mixture picks afterwards: more
    arithmetic, no synchronisation, the same tokens. ``dense=None`` chooses it on
    accelerators for unfiltered draws; the CPU keeps the sparse draw, which skips work.
    """
    b, l, vocab = log_probs.shape
    opts = dict(generator=generator, device=z.device)
    u = torch.rand((b, l), dtype=torch.float64, **opts)
    u_x = torch.rand((b, l), dtype=torch.float64, **opts)
    c_keep = m.keep + torch.zeros_like(u)
    c_mask = c_keep + m.mask
    out = torch.where(u < c_keep, z, z if mask_id is None else torch.full_like(z, mask_id))
    if uses_noise:
        noise = torch.randint(0, vocab, (b, l), **opts)
        out = torch.where(u < c_mask, out, noise)
    # A second, independent uniform per position for the redraws of filtered draws
    # (see _sample_rows); drawn last, so the other draws match an unfiltered run's.
    retry = filter_active(top_p, top_k, vocab) or (thresholds is not None and thresholds.block_mass is not None)
    u_retry = torch.rand((b, l), dtype=torch.float64, **opts) if retry else u_x
    if dense is None:
        dense = z.device.type != "cpu" and thresholds is None and not retry
    if dense:
        if thresholds is not None or retry:
            raise ValueError("dense=True draws unfiltered predictions only; pass dense=None with top_p or top_k")
        # Every row, unfiltered: the same per-row draw as below, no index found on the host.
        every = torch.arange(b * l, device=z.device)
        picked = _sample_rows(log_probs.reshape(-1, vocab), every, u_x.reshape(-1), u_x.reshape(-1),
                              None, top_p, top_k, workspace or Workspace(), nucleus)
        return torch.where(u >= c_mask + m.uniform, picked.view(b, l), out)
    from_x = (u >= c_mask + m.uniform).reshape(-1)
    rows = from_x.nonzero().squeeze(1)
    if rows.numel():
        if thresholds is not None:
            thresholds = thresholds.take(rows)
        picked = _sample_rows(log_probs.reshape(-1, vocab), rows, u_x.reshape(-1)[rows],
                              u_retry.reshape(-1)[rows], thresholds, top_p, top_k,
                              workspace or Workspace(), nucleus)
        out = out.reshape(-1).index_put((rows,), picked).reshape(b, l)
    return out


def _sample_rows(flat: Tensor, rows: Tensor, u: Tensor, u_retry: Tensor, th: Thresholds | None,
                 top_p: float, top_k: int, ws: Workspace, nucleus: str = "exact") -> Tensor:
    """Draw from the filtered prediction of rows ``rows`` of ``flat`` (N, K) with uniforms
    ``u`` and ``u_retry`` (n,); ``th`` is for those rows or None (then computed here).
    Returns (n,) ids."""
    n, vocab = rows.numel(), flat.shape[1]
    if th is None and filter_active(top_p, top_k, vocab):
        lp = flat[rows] if n < flat.shape[0] else flat
        th = row_thresholds(lp, top_p, top_k, ws, nucleus)
    picked = torch.empty(n, dtype=torch.long, device=flat.device)
    todo = torch.arange(n, device=flat.device)
    if th is not None and th.windowed is not None:
        # Rows whose kept set fits in the top-k window: draw among the window only.
        win = th.windowed.nonzero().squeeze(1)
        if win.numel():
            vals = th.window_lp[win]
            w = torch.where(vals >= th.log_tau[win, None], vals.double().exp(), 0.0)
            j = search_cdf(w.cumsum(-1), u[win])
            picked[win] = th.window_ids[win].gather(1, j[:, None]).squeeze(1)
        todo = (~th.windowed).nonzero().squeeze(1)
    elif th is not None and th.block_mass is not None:
        # Propose from the unfiltered prediction by the block masses kept from the
        # threshold pass and keep a proposal inside the filter (a nucleus holds >= top_p
        # of the mass, so most are kept); the others draw from the filtered rows with
        # an independent uniform. Accepted or redrawn, a token j comes out with
        # probability p_j + (1 - mass) * p_j / mass = p_j / mass: the filtered law.
        prop = pick(th.block_mass, u, vocab, lambda cols: flat[rows[:, None], cols].double().exp())
        todo = (flat[rows, prop] < th.log_tau).nonzero().squeeze(1)
        picked.copy_(prop)
        u = u_retry
    for part in row_chunks(todo.numel(), vocab, flat.device):
        sel = todo[part]
        r = sel.numel()
        w = torch.index_select(flat, 0, rows[sel], out=ws.get("rows", (r, vocab), flat.dtype, flat.device))
        if w.dtype not in (torch.float32, torch.float64):  # draw bfloat16 predictions in float32
            w = ws.get("rows32", (r, vocab), torch.float32, flat.device).copy_(w)
        drop = None
        if th is not None:
            drop = torch.lt(w, th.log_tau[sel, None],
                            out=ws.get("drop", (r, vocab), torch.bool, flat.device))
        w.exp_()
        if drop is not None:
            w.masked_fill_(drop, 0.0)
        picked[sel] = blocked_draw(w, u[sel])
    return picked


def x_at_z(log_probs: Tensor, z: Tensor, thresholds: Thresholds | None) -> Tensor:
    """Filtered ``x_theta[z]`` per position, float64 (B, L)."""
    lp_z = log_probs.gather(-1, z[..., None]).squeeze(-1)
    if thresholds is None:
        return lp_z.double().exp()
    tau = thresholds.log_tau.view(z.shape)
    mass = thresholds.log_mass.view(z.shape)
    return torch.where(lp_z >= tau, (lp_z.double() - mass).exp(), 0.0)
