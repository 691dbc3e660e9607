"""Evaluation in plain PyTorch: perplexity bound, zero-shot suite, generative perplexity,
unigram entropy and sampling speed (MATH.md section 9).

Typical use::

    from duo.checkpoints import load_checkpoint
    from duo.evaluation import corpus_perplexity, load_judge, sample_quality
    loaded = load_checkpoint("runs/duo-...")
    print(corpus_perplexity(loaded).display)          # "<= 123.45"
    q = sample_quality(loaded, load_judge("runs/ar-..."), steps=64)
    print(q.gen_ppl.gen_ppl, q.entropy)
"""

from .data import ALL, EvalData, eval_data
from .genppl import GenPPLResult, encode_for_judge, generative_perplexity, unigram_entropy
from .judges import CheckpointLM, EvalLM, HFCausalLM, load_judge
from .perplexity import PerplexityResult, corpus_perplexity, perplexity
from .report import markdown_table, run_dir_of, write_results
from .sampling import (SampleQuality, SamplingPlan, SamplingStats, generate_batched, pick_sampler, plan_sampling,
                       sample, sample_quality, sampling_stats)
from .zero_shot import ZERO_SHOT_CORPORA, Skipped, zero_shot

__all__ = [
    "ALL", "ZERO_SHOT_CORPORA",
    "CheckpointLM", "EvalData", "EvalLM", "GenPPLResult", "HFCausalLM", "PerplexityResult",
    "SampleQuality", "SamplingStats", "Skipped",
    "SamplingPlan", "pick_sampler", "plan_sampling", "sample", "corpus_perplexity", "encode_for_judge",
    "eval_data", "generate_batched", "generative_perplexity",
    "load_judge", "markdown_table", "perplexity", "run_dir_of", "sample_quality", "sampling_stats",
    "unigram_entropy", "write_results", "zero_shot",
]
