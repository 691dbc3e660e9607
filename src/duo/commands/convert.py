"""``duo convert SRC OUT [weights=ema|raw] [algo=...] [tokenizer=...]``

Reads a published artifact (an official Lightning ``.ckpt``, a Hugging Face folder,
``hf:<repo_id>``) or a duo run, and writes a duo model folder (``model.safetensors``,
``config.yaml``, ``tokenizer/``) that ``duo sample checkpoint=OUT`` and
``duo.checkpoints.load_checkpoint`` read without the original code or pickles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..utils.io import atomic_dir
from .common import parse_positional

USAGE = "duo convert SRC OUT [weights=ema|raw] [algo=duo|mdlm|ar] [tokenizer=...] [device=...]"


@dataclass
class ConvertArgs:
    src: str | None = None  # what to convert: an official .ckpt, a Hugging Face folder, hf:<repo_id> or a duo run
    out: str | None = None  # the duo model folder to write (new or empty)
    weights: str = "ema"  # ema or raw
    algo: str | None = None  # duo, mdlm or ar (default: what the artifact says)
    tokenizer: str | None = None  # the tokenizer to pair with the weights (default: the artifact's)
    device: str = "cpu"

    def validate(self) -> "ConvertArgs":
        if self.weights not in ("ema", "raw"):
            raise ValueError(f"weights={self.weights!r} must be ema or raw")
        return self


def parse(args: list[str]) -> ConvertArgs:
    """``SRC OUT`` (or ``src=`` / ``out=``), then ``key=value`` (``ConvertArgs`` fields)."""
    named = {k for k in ("src", "out") if any(a.startswith(f"{k}=") for a in args)}
    paths, (a,), _ = parse_positional(args, "convert", 2 - len(named), USAGE, ConvertArgs)
    rest = iter(paths)
    for key in ("src", "out"):
        if key not in named:
            setattr(a, key, next(rest))
    if not a.src or not a.out:
        raise ValueError(f"usage: {USAGE}")
    return a


def main(args: list[str]) -> int:
    from ..checkpoints import export_pretrained, load_checkpoint

    a = parse(args)
    out = Path(a.out).expanduser()
    # Written beside OUT and renamed into place: a failed export leaves no half-written model.
    with atomic_dir(out) as tmp:
        tokenizer = None
        if a.tokenizer:
            from ..data import get_tokenizer

            tokenizer = get_tokenizer(a.tokenizer)
        loaded = load_checkpoint(a.src, use_ema=a.weights == "ema", tokenizer=tokenizer, algo=a.algo,
                                 device=a.device)
        export_pretrained(loaded, tmp)
    meta = loaded.metadata
    print(f"converted {a.src} ({loaded.algo}, {meta.get('layout', 'duo')} layout, "
          f"{meta.get('weights', a.weights)} weights, "
          f"tokenizer {getattr(loaded.tokenizer, 'name', '?')} with {loaded.tokenizer.vocab_size} ids) -> {out}")
    return 0
