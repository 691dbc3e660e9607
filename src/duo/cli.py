"""``duo`` command line: ``duo train | sample | eval | distill`` with ``key=value`` overrides.

Examples::

    duo train                                   # tiny Duo on the built-in corpus (CPU minutes)
    duo train algo=mdlm model=small data=openwebtext trainer.devices=8
    duo train algo.curriculum=topk algo.curriculum_k=2 trainer.max_steps=20000
    duo sample checkpoint=runs/duo-... steps=64 sampler=greedy_tail num_samples=4
    duo eval checkpoint=runs/duo-... metrics=ppl,gen-ppl
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from .utils.typed_config import ConfigError

COMMANDS: dict[str, tuple[str, Callable[[list[str]], int]]] = {}


def command(name: str, help_text: str):
    def add(fn: Callable[[list[str]], int]):
        COMMANDS[name] = (help_text, fn)
        return fn

    return add


@command("train", "train a model (algo=duo|mdlm|ar, model=tiny|small|..., data=..., trainer.*=...)")
def _train(args: list[str]) -> int:
    from .config import build_config
    from .training import train

    cfg = build_config(args)
    print(f"run directory: {cfg.run_dir}")
    result = train(cfg)
    if not result.is_global_zero:
        return 0  # rank 0 reports for every process
    if result.val_ppl is not None:
        print(f"validation perplexity <= {result.val_ppl:.2f} (NELBO {result.val_nelbo:.4f} nats/token)")
    for i, text in enumerate(result.samples):
        print(f"--- sample {i} ---\n{text}")
    print(f"checkpoint: {result.checkpoint}")
    return 0


def _lazy(module: str, attr: str) -> Callable[[list[str]], int]:
    def run(args: list[str]) -> int:
        import importlib

        return getattr(importlib.import_module(module, __package__), attr)(args)

    return run


COMMANDS["sample"] = ("generate text from a checkpoint (checkpoint=..., sampler=..., steps=...)",
                      _lazy(".commands.sample", "main"))
COMMANDS["eval"] = ("evaluate a checkpoint (metrics=ppl,zero-shot,gen-ppl data=...)",
                    _lazy(".commands.evaluate", "main"))
COMMANDS["distill"] = ("distil a Duo checkpoint into a few-step sampler (checkpoint=..., distill.*=...)",
                       _lazy(".commands.distill", "main"))
COMMANDS["convert"] = ("write a published .ckpt / HF folder / hf:<repo> as a duo model folder (SRC OUT weights=ema|raw)",
                       _lazy(".commands.convert", "main"))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="duo", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(f"  {name:8s} {help_text}" for name, (help_text, _) in COMMANDS.items()),
    )
    parser.add_argument("command", choices=sorted(COMMANDS), help="what to do")
    parser.add_argument("overrides", nargs="*", help="key=value settings")
    parser.add_argument("-v", "--verbose", action="store_true", help="show full tracebacks")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return COMMANDS[ns.command][1](ns.overrides)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        if ns.verbose:
            raise
        print(f"duo {ns.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
