"""Memory: what autograd keeps for backward, and the CPU allocator's reuse of freed memory."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP = 2**31 - 1  # the largest value mallopt takes: allocations up to 2 GiB reuse the heap
_tuned = False


def tune_cpu_allocator() -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the system.

    By default glibc serves every allocation over 128 KiB to 32 MiB with a fresh ``mmap``
    and unmaps it when freed, so each (B, L, K) tensor of a training or sampling step is
    mapped page by page again: at B = 16, L = 1024, K = 4,096 that was 1.7 million page
    faults per 8-step generation, about a fifth of its CPU time. Raising the mmap and trim
    thresholds serves those tensors from the heap, where freed blocks are reused. The cost
    is that a process keeps its peak heap until it exits, which suits a command-line run.

    Process-wide, so the ``duo`` command calls it and a library import does not; call it
    yourself in a script. Set ``DUO_CPU_ALLOCATOR=system`` to leave the allocator as it is.
    Returns True when the thresholds were set (glibc only: other C libraries are left alone).
    """
    global _tuned
    if _tuned:
        return True
    if os.environ.get("DUO_CPU_ALLOCATOR", "").lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, _KEEP)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP))
    return _tuned


def saved_tensor_bytes(fn: Callable[[], object]) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn()`` runs
    (counted with saved-tensor hooks; a storage saved twice counts once)."""
    import torch

    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())
