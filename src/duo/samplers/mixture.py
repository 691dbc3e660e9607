"""One reverse step as a mixture of four simple distributions (MATH.md sections 1, 7, 8).

Every step of the diffusion samplers, for either process, draws each position from

    q = keep * e_z + mask * e_mask + uniform * 1/K + x * x_theta

with weights (B, L) in float64 that sum to one and ``x_theta`` the (filtered) prediction.
The §1 posterior has this form (its numerator is ``(a_s - a_t) x_theta + const * 1 +
(K a_t x_theta[z] + a_ts - a_t) e_z``), and so do the masked posterior and the Psi
corrector. Sampling the mixture directly needs only ``x_theta[z]`` per position and a
categorical draw from ``x_theta`` for the few positions that pick that component, instead
of several float64 passes over (B, L, K): at K = 50,257 those passes would cost more
than a small network. :meth:`Mixture.dense` expands it for tests and small K, and the
``dense_*`` methods give the same step from ``duo.processes`` for checking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from duo.processes import absorbing, uniform

from .filters import Thresholds, filter_active, filtered_cdf, row_thresholds
from .workspace import Workspace

Weight = Tensor | float


def _f64(a: float) -> Tensor:
    # duo.processes turns a Python float into a float32 tensor; keep alphas in float64.
    return torch.tensor(a, dtype=torch.float64)


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
            return torch.as_tensor(w, dtype=torch.float64, device=z.device).expand(z.shape).reshape(shape)

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
) -> Tensor:
    """Sample every position of ``z`` (B, L) from mixture ``m``; returns int64 ids (B, L).

    The random numbers drawn do not depend on the weights, so two samplers with equal
    weights give equal tokens under the same generator state.
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
    from_x = (u >= c_mask + m.uniform).reshape(-1)
    rows = from_x.nonzero().squeeze(1)
    if rows.numel():
        ws = workspace or Workspace()
        flat = log_probs.reshape(-1, vocab)
        lp = flat if rows.numel() == flat.shape[0] else torch.index_select(
            flat, 0, rows, out=ws.get("rows", (rows.numel(), vocab), flat.dtype, flat.device))
        if thresholds is not None:
            th = thresholds.take(rows)
        else:
            th = row_thresholds(lp, top_p, top_k, ws) if filter_active(top_p, top_k, vocab) else None
        picked = search_cdf(filtered_cdf(lp, th, ws), u_x.reshape(-1)[rows])
        out = out.reshape(-1).index_put((rows,), picked).reshape(b, l)
    return out


def x_at_z(log_probs: Tensor, z: Tensor, thresholds: Thresholds | None) -> Tensor:
    """Filtered ``x_theta[z]`` per position, float64 (B, L)."""
    lp_z = log_probs.gather(-1, z[..., None]).squeeze(-1)
    if thresholds is None:
        return lp_z.double().exp()
    tau = thresholds.log_tau.view(z.shape)
    mass = thresholds.log_mass.view(z.shape)
    return torch.where(lp_z >= tau, (lp_z.double() - mass).exp(), 0.0)


