"""Input checks shared across the library: one-line ``ValueError``s that name the value
and say what to pass instead. Pure functions of tensors and numbers."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def as_alpha(alpha: Tensor | float, like: Tensor, name: str) -> Tensor:
    """Broadcastable alpha of shape ``(B, 1)``, ``(B, L)`` or scalar, on ``like``'s device."""
    # Python floats stay float64: callers cast to their working dtype, so a float64
    # posterior is not silently limited to float32 precision.
    alpha = torch.as_tensor(alpha, dtype=torch.float64 if isinstance(alpha, float) else None,
                            device=like.device)
    if alpha.dim() > 2:
        raise ValueError(f"{name} has shape {tuple(alpha.shape)}; expected a scalar, (B, 1) or (B, L)")
    try:
        fits = torch.broadcast_shapes(alpha.shape, like.shape[:2]) == like.shape[:2]
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"{name} of shape {tuple(alpha.shape)} does not broadcast to the tokens' "
            f"shape {tuple(like.shape[:2])}; pass (B, 1) or (B, L)"
        )
    return alpha


def check_ids(z: Tensor, vocab_size: int, name: str = "x") -> None:
    """``z`` is a (B, L) integer tensor of ids in ``[0, vocab_size)``."""
    if not isinstance(z, Tensor):
        raise ValueError(f"{name} is {type(z).__name__}; pass integer token ids of shape (B, L)")
    if z.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name} has dtype {z.dtype}; expected integer token ids (B, L)")
    if z.dim() != 2:
        raise ValueError(f"{name} has shape {tuple(z.shape)}; expected (B, L) token ids")
    if z.numel() and (int(z.min()) < 0 or int(z.max()) >= vocab_size):
        raise ValueError(
            f"{name} holds ids in [{int(z.min())}, {int(z.max())}], outside [0, {vocab_size}); "
            "check vocab_size"
        )


def check_probs(x: Tensor, name: str, atol: float = 1e-3) -> None:
    """A ``(B, L, K)`` tensor whose last dim is a probability vector."""
    if x.dim() != 3:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected (B, L, K) probabilities")
    total = x.sum(-1)
    worst = (total - 1).abs().max() if total.numel() else torch.tensor(0.0)
    if bool(worst > atol) or bool((x < -atol).any()):
        raise ValueError(
            f"{name} must hold probability vectors over the last dim (max |sum - 1| = "
            f"{float(worst):.3g}); apply softmax first"
        )


def check_vocab(vocab_size: int) -> int:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"vocab_size={vocab_size!r} must be an integer >= 2")
    return vocab_size


def check_tau(tau: float | Tensor) -> float:
    value = float(tau)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"tau={value} must be a finite temperature >= 0 (0 means exact one-hot)")
    return value


def check_gamma(gamma: Tensor | float, x: Tensor, name: str = "gamma") -> Tensor:
    """gamma as float64 (B, L) (a broadcast view) on x's device."""
    g = torch.as_tensor(gamma).detach()
    if not g.is_floating_point():
        g = g.double()
    if g.dim() == 1 and g.numel() > 1:
        # A (B,) vector would silently broadcast along L when B == L.
        raise ValueError(f"{name} has shape {tuple(g.shape)}; pass {name}[:, None] of shape (B, 1)")
    try:
        fits = g.dim() <= 2 and torch.broadcast_shapes(g.shape, x.shape) == x.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"{name} of shape {tuple(g.shape)} does not broadcast to x's shape "
            f"{tuple(x.shape)}; pass a scalar, (B, 1) or (B, L)"
        )
    g = g.to(device=x.device, dtype=torch.float64)
    if not bool(torch.isfinite(g).all()):
        raise ValueError(f"{name} contains non-finite values; pass finite log-SNR values")
    return g.expand(x.shape)
