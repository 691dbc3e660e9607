"""Bad inputs and faults tried through the ``duo`` CLI, each in a subprocess, classified:
``clean`` (non-zero exit, one ``duo <cmd>: error:`` line, no traceback), ``traceback`` or
``silent`` (exit 0 although the input was bad or the fault fatal). Writes
benchmarks/results/faults.json; docs/reliability.md tabulates it.

    python benchmarks/faults.py            # ~4 minutes on CPU
    python benchmarks/faults.py --only latin-1,zero-shot  # those cases only; prints, writes nothing
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import tiny_overrides, write_tiny_corpus  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "faults.json"


def duo(*argv: str, prelude: str = "", stdin=None) -> subprocess.CompletedProcess:
    code = prelude + "import sys\nfrom duo.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=600,
                          stdin=stdin)


def classify(proc: subprocess.CompletedProcess, command: str) -> str:
    err = proc.stderr
    if "Traceback" in err:
        return "traceback"
    if proc.returncode == 0:
        return "silent"
    lines = [line for line in err.splitlines() if line.strip()]
    if lines and lines[-1].startswith(f"duo {command}: error: ") and \
            sum(line.startswith(f"duo {command}: error") for line in lines) == 1:
        return "clean"
    return "unclear"


def main(only: str | None = None) -> None:
    work = Path(tempfile.mkdtemp(prefix="duo-faults-"))
    os.environ["DUO_CACHE"] = str(work / "cache")
    corpus = write_tiny_corpus(work / "tiny.txt")
    cache = str(work / "cache")

    def train_args(run: Path, steps: int = 4, *extra: str) -> list[str]:
        return tiny_overrides(corpus, cache, run, f"trainer.max_steps={steps}", "trainer.ckpt_every=2",
                              "algo.curriculum=none", "trainer.batch_size=4", *extra)

    base = work / "base"
    t0 = time.time()
    proc = duo("-q", "train", *train_args(base))
    assert proc.returncode == 0, proc.stderr

    def fresh(name: str) -> Path:
        run = work / name
        shutil.copytree(base, run)
        return run

    def truncate(run: Path, keep: float) -> None:
        p = run / "checkpoints" / "last.ckpt"
        data = p.read_bytes()
        p.write_bytes(data[:int(len(data) * keep)])

    def flip(run: Path) -> None:
        import zipfile

        p = run / "checkpoints" / "last.ckpt"
        with zipfile.ZipFile(p) as zf:
            info = next(i for i in zf.infolist() if "/data/" in i.filename and i.file_size >= 64)
        data = bytearray(p.read_bytes())
        at = info.header_offset + 30 + int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little") \
            + int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little") + 8
        data[at:at + 4] = bytes(b ^ 0xFF for b in data[at:at + 4])
        p.write_bytes(bytes(data))

    def evil(run: Path) -> None:
        import torch

        p = run / "checkpoints" / "last.ckpt"
        ckpt = torch.load(p, weights_only=True)
        ckpt["evil"] = subprocess.Popen
        torch.save(ckpt, p)
        for q in (run / "checkpoints").glob("step_*.ckpt"):
            q.unlink()

    enospc = ("import errno, torch\n"
              "def full(obj, fh):\n    fh.write(b'PK'); raise OSError(errno.ENOSPC, 'No space left on device')\n"
              "torch.save = full\n")
    unwritable = "/dev/null/out" if os.geteuid() == 0 else None
    if unwritable is None:
        ro = work / "readonly"
        ro.mkdir()
        ro.chmod(0o500)
        unwritable = str(ro / "out")

    cases: list[tuple[str, str, str, callable]] = []  # (kind, name, command, run -> proc)

    def case(kind, name, command):
        def add(fn):
            cases.append((kind, name, command, fn))
            return fn
        return add

    bad_train = [
        ("trainer.devices=0", ()), ("trainer.devices=-2", ()), ("trainer.devices=[]", ()),
        ("trainer.accelerator=quantum", ()), ("trainer.precision=bf17", ()), ("trainer.beta2=1.5", ()),
        ("trainer.grad_clip=-1", ()), ("trainer.max_steps=0", ()), ("trainer.lr=0", ()),
        ("trainer.ema=1", ()), ("data.seq_len=64", ()), ("data.seq_len=0", ()), ("algo=nope", ()),
        ("model=huge", ()), ("trainer.nope=1", ()), ("trainer.micro_batch_size=5", ()),
    ]
    for override, _ in bad_train:
        case("bad input", f"train {override}", "train")(
            lambda o=override: duo("-q", "train", *train_args(work / "bad" / o.replace("=", "_"), 2, o)))
    bad_sample = ["batch_size=0", "seq_len=0", "steps=0", "sampler=nope", "top_p=1.5", "num_samples=-1",
                  "sampler=psi eta=5", "device=cuda:9", "checkpoint="]
    for args in bad_sample:
        case("bad input", f"sample {args}", "sample")(
            lambda a=args: duo("sample", f"checkpoint={base}" if a != "checkpoint=" else "checkpoint=",
                               *[x for x in a.split() if x != "checkpoint="]))
    latin1 = work / "latin1.jsonl"
    latin1.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    case("bad input", "train data=<a .jsonl with a latin-1 line>", "train")(
        lambda: duo("-q", "train", *tiny_overrides(str(latin1), cache, work / "bad" / "latin1")))
    for args in ["metrics=nope", "max_batches=0", "checkpoint=/nonexistent"]:
        case("bad input", f"eval {args}", "eval")(
            lambda a=args: duo("eval", *([f"checkpoint={base}"] if not a.startswith("checkpoint") else []), a))
    for keep in (0.0, 0.01, 0.5, 0.99):
        case("fault", f"sample from last.ckpt truncated to {keep:.0%}", "sample")(
            lambda k=keep: (truncate(r := fresh(f"trunc{k}"), k), duo("sample", f"checkpoint={r}", "steps=2"))[1])
    case("fault", "eval with flipped bytes in a weight", "eval")(
        lambda: (flip(r := fresh("flip")), duo("eval", f"checkpoint={r}", "max_batches=1"))[1])
    case("fault", "resume from a checkpoint whose pickle would run code", "train")(
        lambda: (evil(r := fresh("evil")), duo("-q", "train", *train_args(r, 6)))[1])

    def busy():
        r = fresh("busy")
        holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        (r / ".duo.lock").write_text(f"{holder.pid} {socket.gethostname()}\n")
        try:
            return duo("-q", "train", *train_args(r, 6))
        finally:
            holder.kill()
            holder.wait()
    case("fault", "second duo train on a run_dir in use", "train")(busy)
    case("fault", "resume into another model size", "train")(
        lambda: duo("-q", "train", *train_args(fresh("size"), 6, "model.n_blocks=2")))
    case("fault", "disk full (ENOSPC) while writing a checkpoint", "train")(
        lambda: duo("-q", "train", *train_args(fresh("full"), 6), prelude=enospc))
    case("fault", "zero-shot offline: every corpus skipped", "eval")(  # conftest set HF_HUB_OFFLINE=1
        lambda: duo("eval", f"checkpoint={base}", "metrics=zero-shot", "corpora=ptb,wikitext-2",
                    f"out={work / 'zs'}"))
    case("fault", "read-only output for duo sample", "sample")(
        lambda: duo("sample", f"checkpoint={base}", "steps=2", f"out={unwritable}/s.jsonl"))
    case("fault", "read-only output for duo eval", "eval")(
        lambda: duo("eval", f"checkpoint={base}", "max_batches=1", f"out={unwritable}"))
    case("fault", "read-only run_dir for duo train", "train")(
        lambda: duo("-q", "train", *train_args(Path(unwritable) / "run", 2)))

    # Recoveries: these must succeed (exit 0) and say so.
    recoveries = []

    def killed_write():
        r = fresh("killed")
        (r / "checkpoints" / ".last.ckpt.k1ll3d.tmp").write_bytes(b"PK partial")
        truncate(r, 0.0)
        p = duo("train", *train_args(r, 6, "trainer.progress_bar=false"))
        ok = p.returncode == 0 and "step_4.ckpt (step 4)" in p.stderr and not list(r.rglob(".*.tmp"))
        steps = [json.loads(x)["step"] for x in (r / "metrics.jsonl").read_text().splitlines()
                 if json.loads(x)["split"] == "train"]
        return ok and steps == sorted(set(steps))
    recoveries.append(("empty last.ckpt + temp file of a killed write: resumes from step_4, no repeated step",
                       killed_write))

    if only is not None:  # a few cases, printed only: faults.json stays the full run's
        words = only.split(",")
        cases = [c for c in cases if any(w in c[1] for w in words)]
        recoveries = [r for r in recoveries if any(w in r[0] for w in words)]
    results = []
    for kind, name, command, fn in cases:
        proc = fn()
        outcome = classify(proc, command)
        lines = [x for x in proc.stderr.splitlines() if x.strip()]
        results.append({"kind": kind, "case": name, "outcome": outcome, "exit": proc.returncode,
                        "message": lines[-1] if lines else ""})
        print(f"{outcome:9s} {name}: {results[-1]['message'][:140]}", flush=True)
    for name, fn in recoveries:
        ok = fn()
        results.append({"kind": "recovery", "case": name, "outcome": "recovered" if ok else "failed"})
        print(f"{'recovered' if ok else 'FAILED':9s} {name}", flush=True)
    summary = {}
    for r in results:
        s = summary.setdefault(r["kind"], {})
        s[r["outcome"]] = s.get(r["outcome"], 0) + 1
    if only is not None:
        print(json.dumps(summary))
        shutil.rmtree(work, ignore_errors=True)
        return
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"summary": summary, "cases": results, "seconds": round(time.time() - t0, 1),
                               "as_root": os.geteuid() == 0}, indent=2) + "\n")
    print(json.dumps(summary))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma list: run only the cases whose name contains one (nothing is written)")
    main(parser.parse_args().only)