class UniformProcess:
    """Uniform-state diffusion: prior uniform, §1 posterior, corrector ``a_s x0 + (1 - a_s)/K``."""

    name = "uniform"
    uses_noise = True
    needs_x_at_z = True  # the weights depend on x_theta[z]

    def __init__(self, mask_id: int | None = None) -> None:
        self.mask_id = None  # the uniform process has no mask; any given id is ignored

    def prior(self, shape, vocab_size, generator, device) -> Tensor:
        return uniform.prior_sample(shape, vocab_size, generator=generator, device=device)

    def posterior(self, z: Tensor, xz: Tensor, a_s: float, a_t: float, vocab: int) -> Mixture:
        a_ts = a_t / a_s
        kx = vocab * a_t * xz
        denom = kx + (1.0 - a_t)
        return Mixture(keep=(kx + (a_ts - a_t)) / denom, mask=0.0,
                       uniform=(1.0 - a_ts) * (1.0 - a_s) / denom, x=(a_s - a_t) / denom)

    def corrector(self, z: Tensor, xz: Tensor, a_s: float, a_t: float, vocab: int) -> Mixture:
        # x0_hat = posterior towards t = 0, re-noised to time s.
        kx = vocab * a_t * xz
        denom = kx + (1.0 - a_t)
        return Mixture(keep=a_s * kx / denom, mask=0.0, uniform=1.0 - a_s,
                       x=a_s * (1.0 - a_t) / denom)

    def dense_posterior(self, x_probs: Tensor, z: Tensor, a_s: float, a_t: float) -> Tensor:
        return uniform.posterior(x_probs.double(), z, _f64(a_s), _f64(a_t), validate=False)

    def dense_corrector(self, x_probs: Tensor, z: Tensor, a_s: float, a_t: float) -> Tensor:
        x0 = uniform.posterior(x_probs.double(), z, _f64(1.0), _f64(a_t), validate=False)
        return a_s * x0 + (1.0 - a_s) / x_probs.shape[-1]

    def greedy(self, log_probs: Tensor, z: Tensor) -> Tensor:
        return log_probs.argmax(-1)


class AbsorbingProcess:
    """Masked diffusion: prior all-mask, unmasking posterior, corrector ``a_s x0 + (1 - a_s) e_mask``."""

    name = "absorbing"
    uses_noise = False
    needs_x_at_z = False

    def __init__(self, mask_id: int | None = None) -> None:
        if isinstance(mask_id, bool) or not isinstance(mask_id, int) or mask_id < 0:
            raise ValueError(f"mask_id={mask_id!r}: the absorbing process needs the mask "
                             "token's id (an integer >= 0, usually vocab_size - 1)")
        self.mask_id = mask_id

    def prior(self, shape, vocab_size, generator, device) -> Tensor:
        return absorbing.prior_sample(shape, self.mask_id, device=device)

    def posterior(self, z: Tensor, xz: Tensor | None, a_s: float, a_t: float, vocab: int) -> Mixture:
        masked = (z == self.mask_id).double()
        return Mixture(keep=1.0 - masked, mask=masked * ((1.0 - a_s) / (1.0 - a_t)),
                       uniform=0.0, x=masked * ((a_s - a_t) / (1.0 - a_t)))

    def corrector(self, z: Tensor, xz: Tensor | None, a_s: float, a_t: float, vocab: int) -> Mixture:
        masked = (z == self.mask_id).double()
        return Mixture(keep=a_s * (1.0 - masked), mask=1.0 - a_s, uniform=0.0, x=a_s * masked)

    def dense_posterior(self, x_probs: Tensor, z: Tensor, a_s: float, a_t: float) -> Tensor:
        return absorbing.posterior(x_probs.double(), z, _f64(a_s), _f64(a_t), self.mask_id,
                                   validate=False)

    def dense_corrector(self, x_probs: Tensor, z: Tensor, a_s: float, a_t: float) -> Tensor:
        onehot = F.one_hot(z, x_probs.shape[-1]).double()
        x0 = torch.where((z == self.mask_id)[..., None], x_probs.double(), onehot)
        out = a_s * x0
        out[..., self.mask_id] += 1.0 - a_s
        return out

    def greedy(self, log_probs: Tensor, z: Tensor) -> Tensor:
        return torch.where(z == self.mask_id, log_probs.argmax(-1), z)


Process = UniformProcess | AbsorbingProcess

PROCESSES: dict[str, Callable[..., Process]] = {
    "uniform": UniformProcess,
    "absorbing": AbsorbingProcess,
    "masked": AbsorbingProcess,
}


def get_process(name: str, mask_id: int | None = None) -> Process:
    if name not in PROCESSES:
        raise ValueError(f"unknown process {name!r}; valid processes: {', '.join(PROCESSES)}")
    return PROCESSES[name](mask_id)
