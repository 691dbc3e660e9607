"""Evaluation results as JSON and a markdown table, written atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..utils.io import atomic_write_text


def run_dir_of(checkpoint_path: str | Path) -> Path:
    """The run directory a checkpoint belongs to (``<run>/checkpoints/last.ckpt`` -> ``<run>``)."""
    p = Path(checkpoint_path)
    if p.is_dir():
        return p
    return p.parent.parent if p.parent.name == "checkpoints" else p.parent


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.1f}"
    return str(value)


def _ppl_row(label: str, r: dict[str, Any]) -> list[str]:
    if "skipped" in r:
        return [label, "skipped", r["skipped"]]
    terms = ", ".join(f"{k} {_fmt(v)}" for k, v in r.get("terms", {}).items())
    where = f"{r.get('corpus')}/{r.get('split')}, {r['num_tokens']} tokens"
    if r.get("passes", 1) > 1:
        where += f" x {r['passes']} times each"
    value = f"{'<= ' if r['bound'] else ''}{r['ppl']:.2f}"
    return [label, value, f"{where}; NELBO {_fmt(r['nelbo'])} nats/token" + (f" ({terms})" if terms else "")]


def markdown_table(results: dict[str, Any]) -> str:
    """One row per number: perplexities (with "<=" for bounds), Gen PPL, entropy, speed."""
    rows = [["metric", "value", "details"]]
    if "ppl" in results:
        rows.append(_ppl_row("perplexity", results["ppl"]))
        if results["ppl"].get("diffusion_ppl") is not None:  # what the papers report
            rows.append(["perplexity, diffusion term", f"<= {results['ppl']['diffusion_ppl']:.2f}",
                         "exp of the NELBO's diffusion term alone (the papers' number; prior and "
                         "reconstruction left out)"])
    for name, r in results.get("zero_shot", {}).items():
        rows.append(_ppl_row(f"zero-shot {Path(name).name}", r))
    if "gen_ppl" in results:
        g = results["gen_ppl"]
        setting = (f"{g['sampler']}, {g['steps'] if g['steps'] is not None else 'default'} steps, "
                   f"nfe {g['nfe']}, {g.get('protocol', 'ours')} protocol")
        rows.append(["gen ppl", f"{g['gen_ppl']:.2f}", f"judge {g['judge']}; {g['num_samples']} samples x "
                     f"{g['seq_len']} tokens; {setting}"])
        rows.append(["entropy", f"{g['entropy']:.3f}", "mean unigram entropy per sample (nats)"])
        rows.append(["sampling speed", f"{g['tokens_per_second']:.1f} tok/s",
                     f"nfe {g['nfe']}, {g['seconds']:.2f} s"])
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines) + "\n"


def merge_results(old: dict[str, Any], new: dict[str, Any], stamp: str) -> dict[str, Any]:
    """Earlier results updated by ``new``, metric by metric (zero-shot corpus by corpus),
    with every run kept in ``history``: an evaluation never loses an earlier metric."""
    history = list(old.get("history") or [])
    if old and not history:  # a file from before histories: keep its run too
        history.append({"time": None, **{k: v for k, v in old.items() if k != "history"}})
    merged = {k: v for k, v in old.items() if k != "history"}
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key == "zero_shot":
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    merged["updated"] = stamp
    history.append({"time": stamp, **new})
    merged["history"] = history
    return merged


def write_results(results: dict[str, Any], out_dir: str | Path, header: str = "") -> tuple[Path, Path]:
    """``results.json`` and ``results.md`` in ``out_dir``; returns their paths. Results of
    earlier runs in the same folder are kept (merged per metric, and in ``history``)."""
    import time

    out = Path(out_dir)
    json_path, md_path = out / "results.json", out / "results.md"
    old: dict[str, Any] = {}
    if json_path.is_file():
        try:
            old = json.loads(json_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            # Unreadable: kept under another name rather than overwritten.
            json_path.replace(json_path.with_name(f"results.unreadable-{int(time.time())}.json"))
        if not isinstance(old, dict):
            old = {}
    if old and old.get("checkpoint") not in (None, results.get("checkpoint")):
        old = {"history": old.get("history") or [{"time": None, **old}]}  # another checkpoint's numbers
    merged = merge_results(old, results, time.strftime("%Y-%m-%dT%H:%M:%S"))
    atomic_write_text(json_path, json.dumps(merged, indent=2, default=str) + "\n")
    atomic_write_text(md_path, (f"{header}\n\n" if header else "") + markdown_table(merged))
    return json_path, md_path
