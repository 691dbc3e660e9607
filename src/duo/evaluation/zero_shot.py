"""Zero-shot perplexity: the perplexity bound on corpora the model was not trained on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .perplexity import PerplexityResult, corpus_perplexity

# The paper's seven (MATH.md section 9), by registered corpus name. WikiText-2 and
# WikiText-103 share their validation and test sets, so the smaller download serves.
ZERO_SHOT_CORPORA: tuple[str, ...] = (
    "ptb",
    "wikitext-2",
    "lm1b",
    "lambada",
    "ag_news",
    "scientific_papers_pubmed",
    "scientific_papers_arxiv",
)


@dataclass(frozen=True)
class Skipped:
    """A corpus the suite could not evaluate (offline, missing file, too short...)."""

    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"skipped": self.reason}


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def zero_shot(
    loaded,
    corpora: Sequence[str] = ZERO_SHOT_CORPORA,
    *,
    split: str | None = None,
    **options: Any,
) -> dict[str, PerplexityResult | Skipped]:
    """Perplexity on each corpus (registered names or local files, read whole);
    ``options`` are :func:`corpus_perplexity`'s (seq_len, batch_size, max_batches, seed,
    device, progress, ...).

    A corpus that cannot be loaded (no network, missing file...) is reported as
    :class:`Skipped` with the reason; the others still run.
    """
    results: dict[str, PerplexityResult | Skipped] = {}
    for name in corpora:
        try:
            results[name] = corpus_perplexity(loaded, name, split, desc=f"zero-shot {Path(name).name}", **options)
        except (KeyboardInterrupt, torch.cuda.OutOfMemoryError):
            raise
        except Exception as err:  # noqa: BLE001 - one bad corpus must not sink the suite
            results[name] = Skipped(_one_line(err))
    return results
