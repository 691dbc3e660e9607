"""``duo eval checkpoint=<run> metrics=ppl,zero-shot,gen-ppl [data=... corpora=... judge=...]``

Prints a markdown table and writes ``results.json`` / ``results.md`` to ``<run>/eval/``
(or ``out=``). Perplexities of diffusion models are upper bounds ("<=").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..samplers import SamplingConfig
from .common import parse_args, require_checkpoint, resolve_device

METRICS = ("ppl", "zero-shot", "gen-ppl")


@dataclass
class EvalArgs:
    checkpoint: str | None = None
    metrics: str = "ppl"
    data: str | None = None  # ppl corpus: default the checkpoint's
    split: str | None = None
    corpora: str | None = None  # zero-shot: comma list; default the paper's seven
    max_batches: int | None = None
    max_documents: int | None = None
    judge: str = "gpt2-large"  # offline: an ar run directory
    judge_max_length: int | None = None
    device: str = "auto"
    out: str | None = None
    use_ema: bool = True


def parse_metrics(text: str) -> list[str]:
    names = [m.strip().replace("_", "-") for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise ValueError(f"unknown metric {bad[0] if bad else text!r}; valid metrics: {', '.join(METRICS)}")
    return list(dict.fromkeys(names))


def main(args: list[str]) -> int:
    from ..checkpoints import load_checkpoint
    from ..evaluation import (ZERO_SHOT_CORPORA, corpus_perplexity, load_judge, markdown_table, plan_sampling,
                              run_dir_of, sample_quality, write_results, zero_shot)

    # The sampling keys (also seq_len, batch_size and seed of the perplexity metrics) are
    # SamplingConfig's; eval draws 16 samples in batches of 16 unless told otherwise.
    a, sampling = parse_args(args, "eval", EvalArgs, SamplingConfig(num_samples=16, batch_size=16))
    require_checkpoint(a.checkpoint, "eval")
    metrics = parse_metrics(a.metrics)
    if sampling.num_samples < 1:
        raise ValueError(f"num_samples={sampling.num_samples} must be >= 1")
    device = resolve_device(a.device)
    loaded = load_checkpoint(a.checkpoint, use_ema=a.use_ema, device=device)
    common = dict(seq_len=sampling.seq_len, batch_size=sampling.batch_size, max_batches=a.max_batches,
                  max_documents=a.max_documents, seed=sampling.seed, device=device)
    judge = plan = None
    if "gen-ppl" in metrics:  # every user error before any long computation
        plan = plan_sampling(loaded, sampling)
        judge = load_judge(a.judge, device)
    results: dict = {"checkpoint": str(loaded.path), "algo": loaded.algo}
    if "ppl" in metrics:
        results["ppl"] = corpus_perplexity(loaded, a.data, a.split, **common).to_dict()
    if "zero-shot" in metrics:
        names = [c.strip() for c in a.corpora.split(",") if c.strip()] if a.corpora else ZERO_SHOT_CORPORA
        found = zero_shot(loaded, names, split=a.split, **common)
        results["zero_shot"] = {name: r.to_dict() for name, r in found.items()}
    if judge is not None:
        quality = sample_quality(loaded, judge, plan, judge_batch_size=sampling.batch_size, device=device,
                                 judge_max_length=a.judge_max_length)
        results["gen_ppl"] = quality.to_dict()
    out_dir = Path(a.out) if a.out else run_dir_of(loaded.path) / "eval"
    header = f"Evaluation of `{loaded.path}` ({loaded.algo})"
    json_path, _ = write_results(results, out_dir, header)
    print(markdown_table(results), end="")
    print(f"results: {json_path}")
    return 0
