"""``duo convert SRC OUT [weights=ema|raw] [algo=...] [tokenizer=...]``

Reads a published artifact (an official Lightning ``.ckpt``, a Hugging Face folder,
``hf:<repo_id>``) or a duo run, and writes a duo model folder (``model.safetensors``,
``config.yaml``, ``tokenizer/``) that ``duo sample checkpoint=OUT`` and
``duo.checkpoints.load_checkpoint`` read without the original code or pickles.
"""

from __future__ import annotations

from pathlib import Path

from ..utils.io import atomic_dir

KEYS = ("src", "out", "weights", "algo", "tokenizer", "device")


def _parse(args: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    positional = []
    for arg in args:
        key, sep, text = arg.partition("=")
        if sep and key in KEYS:
            values[key] = text
        elif sep and not key.startswith(("/", ".", "~")) and "/" not in key:
            raise ValueError(f"unknown key {key!r} for duo convert; valid keys: {', '.join(KEYS)}")
        else:
            positional.append(arg)
    for key, value in zip(("src", "out"), positional):
        values.setdefault(key, value)
    if len(positional) > 2 or not values.get("src") or not values.get("out"):
        raise ValueError("usage: duo convert SRC OUT [weights=ema|raw] [algo=duo|mdlm|ar] [tokenizer=...]")
    if values.get("weights", "ema") not in ("ema", "raw"):
        raise ValueError(f"weights={values['weights']!r} must be ema or raw")
    return values


def main(args: list[str]) -> int:
    from ..checkpoints import export_pretrained, load_checkpoint

    a = _parse(args)
    out = Path(a["out"]).expanduser()
    # Written beside OUT and renamed into place: a failed export leaves no half-written model.
    with atomic_dir(out) as tmp:
        tokenizer = None
        if a.get("tokenizer"):
            from ..data import get_tokenizer

            tokenizer = get_tokenizer(a["tokenizer"])
        loaded = load_checkpoint(a["src"], use_ema=a.get("weights", "ema") == "ema", tokenizer=tokenizer,
                                 algo=a.get("algo"), device=a.get("device", "cpu"))
        export_pretrained(loaded, tmp)
    meta = loaded.metadata
    print(f"converted {a['src']} ({loaded.algo}, {meta.get('layout', 'duo')} layout, "
          f"{meta.get('weights', 'ema' if a.get('weights', 'ema') == 'ema' else 'raw')} weights, "
          f"tokenizer {getattr(loaded.tokenizer, 'name', '?')} with {loaded.tokenizer.vocab_size} ids) -> {out}")
    return 0
