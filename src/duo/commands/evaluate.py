"""``duo eval checkpoint=<run> metrics=ppl,zero-shot,gen-ppl [data=... corpora=... judge=...]``

Prints a markdown table and writes ``results.json`` / ``results.md`` to ``<run>/eval/``
(or ``out=``). Perplexities of diffusion models are upper bounds ("<="). On a terminal
each metric shows a progress bar on stderr (``duo -q``: none). Zero-shot with every
corpus skipped (offline, missing files) is an error (exit 2) naming the first reason.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from ..samplers import SamplingConfig
from .common import parse_args, require_checkpoint, resolve_device

METRICS = ("ppl", "zero-shot", "gen-ppl", "lm-eval")


@dataclass
class EvalArgs:
    checkpoint: str | None = None  # a run directory, .ckpt, model folder or hf:<repo> (required)
    metrics: str = "ppl"  # comma list of ppl, zero-shot, gen-ppl
    data: str | None = None  # ppl corpus: default the checkpoint's
    split: str | None = None  # ppl / zero-shot split; default validation (or the corpus's test split)
    corpora: str | None = None  # zero-shot: comma list; default the paper's seven
    max_batches: int | None = None  # cap on perplexity batches (quick checks)
    passes: int | None = None  # ppl: times drawn per sequence; None = enough for 1,024 draws (1 on a large set)
    max_documents: int | None = None  # cap on documents read per corpus
    judge: str = "gpt2-large"  # offline: an ar run directory
    judge_max_length: int | None = None  # gen-ppl: judge context; None = the judge's own
    device: str = "auto"  # auto (cuda when available), cpu, cuda, cuda:<index>
    out: str | None = None  # results folder; None = <run>/eval (results.json merges runs)
    use_ema: bool = True  # evaluate the EMA weights (false: the raw weights)
    tasks: str | None = None  # lm-eval: comma list of lm-evaluation-harness task names
    task_path: str | None = None  # lm-eval: a folder of task YAML files (then only those tasks)
    nelbo_samples: int = 16  # lm-eval: Monte-Carlo times per loglikelihood request (diffusion)
    limit: int | None = None  # lm-eval: documents per task (quick checks)


def help_text() -> str:
    from .common import command_help

    return command_help("eval", "usage: duo eval checkpoint=<run> metrics=ppl,zero-shot,gen-ppl [key=value ...]",
                        EvalArgs, SamplingConfig(num_samples=16, batch_size=16))


def parse_metrics(text: str) -> list[str]:
    names = [m.strip().replace("_", "-") for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise ValueError(f"unknown metric {bad[0] if bad else text!r}; valid metrics: {', '.join(METRICS)}")
    return list(dict.fromkeys(names))


def main(args: list[str]) -> int:
    from ..checkpoints import load_checkpoint
    from ..cli import show_progress
    from ..evaluation import (ZERO_SHOT_CORPORA, corpus_perplexity, load_judge, markdown_table, plan_sampling,
                              run_dir_of, sample_quality, write_results, zero_shot)

    from ..recipes import expand_args

    args = expand_args("eval", args)  # recipe=NAME: the paper's evaluation settings, yours win
    # The sampling keys (also seq_len, batch_size and seed of the perplexity metrics) are
    # SamplingConfig's; eval draws 16 samples in batches of 16 unless told otherwise.
    a, sampling = parse_args(args, "eval", EvalArgs, SamplingConfig(num_samples=16, batch_size=16))
    require_checkpoint(a.checkpoint, "eval")
    metrics = parse_metrics(a.metrics)
    if a.passes is not None and a.passes < 1:  # before any loading
        raise ValueError(f"passes={a.passes} must be >= 1 (or omit it: enough for 1,024 draws)")
    if sampling.num_samples < 1:
        raise ValueError(f"num_samples={sampling.num_samples} must be >= 1")
    device = resolve_device(a.device)
    loaded = load_checkpoint(a.checkpoint, use_ema=a.use_ema, device=device)
    bars = show_progress()  # on a terminal, one bar per metric (per corpus for zero-shot); -q: none
    common = dict(seq_len=sampling.seq_len, batch_size=sampling.batch_size, max_batches=a.max_batches,
                  max_documents=a.max_documents, seed=sampling.seed, device=device, progress=bars)
    judge = plan = failed = None
    if "gen-ppl" in metrics:  # every user error before any long computation
        plan = plan_sampling(loaded, sampling)
        judge = load_judge(a.judge, device)
    results: dict = {"checkpoint": str(loaded.path), "algo": loaded.algo}
    if "lm-eval" in metrics:  # lm-evaluation-harness (the optional extra duo-lm[eval]); docs/lm_eval.md
        from ..evaluation.lm_eval_model import run_lm_eval

        results["lm_eval"] = run_lm_eval(
            loaded, [t.strip() for t in (a.tasks or "").split(",") if t.strip()], include_path=a.task_path,
            nelbo_samples=a.nelbo_samples, batch_size=sampling.batch_size or 32, limit=a.limit,
            seed=sampling.seed, sampler=sampling.sampler, steps=sampling.steps)
        for task, values in results["lm_eval"]["tasks"].items():
            print(f"lm-eval {task}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
    if "ppl" in metrics:
        results["ppl"] = corpus_perplexity(loaded, a.data, a.split, passes=a.passes, **common).to_dict()
    if "zero-shot" in metrics:
        names = [c.strip() for c in a.corpora.split(",") if c.strip()] if a.corpora else ZERO_SHOT_CORPORA
        found = zero_shot(loaded, names, split=a.split, **common)
        results["zero_shot"] = {name: r.to_dict() for name, r in found.items()}
        failed = all_skipped(found)
        if failed:
            del results["zero_shot"]
    if judge is not None:
        quality = sample_quality(loaded, judge, plan, judge_batch_size=sampling.batch_size, device=device,
                                 judge_max_length=a.judge_max_length, progress=bars)
        results["gen_ppl"] = quality.to_dict()
    if failed and not any(k in results for k in ("lm_eval", "ppl", "gen_ppl")):
        raise ValueError(failed)  # nothing was measured: one line, exit 2, no results file
    out_dir = Path(a.out) if a.out else run_dir_of(loaded.path) / "eval"
    header = f"Evaluation of `{loaded.path}` ({loaded.algo})"
    json_path, _ = write_results(results, out_dir, header)
    print(markdown_table(results), end="")
    print(f"results: {json_path}")
    if failed:  # the other metrics are saved; zero-shot still fails the command
        print(f"duo eval: error: {failed}", file=sys.stderr)
        return 2
    return 0


def all_skipped(found: dict) -> str | None:
    """The one-line reason when every zero-shot corpus was skipped (None when any ran)."""
    from ..evaluation.zero_shot import Skipped

    if not found or not all(isinstance(r, Skipped) for r in found.values()):
        return None
    name, first = next(iter(found.items()))
    hint = "; offline, pass local files instead: corpora=a.txt,b.jsonl" \
        if any(w in first.reason.lower() for w in ("offline", "connect", "network", "resolve")) else ""
    return (f"zero-shot: every corpus was skipped ({len(found)} of {len(found)}); "
            f"first, {name}: {first.reason}{hint}")
