"""``duo distill checkpoint=<duo run> distill.rounds=5 distill.steps_per_round=10000 ...``"""

from __future__ import annotations

from ..utils.typed_config import ConfigError


def main(args: list[str]) -> int:
    from ..training.distill import distill

    checkpoint = [a.split("=", 1)[1] for a in args if a.startswith("checkpoint=")]
    if not checkpoint:
        raise ConfigError("duo distill needs checkpoint=<a duo run directory or .ckpt>")
    rest = [a for a in args if not a.startswith("checkpoint=")]
    result = distill(checkpoint[-1], rest)
    if not result.is_global_zero:
        return 0  # rank 0 reports for every process
    print(f"distilled model: {result.checkpoint}")
    if result.val_ppl is not None:
        print(f"validation perplexity <= {result.val_ppl:.2f}")
    for i, text in enumerate(result.samples):
        print(f"--- sample {i} ---\n{text}")
    return 0
