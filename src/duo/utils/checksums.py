"""sha256 checksums of tensors, and safetensors files that carry theirs.

A checksum covers every tensor with its key path, dtype and shape (not the metadata), so
a flipped bit in a file's weights fails loading in one line instead of sampling garbage.
``duo.checkpoints`` stores it in training checkpoints; :func:`write_safetensors` stores it
in a ``.safetensors`` file's metadata (``duo_checksum``), which :func:`read_safetensors`
verifies. This module sits in the lowest layer so that every reader (``duo.interop``'s
export loader included) verifies the same way.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from .io import atomic_path

CHECKSUM_ALGORITHM = "sha256"
METADATA_KEY = "duo_checksum"  # in a .safetensors file's metadata: "sha256:<hex digest>"


def _walk_tensors(obj: Any, prefix: str = ""):
    """``(key path, tensor)`` for every tensor in nested dicts / lists, in storage order."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk_tensors(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk_tensors(v, f"{prefix}/{i}")


def tensor_checksum(checkpoint: dict[str, Any]) -> str:
    """sha256 over every tensor of a checkpoint (weights, EMA, optimiser state; not the
    ``duo`` metadata), with its key path, dtype and shape, in key order."""
    h = hashlib.sha256()
    for key, t in _walk_tensors({k: v for k, v in checkpoint.items() if k != "duo"}):
        t = t.detach()
        if hasattr(t, "full_tensor"):  # a DTensor: the whole tensor, as a single file stores it
            t = t.full_tensor()
        t = t.cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def state_checksum(state: dict[str, torch.Tensor]) -> str:
    """The checksum of a flat state dict as a safetensors file stores it (keys sorted:
    safetensors reorders them)."""
    return tensor_checksum({"state_dict": dict(sorted(state.items()))})


def write_safetensors(state: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> Path:
    """``state`` (CPU, contiguous tensors) as a safetensors file, written atomically, with
    ``metadata`` and its checksum (:data:`METADATA_KEY`)."""
    from safetensors.torch import save_file

    path = Path(path)
    digest = state_checksum(state)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={**metadata, METADATA_KEY: f"{CHECKSUM_ALGORITHM}:{digest}"})
    return path


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors state dict, verified against the checksum :func:`write_safetensors`
    stores in its metadata (files without one load unchecked). A damaged or unreadable
    file raises a one-line ValueError naming it."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    p = Path(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            stored = (f.metadata() or {}).get(METADATA_KEY)
        state = load_file(str(p))
    except OSError:
        raise
    except Exception as err:  # noqa: BLE001 - safetensors' header / size errors
        raise ValueError(f"{str(p)!r} is corrupt or not a safetensors file ({type(err).__name__}); "
                         "export or download it again") from None
    if stored and stored.split(":", 1)[-1] != state_checksum(state):
        raise ValueError(f"{str(p)!r} fails its checksum: its weights were damaged after export; "
                         "export or copy it again")
    return state
