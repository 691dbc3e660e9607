"""Generate from a method: pick a sampler that fits its process, run, decode.

The one place that connects methods (which own a backbone and a schedule) to the
samplers (which only see a denoiser callable).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .methods.sedd import score_log_ratios
from .models.dit import trusted_inputs
from .samplers import Conditioning, check_fits, generate, get_sampler
from .samplers.registry import SAMPLERS


@dataclass
class Generation:
    tokens: Tensor  # (B, L)
    texts: list[str]
    nfe: int
    seconds: float
    intermediates: list[Tensor] | None = None
    lengths: list[int] | None = None  # semi-AR: tokens before each sample's first EOS

    @property
    def tokens_per_second(self) -> float:
        return self.tokens.numel() / max(self.seconds, 1e-9)


def resolve_sampler(method, name: str | None) -> str:
    """The sampler to use for ``method`` (its default when ``name`` is None or "auto")."""
    if name in (None, "auto"):
        return method.process.default_sampler
    check_fits(name, method.process.kind, method.name)
    return name


def pick_sampler(loaded, sampler: str | None, steps: int | None) -> tuple[str, int | None]:
    """The requested sampler and steps, else the checkpoint's recorded defaults."""
    meta = loaded.metadata or {}
    name = resolve_sampler(loaded.method, sampler or meta.get("sampler"))
    if steps is None and sampler in (None, meta.get("sampler")):
        steps = meta.get("steps")
    return name, steps


def sampler_options(method, name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The options sampler ``name`` is built with for ``method``: ``options`` over the
    method's own (``sampler_options``, e.g. D3PM's ``T``), with a masked process's
    ``mask_id`` and, for a sampler of denoisers, its ``process``."""
    options = dict(options or {})
    if name == "ar":
        return options
    options = {**getattr(method, "sampler_options", lambda _: {})(name), **options}
    if method.process.masked:
        options.setdefault("mask_id", method.mask_id)
        if not SAMPLERS[name].score:
            options.setdefault("process", method.process.kind)
    return options


def build_sampler(method, name: str | None, options: dict[str, Any] | None = None):
    """Sampler ``name`` (the method's default for None or "auto") as :func:`generate_tokens`
    runs it for ``method``; its ``default_steps`` is the step count a run without ``steps``
    takes. Raises ValueError for a sampler that does not fit or bad options."""
    name = resolve_sampler(method, name)
    return get_sampler(name, **sampler_options(method, name, options))


def _denoiser(method):
    def denoise(z: Tensor, alpha_t: Tensor) -> Tensor:
        return method.denoiser(z, alpha_t)

    time_conditioned = not method.process.masked or bool(getattr(method.cfg, "time_conditioning", True))
    denoise.time_conditioned = time_conditioned  # type: ignore[attr-defined]
    return denoise


def _score(method):
    """``score(z, alpha_t) -> log score ratios (B, L, K)`` for the SEDD samplers: a score
    model's own, or a masked denoiser's ``log x_theta + log(alpha / (1 - alpha))``."""
    if method.process.score:
        return method.score

    def score(z: Tensor, alpha_t: Tensor) -> Tensor:
        return score_log_ratios(method.denoiser(z, alpha_t), z, alpha_t, method.mask_id, log_states=0.0)

    return score


@torch.no_grad()
def generate_tokens(
    method,
    *,
    num_samples: int,
    seq_len: int,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int | None = 0,
    prefix: Tensor | None = None,
    suffix: Tensor | None = None,
    clamp: Conditioning | None = None,
    options: dict[str, Any] | None = None,
    schedule=None,
    device: torch.device | str | None = None,
    return_intermediates: bool = False,
    progress: bool = False,
    protocol: str = "ours",
) -> tuple[Tensor, int, list[Tensor] | None]:
    """Token ids (B, L), network evaluations and optional intermediate states.

    ``protocol="paper"`` runs the official code's grid (``steps`` reverse steps, then one
    noise-removal call: ``steps + 1`` network evaluations; MATH.md 11)."""
    name = resolve_sampler(method, sampler)
    options = dict(options or {})
    device = device or next(method.backbone.parameters()).device
    if steps is not None and steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    if name == "ar":
        if suffix is not None or clamp is not None:
            raise ValueError("the autoregressive sampler only conditions on a prefix")
        bos_id = options.pop("bos_id", None)
        was_training = method.backbone.training
        method.backbone.eval()
        try:
            out = build_sampler(method, name, options).generate(
                method.next_token_logits, batch_size=num_samples, seq_len=seq_len, prefix=prefix,
                seed=seed, device=device, progress=progress, bos_id=bos_id,
                decoder=method if hasattr(method, "decode") else None)
        finally:
            method.backbone.train(was_training)
        return out.tokens, out.nfe, None
    takes_score = SAMPLERS[name].score
    conds = [c for c in (clamp,
                         Conditioning.prefix(prefix, seq_len) if prefix is not None else None,
                         Conditioning.suffix(suffix, seq_len) if suffix is not None else None) if c is not None]
    cond = None
    if conds:
        mask, ids = conds[0].mask, conds[0].ids
        for c in conds[1:]:
            mask, ids = torch.broadcast_tensors(mask, c.mask)[0] | c.mask, torch.where(c.mask, c.ids, ids)
        cond = Conditioning.from_mask(mask, ids)
    was_training = method.backbone.training
    method.backbone.eval()
    try:
        # The loop feeds the model its prior and its own draws and checks the clamped ids
        # itself (Conditioning.resolve): no range check, a device sync, per step.
        with trusted_inputs(method.backbone):
            out = generate(
                build_sampler(method, name, options), _score(method) if takes_score else _denoiser(method),
                schedule or method.schedule,
                batch_size=num_samples, seq_len=seq_len, vocab_size=method.vocab_size, steps=steps,
                seed=seed, device=device, clamp=cond, return_intermediates=return_intermediates,
                progress=progress, protocol=protocol,
            )
    finally:
        method.backbone.train(was_training)
    return out.tokens, out.nfe, out.intermediates


def decode(tokenizer, tokens: Tensor, mask_id: int | None = None, keep_special: bool = False) -> list[str]:
    """Texts of (B, L) ids; ids the tokenizer does not know (the mask) are dropped.
    ``keep_special``: special tokens (``<|endoftext|>``) stay in the text."""
    texts = []
    for row in tokens.tolist():
        ids = [i for i in row if i < tokenizer.vocab_size and i != mask_id]
        texts.append(tokenizer.decode(ids, skip_special_tokens=not keep_special))
    return texts


def generate_text(method, tokenizer, *, num_samples: int, seq_len: int, prompt: str | None = None,
                  **kwargs) -> Generation:
    """Generate and decode; ``prompt`` is encoded and clamped as a prefix. Autoregressive
    samples start from the tokenizer's BOS (unless ``options`` sets ``bos_id``)."""
    prefix = kwargs.pop("prefix", None)
    if method.process.autoregressive:
        # An AR sample starts a new document, as the training rows' documents do.
        kwargs["options"] = {"bos_id": tokenizer.bos_id, **(kwargs.get("options") or {})}
    if prompt is not None:
        prefix = torch.tensor(tokenizer.encode(prompt), dtype=torch.long)
    start = time.perf_counter()
    tokens, nfe, inter = generate_tokens(method, num_samples=num_samples, seq_len=seq_len,
                                         prefix=prefix, **kwargs)
    seconds = time.perf_counter() - start
    texts = decode(tokenizer, tokens, getattr(method, "mask_id", None))
    return Generation(tokens.cpu(), texts, nfe, seconds, inter)
