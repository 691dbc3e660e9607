"""Losses: the reference formulas (pure tensor functions, MATH.md sections 2, 6, 8), the
fused versions that never materialise float32 (tokens, K) intermediates (``fused_nelbo``,
``fused_kl``, with optional Triton kernels in ``kernels/``), and the chunked token loss
that runs the output layer and a loss together (``chunked``).

The fused losses equal their reference formulas to float32 rounding; the tests compare
them against float64 autograd of the reference.
"""

from .chunked import LOSS_CHUNK, LOSS_KINDS, LossKind, default_chunk, token_loss
from .fused_kl import distillation_kl_from_logits
from .fused_nelbo import usdm_nelbo_from_logits
from .reference import (
    ar_nll,
    d3pm_elbo,
    distillation_kl,
    kl_terms,
    mdlm_nelbo,
    reconstruction_nll,
    sedd_dse,
    uniform_decoder_nll,
    usdm_from_sums,
    usdm_nelbo,
    usdm_nelbo_naive,
    usdm_rates,
)

__all__ = [
    "LOSS_CHUNK", "LOSS_KINDS", "LossKind", "default_chunk", "token_loss",
    "distillation_kl_from_logits", "usdm_nelbo_from_logits",
    "ar_nll", "d3pm_elbo", "sedd_dse", "distillation_kl", "kl_terms", "mdlm_nelbo", "reconstruction_nll",
    "uniform_decoder_nll", "usdm_from_sums", "usdm_nelbo", "usdm_nelbo_naive", "usdm_rates",
]
