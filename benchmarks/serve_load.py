"""Load test of ``duo serve``: N concurrent clients for a bounded time on loopback.

    python benchmarks/serve_load.py                               # trains a tiny model first (seconds)
    python benchmarks/serve_load.py --checkpoint runs/duo-x --clients 16 --seconds 60 --steps 32

The server (``duo serve``, in its own process) listens on a free 127.0.0.1 port. Each
client sends ``POST /v1/generate`` (a quarter of them as the SSE stream) in a loop until
the time is up; the seeds come from a small set, so identical requests meet
in the queue and are batched. Reported: requests/s, p50/p95/max latency, statuses, the
share of requests served in a batch of more than one, and the two checks that every
request was answered exactly once with its own result: the server counted as many
answers and rejections as the clients received (none lost, none answered twice), and each
answer's texts equal those of the same request sent alone (none crossed).
Writes ``benchmarks/results/serve_load_<device>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
WORDS = ("the model learns to denoise tokens a uniform state diffusion corrects its own mistakes and "
         "generates text in few steps with a gaussian curriculum").split()


def tiny_checkpoint(work_dir: Path) -> Path:
    """A Duo model of the tests' size (32 hidden, 1 block, L = 32), 3 optimiser steps."""
    from duo.config import build_config
    from duo.training import train

    run_dir = work_dir / "duo"
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        return run_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    corpus = work_dir / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(300)) + "\n")
    cfg = build_config([
        f"data={corpus}", f"data.cache_dir={work_dir / 'cache'}", "data.vocab_size=300", "data.seq_len=32",
        "data.show_progress=false", "model.hidden_size=32", "model.cond_dim=16", "model.n_heads=2",
        "model.n_blocks=1", "model.max_seq_len=32", "trainer.batch_size=8", "trainer.max_steps=3",
        "trainer.warmup_steps=1", "trainer.val_every=1000", "trainer.ckpt_every=1000", "trainer.progress_bar=false",
        "trainer.loggers=[csv]", "trainer.accelerator=cpu", "trainer.devices=1", "sample.num_samples=0",
        f"run_dir={run_dir}"])
    train(cfg)
    return run_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, body: dict, stream: bool) -> tuple[int, dict | None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/v1/generate/stream" if stream else "/v1/generate", body=json.dumps(body),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200 or not stream:
            raw = resp.read()
            return resp.status, json.loads(raw) if resp.status == 200 else None
        done, kind = None, None
        for raw_line in resp:
            line = raw_line.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "done":
                done = json.loads(line[6:])
                break
        return (200 if done else 0), done
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a run directory; default: train a tiny model into --work-dir")
    parser.add_argument("--work-dir", default="runs/bench-serve")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--n", type=int, default=2, help="samples per request")
    parser.add_argument("--seeds", type=int, default=4, help="distinct seeds the clients draw from")
    parser.add_argument("--queue", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1,
                        help="the server's torch CPU threads (1: no oversubscription on a shared machine)")
    parser.add_argument("--out", help="default benchmarks/results/serve_load_<cpu|gpu>.json")
    args = parser.parse_args()

    checkpoint = args.checkpoint or str(tiny_checkpoint(Path(args.work_dir)))
    port = free_port()
    # The server in its own process, as a user runs it: the clients' threads do not share its GIL.
    server = subprocess.Popen([sys.executable, "-m", "duo.cli", "-q", "serve", f"checkpoint={checkpoint}",
                               f"port={port}", f"device={args.device}", f"queue={args.queue}",
                               f"max_samples={args.n}", f"threads={args.threads}"])
    try:
        run(args, port, checkpoint)
    finally:
        server.terminate()
        server.wait(timeout=30)


def health(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def run(args, port: int, checkpoint: str) -> None:
    deadline = time.time() + 120
    while True:
        try:
            health(port)
            break
        except OSError:
            if time.time() > deadline:
                raise SystemExit("the server did not start in 120 s")
            time.sleep(0.2)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/v1/model")
    info = json.loads(conn.getresponse().read())
    conn.close()

    def bodies(seed: int) -> dict:
        return {"prompt": "The model", "steps": args.steps, "n": args.n, "seed": seed}

    expected: dict[int, list[str]] = {}  # seed -> texts of the request sent alone (before or after the load)
    for seed in range(min(args.seeds, 8)):
        expected[seed] = post(port, bodies(seed), stream=False)[1]["texts"]
    before = health(port)

    records: list[dict] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + args.seconds

    def client(index: int) -> None:
        rng = random.Random(index)
        while time.perf_counter() < deadline:
            seed = rng.randrange(args.seeds)
            stream = rng.random() < 0.25
            start = time.perf_counter()
            status, out = post(port, bodies(seed), stream)
            record = {"status": status, "latency": time.perf_counter() - start, "stream": stream, "seed": seed,
                      "texts": out["texts"] if out else None, "batched": out["batched"] if out else 0}
            with lock:
                records.append(record)

    load_before = round(os.getloadavg()[0], 2)  # other work on a shared machine slows the server
    started = time.perf_counter()
    clients = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    wall = time.perf_counter() - started
    after = health(port)
    for r in records:  # each answer against the same request sent alone: none crossed
        if r["texts"] is not None and r["seed"] not in expected:
            expected[r["seed"]] = post(port, bodies(r["seed"]), stream=False)[1]["texts"]
        r["right"] = r["texts"] == expected.get(r["seed"])

    ok = [r for r in records if r["status"] == 200]
    latencies = sorted(r["latency"] for r in ok)
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    served = after["served"] - before["served"]
    rejected = after["rejected"] - before["rejected"]
    statuses = {str(s): sum(r["status"] == s for r in records) for s in sorted({r["status"] for r in records})}
    result = {
        "requests": len(records), "ok": len(ok), "statuses": statuses, "seconds": round(wall, 2),
        "requests_per_second": round(len(ok) / wall, 2),
        "samples_per_second": round(len(ok) * args.n / wall, 2),
        "latency_p50_ms": round(q[49] * 1000, 1), "latency_p95_ms": round(q[94] * 1000, 1),
        "latency_max_ms": round(latencies[-1] * 1000, 1) if latencies else None,
        "batched_share": round(sum(r["batched"] > 1 for r in ok) / max(len(ok), 1), 3),
        "batches": after["batches"] - before["batches"],
        "server_answered": served, "server_rejected": rejected,
        "lost": len(records) - len(ok) - rejected,
        "answered_twice_or_lost": served != len(ok),
        "wrong_result": sum(not r["right"] for r in ok),
        "settings": {"clients": args.clients, "steps": args.steps, "n": args.n, "seeds": args.seeds,
                     "queue": args.queue, "threads": args.threads, "seq_len": info["seq_len"], "device": args.device,
                     "checkpoint": "tiny (32 hidden, 1 block, L=32)" if not args.checkpoint else checkpoint},
        "machine": {"cpu_count": os.cpu_count(), "load_average_1min_before": load_before,
                    "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__},
        "date": datetime.date.today().isoformat(),
    }
    print(json.dumps(result, indent=2))
    gpu = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    out = Path(args.out) if args.out else RESULTS / f"serve_load_{'gpu' if gpu else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['requests_per_second']} requests/s, p50 {result['latency_p50_ms']} ms, p95 "
          f"{result['latency_p95_ms']} ms; lost {result['lost']}, wrong {result['wrong_result']}, "
          f"answered twice or lost: {result['answered_twice_or_lost']}; written to {out}")
    if result["lost"] or result["wrong_result"] or result["answered_twice_or_lost"]:
        raise SystemExit("FAILED: a request was lost, answered twice or answered with another's result")


if __name__ == "__main__":
    main()
