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
    seq_len: int | None = None,
    packing: str | None = None,
    batch_size: int = 16,
    max_batches: int | None = None,
    max_documents: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    show_progress: bool = False,
    progress: bool = False,
) -> dict[str, PerplexityResult | Skipped]:
    """Perplexity on each corpus (registered names or local files, read whole).

    A corpus that cannot be loaded (no network, missing file...) is reported as
    :class:`Skipped` with the reason; the others still run. ``progress``: a bar over
    each corpus's batches.
    """
    results: dict[str, PerplexityResult | Skipped] = {}
    for name in corpora:
        try:
            results[name] = corpus_perplexity(
                loaded, name, split, seq_len=seq_len, packing=packing, batch_size=batch_size,
                max_batches=max_batches, max_documents=max_documents, seed=seed, device=device,
                show_progress=show_progress, progress=progress, desc=f"zero-shot {Path(name).name}",
            )
        except (KeyboardInterrupt, torch.cuda.OutOfMemoryError):
            raise
        except Exception as err:  # noqa: BLE001 - one bad corpus must not sink the suite
            results[name] = Skipped(_one_line(err))
    return results
