"""The CPU allocator tuning: freed (B, L, K)-sized buffers are reused, not re-mapped."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")

# A step-like loop: 64 MiB intermediates made and freed 20 times; minor page faults of
# the last 10 iterations (after the heap has settled).
PROBE = """
import json, resource, sys, torch
from duo.utils.memory import tune_cpu_allocator
tuned = tune_cpu_allocator() if sys.argv[1] == "tune" else None
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x, w = torch.randn(256, 1024), torch.randn(1024, 4096)
per_step = []
for _ in range(20):
    before = faults()
    y = (x @ w).repeat(16, 1).log_softmax(-1)
    del y
    per_step.append(faults() - before)
print(json.dumps({"tuned": tuned, "faults": sum(per_step[10:])}))
"""


def _probe(mode: str, **env: str) -> dict:
    base = {k: v for k, v in os.environ.items() if k != "DUO_CPU_ALLOCATOR"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**base, **env})
    return json.loads(out.stdout)


def test_tuned_allocator_reuses_freed_buffers():
    plain, tuned = _probe("plain"), _probe("tune")
    assert tuned["tuned"] is True
    # Untuned, each 64 MiB intermediate is mapped afresh: 16,384 pages, twice a step.
    assert plain["faults"] >= 10 * 2 * 16_384 * 0.9
    assert tuned["faults"] < 0.1 * plain["faults"]


def test_system_allocator_opt_out():
    assert _probe("tune", DUO_CPU_ALLOCATOR="system")["tuned"] is False
