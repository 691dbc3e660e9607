"""Training state each rank holds under DDP and FSDP (``trainer.strategy=fsdp``).

    python benchmarks/fsdp_memory.py --preset small --devices 2          # CPU, gloo
    python benchmarks/fsdp_memory.py --preset small --devices 8 --accelerator gpu

Runs ``duo train`` for a few steps per strategy on the built-in corpus and, on every
rank, adds up the bytes of the tensors that live through a training run: parameters
and gradients (measured just before the optimiser step) and the AdamW state (after it).
Also reports each rank's peak resident memory (CPU) or peak CUDA memory (GPU), which
include activations, the data and, on CPU, the whole model built before sharding.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

RANK_SCRIPT = """
import json, resource, sys
import lightning.pytorch as pl
import torch
from duo.config import build_config
from duo.training import train

def local(t):
    return t.to_local() if hasattr(t, "to_local") else t

def nbytes(ts):
    return sum(local(t).numel() * local(t).element_size() for t in ts if t is not None)

class Measure(pl.Callback):
    def __init__(self):
        self.out = {{}}
    def on_before_optimizer_step(self, trainer, module, optimizer):
        ps = list(module.backbone.parameters())
        self.out["params"] = nbytes(ps)
        self.out["grads"] = nbytes(p.grad for p in ps)
    def on_train_batch_end(self, trainer, module, *args):
        opt = trainer.optimizers[0]
        self.out["adam"] = nbytes(v for s in opt.state.values() for v in s.values()
                                  if torch.is_tensor(v) and v.dim() > 0)
    def on_train_end(self, trainer, module):
        if torch.cuda.is_available():
            self.out["peak"] = torch.cuda.max_memory_allocated()
        else:
            self.out["peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        with open({out!r} + f"/rank{{trainer.global_rank}}.json", "w") as fh:
            json.dump(self.out, fh)

train(build_config({overrides!r}), callbacks=[Measure()])
"""


def run(strategy: str, args, work: Path) -> list[dict]:
    out = work / strategy
    out.mkdir(parents=True, exist_ok=True)
    overrides = [
        f"model={args.preset}", f"data.seq_len={args.seq_len}", f"model.max_seq_len={args.seq_len}",
        f"trainer.batch_size={args.devices}", f"trainer.max_steps={args.steps}",
        f"trainer.accelerator={args.accelerator}", f"trainer.devices={args.devices}",
        f"trainer.strategy={strategy}", "trainer.val_every=1000000", "trainer.ckpt_every=1000000",
        "trainer.progress_bar=false", "trainer.loggers=[]", "sample.num_samples=0",
        "algo.curriculum=none", f"run_dir={out / 'run'}", "trainer.resume=false",
    ]
    script = out / "rank.py"
    script.write_text(textwrap.dedent(RANK_SCRIPT.format(out=str(out), overrides=overrides)))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{strategy} run failed:\n{proc.stderr[-3000:]}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(args.devices)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--accelerator", default="cpu")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    mib = 2.0**20
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in ("ddp", "fsdp"):
            rows[strategy] = run(strategy, args, Path(tmp))
    print(f"preset {args.preset}, {args.devices} x {args.accelerator}, L = {args.seq_len}, "
          "one sequence per rank; MiB per rank (max over ranks)")
    print("| strategy | parameters | gradients | AdamW state | total | peak (whole process) |")
    print("|---|---:|---:|---:|---:|---:|")
    for strategy, ranks in rows.items():
        worst = {k: max(r[k] for r in ranks) for k in ranks[0]}
        total = worst["params"] + worst["grads"] + worst["adam"]
        print(f"| {strategy} | {worst['params'] / mib:,.1f} | {worst['grads'] / mib:,.1f} | "
              f"{worst['adam'] / mib:,.1f} | {total / mib:,.1f} | {worst['peak'] / mib:,.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "ranks": rows}, indent=1))


if __name__ == "__main__":
    main()
