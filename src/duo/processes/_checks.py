"""Input checks shared by the processes (one-line errors naming the value)."""

from __future__ import annotations

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


def check_ids(z: Tensor, vocab_size: int, name: str) -> None:
    if z.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name} has dtype {z.dtype}; expected integer token ids (B, L)")
    if z.dim() != 2:
        raise ValueError(f"{name} has shape {tuple(z.shape)}; expected (B, L) token ids")
    if z.numel() and (int(z.min()) < 0 or int(z.max()) >= vocab_size):
        raise ValueError(
            f"{name} holds ids in [{int(z.min())}, {int(z.max())}], outside [0, {vocab_size})"
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
