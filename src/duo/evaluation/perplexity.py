"""Perplexity of a trained model on packed data (MATH.md sections 2 and 9).

Diffusion models (Duo, MDLM) give an upper bound: ``exp`` of the per-token NELBO with one
``t`` per sequence, stratified (antithetic) across each batch. The bound has three terms,
reported separately:

- ``diffusion``: the continuous-time NELBO integrand averaged over ``t`` in ``[eps, 1]``;
- ``prior``: ``KL(q_1(. | x) || prior)`` (Duo: against the uniform prior; MDLM follows
  its paper and omits it, since ``alpha_1 > 0`` makes it infinite against the all-mask
  prior);
- ``reconstruction``: ``-log p_theta(x | z_{t0})`` at ``t0 = eps``, where the decoder is
  the model's own last reverse step (the posterior towards ``alpha_s = 1``, MATH.md 1):
  for Duo ``p(x | z) = x_theta[x] (K a 1[x = z] + 1 - a) / (K a x_theta[z] + 1 - a)``;
  for MDLM the SUBS ``x_theta`` already is that step. Not ``x_theta`` itself: in the mean
  parameterisation the posterior formula adds the evidence of ``z`` on top of
  ``x_theta``, so a trained Duo denoiser does not copy ``z`` and ``-log x_theta[x]``
  would be a loose decoder (several nats for a young model).

The autoregressive model gives its exact next-token NLL (not a bound).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..losses import reconstruction_nll, uniform_decoder_nll
from ..schedules import antithetic_times
from ..utils.seeding import derive_seed

_MAX_ELEMENTS = 2**25  # log-prob elements per reconstruction chunk
# The NELBO's Monte-Carlo estimate is heavy-tailed near t = 0, where a few noised tokens
# carry weights ~1/t: with one time per sequence, 72 sequences give bounds +-30% apart
# between seeds. Small sets are therefore read several times, with fresh stratified times.
MIN_DRAWS = 1024  # (t, z_t) draws per estimate when the number of passes is left to us
MAX_PASSES = 32


def validation_passes(rows: int, configured: int | None) -> int:
    """Times drawn per sequence: ``configured``, else enough for :data:`MIN_DRAWS` over
    ``rows`` sequences (1 for a large set), at most :data:`MAX_PASSES`."""
    if configured is not None:
        if configured < 1:
            raise ValueError(f"passes={configured} must be >= 1 (or None: chosen by the data's size)")
        return configured
    if rows < 1:
        return 1  # nothing known about the set: no multiplied cost on a guess
    return max(1, min(MAX_PASSES, math.ceil(MIN_DRAWS / rows)))


def stratified_pass_times(rows: int, p: int, passes: int, u: Tensor, *, eps: float,
                          device: torch.device | str | None = None) -> Tensor:
    """Times (rows,) of pass ``p`` of ``passes`` over a batch: ``t = (u + (p rows + b) /
    (passes rows)) mod 1`` into ``[eps, 1]``. Each row's times lie 1/passes apart and the
    batch's ``passes x rows`` times are stratified; one pass is :func:`antithetic_times`."""
    return antithetic_times(rows, eps=eps, u=u, offset=p * rows, total=passes * rows, device=device)


@dataclass
class PerplexityResult:
    """Per-token NELBO (nats) and its ``exp``; ``terms`` splits ``nelbo`` for diffusion models.

    ``bound`` is True when ``ppl`` is an upper bound (diffusion), False for the exact AR NLL.
    ``diffusion_ppl``: ``exp`` of the diffusion term alone (no prior, no reconstruction),
    the number the papers report (MATH.md 11); ``<= ppl``; None for AR models.
    ``passes``: times drawn per sequence, stratified over all of them.
    """

    nelbo: float
    ppl: float
    num_tokens: int
    num_sequences: int
    bound: bool
    terms: dict[str, float] = field(default_factory=dict)
    method: str = ""
    corpus: str | None = None
    split: str | None = None
    seconds: float = 0.0
    diffusion_ppl: float | None = None
    passes: int = 1  # times drawn per sequence (diffusion)

    def __post_init__(self) -> None:
        if self.diffusion_ppl is None and "diffusion" in self.terms:
            self.diffusion_ppl = math.exp(min(self.terms["diffusion"], 700.0))

    @property
    def display(self) -> str:
        return f"{'<= ' if self.bound else ''}{self.ppl:.2f}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _method_of(loaded_or_method):
    return getattr(loaded_or_method, "method", loaded_or_method)


def _batches(data, batch_size: int) -> Iterable[dict[str, Tensor]]:
    """A dataset becomes an in-order DataLoader; anything else is taken as batches."""
    if isinstance(data, torch.utils.data.Dataset):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    return data


def _decoder_nll(method, z0: Tensor, x: Tensor, alpha: Tensor) -> Tensor:
    log_probs = method.denoiser(z0, alpha).float()
    if method.process.masked:
        return reconstruction_nll(log_probs, x).double()  # SUBS: copies unmasked tokens
    return uniform_decoder_nll(log_probs, z0, x, alpha)


