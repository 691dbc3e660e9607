"""The one generation loop shared by every diffusion sampler."""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .base import Conditioning, Denoiser, GenerationOutput, Sampler
from .grid import check_protocol
from .workspace import Workspace


class Progress:
    """One progress bar over several :func:`generate` calls (batches, windows): pass it as
    ``progress=``. ``calls`` is how many calls will share it; the first call's step count
    sets the total (``calls x steps``), and the bar appears then. Nothing is drawn when
    ``enabled`` is false."""

    def __init__(self, calls: int, *, enabled: bool = True, desc: str = "sampling", unit: str = "step") -> None:
        self.calls = max(1, int(calls))
        self.enabled, self.desc, self.unit = enabled, desc, unit
        self.bar: tqdm | None = None

    def begin(self, steps: int) -> None:
        """A call of ``steps`` steps starts; the first one opens the bar."""
        if self.bar is None:
            self.bar = tqdm(total=self.calls * steps, disable=not self.enabled, desc=self.desc, unit=self.unit)

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_generator(generator: torch.Generator | None, seed: int | None,
                   device: torch.device | str | None) -> torch.Generator | None:
    """``generator`` as given, or a fresh one seeded with ``seed`` on ``device``."""
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, not both")
    if seed is None:
        return generator
    return torch.Generator(device=torch.device(device or "cpu")).manual_seed(int(seed))


def _check_sizes(batch_size: int, seq_len: int, vocab_size: int) -> None:
    for name, value, low in (("batch_size", batch_size, 1), ("seq_len", seq_len, 1),
                             ("vocab_size", vocab_size, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r} must be an integer >= {low}")


@torch.no_grad()
def generate(
    sampler: Sampler,
    denoiser: Denoiser,
    schedule,
    *,
    batch_size: int,
    seq_len: int,
    vocab_size: int,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    device: torch.device | str | None = None,
    clamp: Conditioning | None = None,
    time_conditioned: bool | None = None,
    return_intermediates: bool = False,
    progress: "bool | Progress" = False,
    protocol: str = "ours",
) -> GenerationOutput:
    """Sample (B, L) token ids from the prior down to t = eps with ``sampler``.

    Args:
        sampler: a sampler from :func:`get_sampler` (knows its process and grid).
        denoiser: ``denoiser(z (B, L), alpha_t (B,)) -> log-probs (B, L, K)``.
        schedule: anything with ``alpha(t)`` (t = 1 noise, t = 0 clean).
        steps: number of reverse steps (network calls without caching); default
            ``sampler.default_steps``.
        generator / seed: randomness; the same seed gives the same tokens.
        clamp: positions held fixed (prefix, suffix, infilling).
        time_conditioned: whether the denoiser uses alpha_t; defaults to its
            ``time_conditioned`` attribute, else True. Caching requires False.
        progress: True for a bar over this call's steps, or a :class:`Progress` that
            several calls share (one bar over batches x steps).
        protocol: "ours" (``steps`` network calls, the last removing the noise) or
            "paper" (the official code: ``steps`` posterior steps down to eps, then one
            more call at eps to remove the noise, ``steps + 1`` calls; MATH.md 11). The
            output's ``nfe`` counts the calls either way.
    """
    check_protocol(protocol)
    if not callable(getattr(sampler, "step", None)):
        raise ValueError(f"{type(sampler).__name__} is not a diffusion sampler; use "
                         "generate_ar for autoregressive sampling")
    _check_sizes(batch_size, seq_len, vocab_size)
    steps = sampler.default_steps if steps is None else steps
    grid = sampler.time_grid(steps)
    if sampler.mask_id is not None and not 0 <= sampler.mask_id < vocab_size:
        raise ValueError(f"mask_id={sampler.mask_id} is outside the vocabulary [0, {vocab_size})")
    if time_conditioned is None:
        time_conditioned = bool(getattr(denoiser, "time_conditioned", True))
    cache = sampler.cache_predictions
    if cache and time_conditioned:
        raise ValueError("cache_predictions=True needs a denoiser without time conditioning; "
                         "pass time_conditioned=False or disable caching")
    gen = make_generator(generator, seed, device)
    clamp = clamp.resolve(batch_size, seq_len, vocab_size, device) if clamp is not None else None

    z = sampler.prior((batch_size, seq_len), vocab_size, gen, device)
    if clamp is not None:
        z = clamp.apply(z)
    states = [z.cpu()] if return_intermediates else None
    workspace = Workspace()
    nfe = 0
    last_input: Tensor | None = None
    last_pred: Tensor | None = None
    times = grid.step_times(schedule, protocol)
    shared = progress if isinstance(progress, Progress) else None
    bar = Progress(1, enabled=bool(progress)) if shared is None else shared
    try:
        bar.begin(len(times))
        for i, time in enumerate(times):
            reuse = cache and last_input is not None and torch.equal(z, last_input)
            out = sampler.step(denoiser, z, time, generator=gen,
                               prediction=last_pred if reuse else None, workspace=workspace)
            if i == 0 and out.log_probs.shape[-1] != vocab_size:
                raise ValueError(f"denoiser returned {out.log_probs.shape[-1]} classes but "
                                 f"vocab_size={vocab_size}; pass the model's vocabulary size")
            nfe += out.nfe
            if cache:
                last_input, last_pred = z, out.log_probs
            z = clamp.apply(out.z) if clamp is not None else out.z
            if states is not None:
                states.append(z.cpu())
            bar.update()
    finally:
        if shared is None:
            bar.close()
    return GenerationOutput(z, states, nfe)
