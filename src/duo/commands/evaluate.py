"""``duo eval checkpoint=<run> metrics=ppl,zero-shot,gen-ppl [data=... corpora=... judge=...]``

Prints a markdown table and writes ``results.json`` / ``results.md`` to ``<run>/eval/``
(or ``out=``). Perplexities of diffusion models are upper bounds ("<=").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .sample import check_steps, parse_args, pick_sampler, resolve_device, sampler_options

METRICS = ("ppl", "zero-shot", "gen-ppl")


@dataclass
class EvalArgs:
    checkpoint: str | None = None
    metrics: str = "ppl"
    data: str | None = None  # ppl corpus: default the checkpoint's
    split: str | None = None
    corpora: str | None = None  # zero-shot: comma list; default the paper's seven
    seq_len: int | None = None
    batch_size: int = 16
    max_batches: int | None = None
    max_documents: int | None = None
    judge: str = "gpt2-large"  # offline: an ar run directory
    judge_max_length: int | None = None
    sampler: str | None = None
    steps: int | None = None
    num_samples: int = 16
    top_p: float | None = None
    top_k: int | None = None
    eta: float | None = None
    kappa: float | None = None
    kappa_mode: str = "remdm-rescale"
    temperature: float | None = None
    seed: int = 0
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
    from ..evaluation import (ZERO_SHOT_CORPORA, corpus_perplexity, load_judge, markdown_table, run_dir_of,
                              sample_quality, write_results, zero_shot)

    a = parse_args(EvalArgs, args, "eval")
    metrics = parse_metrics(a.metrics)
    check_steps(a.steps)
    if a.batch_size < 1 or a.num_samples < 1:
        raise ValueError(f"batch_size={a.batch_size} and num_samples={a.num_samples} must be >= 1")
    device = resolve_device(a.device)
    loaded = load_checkpoint(a.checkpoint, use_ema=a.use_ema, device=device)
    common = dict(seq_len=a.seq_len, batch_size=a.batch_size, max_batches=a.max_batches,
                  max_documents=a.max_documents, seed=a.seed, device=device)
    judge = sampler = steps = options = None
    if "gen-ppl" in metrics:  # every user error before any long computation
        sampler, steps = pick_sampler(loaded, a.sampler, a.steps)
        options = sampler_options(sampler, a)
        judge = load_judge(a.judge, device)
    results: dict = {"checkpoint": str(loaded.path), "algo": loaded.algo}
    if "ppl" in metrics:
        results["ppl"] = corpus_perplexity(loaded, a.data, a.split, **common).to_dict()
    if "zero-shot" in metrics:
        names = [c.strip() for c in a.corpora.split(",") if c.strip()] if a.corpora else ZERO_SHOT_CORPORA
        found = zero_shot(loaded, names, split=a.split, **common)
        results["zero_shot"] = {name: r.to_dict() for name, r in found.items()}
    if judge is not None:
        quality = sample_quality(loaded, judge, sampler=sampler, steps=steps, num_samples=a.num_samples,
                                 batch_size=a.batch_size, seq_len=a.seq_len, seed=a.seed, options=options,
                                 judge_batch_size=a.batch_size, device=device,
                                 judge_max_length=a.judge_max_length)
        results["gen_ppl"] = quality.to_dict()
    out_dir = Path(a.out) if a.out else run_dir_of(loaded.path) / "eval"
    header = f"Evaluation of `{loaded.path}` ({loaded.algo})"
    json_path, _ = write_results(results, out_dir, header)
    print(markdown_table(results), end="")
    print(f"results: {json_path}")
    return 0