def _reconstruction(method, batch: dict[str, Tensor], gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Summed ``-log p_theta(x | z_t0)`` at ``t0 = eps`` and the token count."""
    x = batch["input_ids"]
    t0 = torch.full((x.shape[0],), float(method.cfg.eps), device=x.device)
    alpha = method.schedule.alpha(t0)
    z0 = method.process.noise(x, alpha[:, None], method.vocab_size, getattr(method, "mask_id", None), gen)
    # Rows in chunks: (B, L, K) log-probs at K = 50,257 would take gigabytes.
    rows = max(1, _MAX_ELEMENTS // (x.shape[1] * method.vocab_size))
    per_token = torch.cat([_decoder_nll(method, z0[i:i + rows], x[i:i + rows], alpha[i:i + rows])
                           for i in range(0, x.shape[0], rows)])
    mask = batch.get("attention_mask")
    mask = torch.ones_like(x, dtype=torch.bool) if mask is None else mask.bool()
    return per_token.masked_fill(~mask, 0.0).sum().double(), mask.sum().double()


def batch_seed(seed: int, index: int) -> int:
    # A fixed function of (seed, batch): results do not depend on what ran before.
    return derive_seed(seed, index)


@torch.no_grad()
def perplexity(
    loaded_or_method,
    dataset_or_loader,
    *,
    batch_size: int = 16,
    max_batches: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    corpus: str | None = None,
    split: str | None = None,
    progress: bool = False,
    desc: str = "perplexity",
    passes: int | None = 1,
) -> PerplexityResult:
    """Perplexity of ``loaded_or_method`` (a :class:`LoadedModel` or a method) on data.

    ``dataset_or_loader`` is a dataset of ``dict(input_ids, attention_mask)`` rows or an
    iterable of such batches. The same ``seed`` gives the same result. ``progress``: a bar
    over the batches (named ``desc``) on stderr. ``passes``: times drawn per sequence of
    a diffusion model (:func:`stratified_pass_times`); None = :func:`validation_passes`
    of the rows read (a dataset's; an iterable of batches counts as large).
    """
    method = _method_of(loaded_or_method)
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches={max_batches} must be >= 1 or None (all batches)")
    device = torch.device(device) if device is not None else next(method.backbone.parameters()).device
    diffusion = method.process.diffusion
    sums = {"total": 0.0, "tokens": 0.0, "prior": 0.0, "recon": 0.0, "recon_tokens": 0.0}
    sequences = 0
    was_training = method.backbone.training
    method.backbone.eval()
    start = time.perf_counter()
    batches = _batches(dataset_or_loader, batch_size)
    rows = len(dataset_or_loader) if isinstance(dataset_or_loader, torch.utils.data.Dataset) else MIN_DRAWS
    if max_batches is not None:
        rows = min(rows, max_batches * batch_size)
    passes = validation_passes(rows, passes) if diffusion else 1
    total = len(batches) if hasattr(batches, "__len__") else None
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    bar = tqdm(total=total, disable=not progress, desc=desc, unit="batch")
    try:
        for index, batch in enumerate(batches):
            if max_batches is not None and index >= max_batches:
                break
            batch = {k: v.to(device) for k, v in batch.items()}
            x = batch["input_ids"]
            gen = torch.Generator(device=device).manual_seed(batch_seed(seed, index))
            u = torch.rand((), generator=torch.Generator().manual_seed(batch_seed(seed, index)),
                           dtype=torch.float64)
            for p in range(passes):
                t = (stratified_pass_times(x.shape[0], p, passes, u, eps=float(method.cfg.eps), device=device)
                     if diffusion else None)
                out = method.eval_loss(batch, t, generator=gen)
                sums["total"] += float(out.nelbo_sum)
                sums["tokens"] += float(out.num_tokens)
                sums["prior"] += float(out.metrics.get("prior_kl_per_token", 0.0)) * float(out.num_tokens)
            if diffusion and not getattr(method, "bound_includes_reconstruction", False):
                # (D3PM's discrete-time ELBO holds its reconstruction term as step 1 of T.)
                recon, count = _reconstruction(method, batch, gen)
                sums["recon"] += float(recon)
                sums["recon_tokens"] += float(count)
            sequences += x.shape[0]
            bar.update()
    finally:
        bar.close()
        method.backbone.train(was_training)
    if sums["tokens"] == 0:
        raise ValueError("no tokens to evaluate: the data is empty; check the corpus, split and seq_len")
    tokens = sums["tokens"]  # counted once per pass
    terms: dict[str, float] = {}
    nelbo = sums["total"] / tokens
    if diffusion:
        recon = sums["recon"] / max(sums["recon_tokens"], 1.0)
        terms = {"diffusion": (sums["total"] - sums["prior"]) / tokens, "prior": sums["prior"] / tokens,
                 "reconstruction": recon}
        nelbo += recon
    return PerplexityResult(
        nelbo=nelbo, ppl=math.exp(min(nelbo, 700.0)), num_tokens=int(tokens) // passes, num_sequences=sequences,
        bound=diffusion, terms=terms, method=method.name, corpus=corpus, split=split,
        seconds=time.perf_counter() - start, passes=passes,
    )


def corpus_perplexity(
    loaded,
    corpus: str | None = None,
    split: str | None = None,
    *,
    seq_len: int | None = None,
    packing: str | None = None,
    batch_size: int = 16,
    max_batches: int | None = None,
    max_documents: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    show_progress: bool = False,
    progress: bool = False,
    desc: str = "perplexity",
    passes: int | None = 1,
) -> PerplexityResult:
    """Perplexity of a loaded checkpoint on a corpus (default: its own validation split),
    tokenized with the checkpoint's tokenizer; see :func:`duo.evaluation.data.eval_data`.
    ``show_progress``: bars while the data is built; ``progress``: a bar over the batches;
    ``passes``: as :func:`perplexity`."""
    from .data import eval_data

    data = eval_data(loaded, corpus, split, seq_len=seq_len, packing=packing,
                     max_documents=max_documents, show_progress=show_progress)
    return perplexity(loaded, data.dataset, batch_size=batch_size, max_batches=max_batches, seed=seed,
                      device=device, corpus=data.corpus, split=data.split, progress=progress, desc=desc,
                      passes=passes)
