"""Process adapters for the samplers: the prior, and one step's mixture weights.

``posterior`` gives the MATH.md §1 (uniform) or §8 (masked) posterior with ``x``
replaced by the prediction; ``corrector`` gives the Psi-samplers' ``q_PC`` (§7), the
predicted clean distribution re-noised to time s. Both return a
:class:`~duo.samplers.mixture.Mixture` of (B, L) float64 weights. The ``dense_*``
methods build the same distributions as (B, L, K) tensors from ``duo.processes``; the
tests check the two against each other.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from duo.processes import absorbing, uniform

from .mixture import Mixture


def _f64(a: float) -> Tensor:
    # duo.processes turns a Python float into a float32 tensor; keep alphas in float64.
    return torch.tensor(a, dtype=torch.float64)


class UniformProcess:
    """Uniform-state diffusion: uniform prior, §1 posterior, ``q_PC = a_s x0 + (1 - a_s)/K``."""

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
    """Masked diffusion: all-mask prior, unmasking posterior, ``q_PC = a_s x0 + (1 - a_s) e_mask``.

    ``x0`` is the prediction on masked positions and the one-hot of ``z`` elsewhere.
    """

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

    def posterior(self, z: Tensor, xz: Tensor | None, a_s: float, a_t: float,
                  vocab: int) -> Mixture:
        masked = (z == self.mask_id).double()
        return Mixture(keep=1.0 - masked, mask=masked * ((1.0 - a_s) / (1.0 - a_t)),
                       uniform=0.0, x=masked * ((a_s - a_t) / (1.0 - a_t)))

    def corrector(self, z: Tensor, xz: Tensor | None, a_s: float, a_t: float,
                  vocab: int) -> Mixture:
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
    """Adapter for process ``name`` (a key of :data:`PROCESSES`)."""
    if name not in PROCESSES:
        raise ValueError(f"unknown process {name!r}; valid processes: {', '.join(PROCESSES)}")
    return PROCESSES[name](mask_id)
