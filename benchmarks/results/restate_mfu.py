"""Restate the recorded MFU figures under the strict FLOP count (duo.models.flops).

    PYTHONPATH=src python benchmarks/results/restate_mfu.py > benchmarks/results/mfu_strict.md

Up to the sixth session, benchmarks/train_throughput.py counted 6 N + 12 n_blocks L D per
token with N every non-embedding parameter, so the per-sequence layers (sigma_map and the
adaLN_modulation layers) were counted once per token. The strict count takes them once per
sequence. For each recorded row of small (B x L, K, tokens/s, MFU) this prints the MFU
recomputed with the old count (a check against the recorded figure) and with the strict one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from duo.models import get_model_config
from duo.models.flops import flop_count, loose_flops_per_token

PEAK = 989e12  # H100 SXM dense bf16, as train_throughput.py --peak-tflops
HERE = Path(__file__).parent
# raw train_throughput.py tables (rows "| small | duo | ... | B x L | K | step | tokens/s | ...")
TABLES = ["h100-2026-11-27-session6/mfu.md", "h100-2026-11-27-session6/recheck_4b1f8d9.md",
          "h100-2026-11-27/mfu.md", "h100-2026-11-27/suite_run1.md", "gpu_perf.md"]
QUOTED = "h100_session2_train_throughput_quoted.md"  # B x L = 16 x 1024, K = 50,257
NUMBER = re.compile(r"^\d{1,3}(,\d{3})+$")


def ratio(vocab: int, seq_len: int) -> tuple[float, float, float]:
    cfg = get_model_config("small", vocab_size=vocab, max_seq_len=seq_len)
    strict, loose = flop_count(cfg, seq_len).per_token, loose_flops_per_token(cfg, seq_len)
    return strict, loose, strict / loose


def _label(cells: list[str]) -> str:
    """compile, loss, chunk columns of a train_throughput row, e.g. 'compiled, fused, 2^31'."""
    out = ["compiled" if cells[0] == "True" else "eager"] + cells[1:2]
    if len(cells) > 2:
        chunk = cells[2]
        out.append(f"2^{int(chunk).bit_length() - 1}" if chunk.isdigit() else chunk)
    return ", ".join(out)


def rows():
    for name in TABLES + [QUOTED]:
        for line in (HERE / name).read_text().splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            mfu = [c for c in cells if c.endswith("%")]
            tok = [c for c in cells if NUMBER.match(c)]
            if not (mfu and tok):
                continue
            if cells[0] == "small":
                i = next(i for i, c in enumerate(cells) if re.match(r"^\d+ x \d+$", c))
                batch, seq_len = map(int, cells[i].split(" x "))
                vocab, label = int(cells[i + 1]), _label(cells[3:i])
            elif name == QUOTED:
                batch, seq_len, vocab, label = 16, 1024, 50257, " ".join(cells[:2])
            else:
                continue
            yield name, label, batch, seq_len, vocab, int(tok[0].replace(",", "")), mfu[0]


def main() -> None:
    print("Recorded MFU of small restated under the strict FLOP count (peak 989 TFLOP/s).\n")
    for vocab, seq_len in ((50257, 1024), (4096, 1024)):
        s, lo, r = ratio(vocab, seq_len)
        print(f"- K = {vocab}, L = {seq_len}: strict {s / 1e9:.4f} GFLOP/token, old "
              f"{lo / 1e9:.4f}, strict / old = {r:.5f}")
    print("\n| raw file | variant | B x L | K | tokens/s | MFU recorded | MFU old count "
          "(recomputed) | MFU strict |\n|---|---|---|---|---:|---:|---:|---:|")
    for name, label, batch, seq_len, vocab, tok_s, mfu in rows():
        s, lo, _ = ratio(vocab, seq_len)
        print(f"| {name} | {label} | {batch} x {seq_len} | {vocab} | {tok_s:,} | {mfu} | "
              f"{tok_s * lo / PEAK:.1%} | {tok_s * s / PEAK:.1%} |")
    # duo train on the GPU, sixth session: small, built-in corpus (K = 4,096), 16 x 1024
    s, lo, _ = ratio(4096, 1024)
    print("\n`duo train` on the GPU (h100-2026-11-27-session6/metrics.jsonl, small, K = 4096, "
          "16 x 1024, whole Lightning step):\n\n| step | phase | tokens/s | MFU old count | "
          "MFU strict |\n|---|---|---:|---:|---:|")
    for line in (HERE / "h100-2026-11-27-session6/metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        if m.get("split") == "train":
            phase = "curriculum" if m["phase_curriculum"] else "discrete"
            print(f"| {m['step']} | {phase} | {m['tok_per_s']:,.0f} | {m['tok_per_s'] * lo / PEAK:.1%} "
                  f"| {m['tok_per_s'] * s / PEAK:.1%} |")


if __name__ == "__main__":
    main()
