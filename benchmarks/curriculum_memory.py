"""Peak memory of building the curriculum's relaxed input: full (MATH.md 4) vs top-k (5).

    python benchmarks/curriculum_memory.py --vocab-size 50257 --batch 4 --length 128 --k 2

Method.
- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the
  memory allocated before the call (inputs excluded), i.e. what the allocator handed out.
- CPU: PyTorch has no allocator statistics for CPU, so the script counts tensor bytes. A
  ``TorchDispatchMode`` sees every aten op; each output whose storage is new (not an
  input's, so in-place ops and views are not double counted) adds its ``nbytes`` to a
  live total, and a finalizer on the storage subtracts them when it is freed. The peak
  of that total is reported. Scratch buffers that a single kernel allocates and frees
  internally are invisible to it, so it is a lower bound on the allocator's peak.
"Retained" is what is still live when the call returns (the model input and z_t).
Only the relaxation is measured; a model forward/backward can be added as another
entry of :func:`steps` (the planned ``--with-model`` option).
"""

from __future__ import annotations

import argparse
import platform
import time
import weakref
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from duo import relaxation
from duo.duality import gamma_range

MiB = 2**20


class LiveTensorBytes(TorchDispatchMode):
    """Peak and current bytes of tensor storages created by aten ops inside the mode."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor) and t.device.type != "meta"
        }
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key in inputs or key in self._seen or storage.nbytes() == 0:
                continue
            self._seen.add(key)
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key, storage.nbytes())
        return out


def measure(fn: Callable[[], object], device: torch.device) -> tuple[int, int, float]:
    """(peak bytes, retained bytes, seconds) of one call of ``fn``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(device) - base
        retained = torch.cuda.memory_allocated(device) - base
        del out
        return peak, retained, seconds
    with LiveTensorBytes() as counter:
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
        retained = counter.live
    del out
    return counter.peak, retained, seconds


def steps(args: argparse.Namespace, device: torch.device) -> dict[str, Callable[[], object]]:
    """The measured calls, by name, all on one synthetic batch."""
    K = args.vocab_size
    gen = torch.Generator(device=device).manual_seed(args.seed)
    x = torch.randint(0, K, (args.batch, args.length), generator=gen, device=device)
    g_min, g_max = gamma_range(K)
    gamma = torch.empty(args.batch, 1, device=device).uniform_(g_min, g_max, generator=gen)
    return {
        "full": lambda: relaxation.full_relaxation(x, gamma, K, args.tau, generator=gen),
        f"topk (k={args.k})": lambda: relaxation.topk_relaxation(
            x, gamma, K, args.tau, args.k, generator=gen
        ),
        "discrete z_t only": lambda: relaxation.sample_zt_gaussian(x, gamma, K, gen),
    }


def training_steps(args: argparse.Namespace, device: torch.device) -> dict[str, Callable[[], object]]:
    """A whole training step (loss forward + backward) of the ``--model`` preset per variant."""
    from duo.config import build_config
    from duo.methods import build_method

    K = args.vocab_size
    gen = torch.Generator(device=device).manual_seed(args.seed)
    x = torch.randint(0, K, (args.batch, args.length), generator=gen, device=device)
    t = torch.rand(args.batch, generator=gen, device=device) * 0.998 + 1e-3
    out = {}
    for label, extra in (("discrete", ["algo.curriculum=none"]),
                         ("full", ["algo.curriculum=full"]),
                         (f"topk (k={args.k})", ["algo.curriculum=topk", f"algo.curriculum_k={args.k}"])):
        cfg = build_config([f"model={args.model}", f"model.max_seq_len={args.length}", *extra,
                            "algo.curriculum_steps=1000000", f"algo.tau={args.tau}"])
        torch.manual_seed(0)
        backbone, method = build_method(cfg, K)
        backbone.to(device)
        backbone.check_inputs = False
        method.loss_chunk_elements = args.loss_chunk_elements

        def step(method=method, backbone=backbone):
            ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.no_grad()
            if device.type != "cuda":
                ctx = __import__("contextlib").nullcontext()
            with ctx:
                loss = method.training_loss({"input_ids": x}, t, step=0, generator=gen).loss
            loss.backward()
            backbone.zero_grad(set_to_none=True)
            return None

        out[f"{label} training step"] = step
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab-size", type=int, default=50257)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--tau", type=float, default=1e-3)
    ap.add_argument("--repeats", type=int, default=3, help="best time of this many calls")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--with-model", action="store_true",
                    help="also measure a whole training step (forward + backward) of --model")
    ap.add_argument("--model", default="tiny", help="model preset for --with-model")
    ap.add_argument("--loss-chunk-elements", type=int, default=2**22,
                    help="logits elements per chunk of the output layer + loss")
    args = ap.parse_args()
    device = torch.device(args.device)

    runs = steps(args, device)
    if args.with_model:
        runs.update(training_steps(args, device))
    for fn in runs.values():  # warm-up: caches, CUDA context, kernels
        fn()
    method = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "live tensor bytes"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"K={args.vocab_size}, B={args.batch}, L={args.length}, tau={args.tau}, "
          f"device={device} ({name or platform.machine()}), torch {torch.__version__}, "
          f"memory: {method}\n")
    dense = args.batch * args.length * args.vocab_size * 4
    print("| variant | peak MiB | retained MiB | peak / (B*L*K*4 bytes) | best time ms |")
    print("|---|---:|---:|---:|---:|")
    for label, fn in runs.items():
        results = [measure(fn, device) for _ in range(args.repeats)]
        peak = max(r[0] for r in results)
        retained = max(r[1] for r in results)
        best = min(r[2] for r in results)
        print(f"| {label} | {peak / MiB:.3f} | {retained / MiB:.3f} | "
              f"{peak / dense:.4f} | {best * 1e3:.2f} |")


if __name__ == "__main__":
    main()
