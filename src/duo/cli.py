"""``duo`` command line: ``duo train | sample | eval | distill`` with ``key=value`` overrides.

Examples::

    duo train                                   # tiny Duo on the built-in corpus (CPU minutes)
    duo train algo=mdlm model=small data=openwebtext trainer.devices=8
    duo train algo.curriculum=topk algo.curriculum_k=2 trainer.max_steps=20000
    duo sample checkpoint=runs/duo-... steps=64 sampler=greedy_tail num_samples=4
    duo eval checkpoint=runs/duo-... metrics=ppl,gen-ppl
    duo -q train trainer.max_steps=100          # no progress bar: final results and errors only
    duo -q sample checkpoint=runs/duo-...       # likewise for sample and eval (see show_progress)

Console output: duo's messages (the run directory, model, data and plan, then the
progress bar) go to stderr, results to stdout. By default third-party deprecation and
user warnings are filtered here, at the entry point, not in the library that users
import; ``-v`` shows them, Lightning's INFO lines and full tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
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
    result = train(cfg)
    if not result.is_global_zero:
        return 0  # rank 0 reports for every process
    if result.val_ppl is not None:
        if result.val_ppl_bound:  # diffusion: exp(NELBO) bounds the perplexity from above
            print(f"validation perplexity <= {result.val_ppl:.2f} (NELBO {result.val_nelbo:.4f} nats/token)")
        else:  # autoregressive: the exact likelihood
            print(f"validation perplexity {result.val_ppl:.2f} (NLL {result.val_nelbo:.4f} nats/token)")
    for i, text in enumerate(result.samples):
        print(f"--- sample {i} ---\n{text}")
    print(f"checkpoint: {result.checkpoint}")
    return 0


def train_help(args: Sequence[str] = (), command: str = "train") -> str:
    """``duo train --help``: every key of the run config (the algo section of the algo
    named among ``args``, default duo; the model section with the chosen preset's values)."""
    from .commands.common import describe_keys, format_keys
    from .config import TrainerConfig
    from .data.config import DataConfig
    from .methods import METHODS, get_method_spec
    from .models import MODEL_PRESETS
    from .samplers import SamplingConfig

    given = dict(a.split("=", 1) for a in args if "=" in a)
    algo = "distill" if command == "distill" else given.get("algo", "duo")
    preset = given.get("model", "tiny")
    try:
        algo_cls = get_method_spec(algo).config_cls
    except ValueError:
        algo, algo_cls = "duo", get_method_spec("duo").config_cls
    model = MODEL_PRESETS.get(preset) or MODEL_PRESETS["tiny"]
    section = "distill." if command == "distill" else "algo."
    rows = [
        ("algo", "str", "'duo'", "the method: " + ", ".join(METHODS)),
        ("model", "str", "'tiny'", "a model preset: " + ", ".join(MODEL_PRESETS)),
        ("data", "str", "'builtin'", "a corpus name, hf:<dataset>, or a local .txt/.jsonl file or folder"),
        ("config", "str", "null", "a YAML file of settings, applied before the key=value overrides"),
        ("run_dir", "str", "runs/<algo>-<time>", "where checkpoints, metrics, plots and samples go"),
    ]
    if command == "distill":
        rows = [("checkpoint", "str", "required", "the duo run directory or .ckpt to distil"),
                ("run_dir", "str", "<run>-distilled", "where the student goes")]
    rows += [(section + k, *rest) for k, *rest in describe_keys(algo_cls)]
    rows += [("model." + k, *rest) for k, *rest in describe_keys(model)]
    rows += [("data." + k, *rest) for k, *rest in describe_keys(DataConfig)]
    rows += [("trainer." + k, *rest) for k, *rest in describe_keys(TrainerConfig)]
    rows += [("sample." + k, *rest) for k, *rest in
             describe_keys(SamplingConfig(**get_method_spec(algo).end_samples))]
    usage = (f"usage: duo {command} checkpoint=<duo run> [distill.*=... trainer.*=...]" if command == "distill" else
             "usage: duo train [algo=...] [model=...] [data=...] [section.key=value ...]")
    title = f"keys ({section}* shown for algo={algo}; model.* defaults of preset {preset!r})"
    return f"{usage}\n\n{title}:\n{format_keys(rows)}\n"


def _command_help(command: str, args: Sequence[str]) -> str:
    if command in ("train", "distill"):
        return train_help(args, command)
    import importlib

    module = importlib.import_module(LAZY_COMMANDS[command][1], __package__)
    if hasattr(module, "help_text"):
        return module.help_text()
    return (module.__doc__ or "").strip() + "\n"


def _lazy(module: str, attr: str) -> Callable[[list[str]], int]:
    def run(args: list[str]) -> int:
        import importlib

        return getattr(importlib.import_module(module, __package__), attr)(args)

    return run


# name -> (one line, module whose ``main(args)`` runs it); imported only when used.
LAZY_COMMANDS = {
    "sample": ("generate text from a checkpoint (checkpoint=..., sampler=..., steps=...)", ".commands.sample"),
    "eval": ("evaluate a checkpoint (metrics=ppl,zero-shot,gen-ppl,lm-eval data=...)", ".commands.evaluate"),
    "distill": ("distil a Duo checkpoint into a few-step sampler (checkpoint=..., distill.*=...)",
                ".commands.distill"),
    "export": ("write a run as a Hub-ready folder: config.json, model.safetensors, tokenizer, card (RUN OUT)",
               ".commands.export"),
    "push": ("export a run and upload it to the Hugging Face Hub (RUN REPO_ID [private=true])", ".commands.push"),
    "recipes": ("list the papers' settings, or show one (duo recipes [NAME]); use them as recipe=NAME",
                ".commands.recipes"),
    "convert": ("write a published .ckpt / HF folder / hf:<repo> as a duo model folder (SRC OUT weights=ema|raw)",
                ".commands.convert"),
    "serve": ("serve a page and a JSON API for a checkpoint (checkpoint=... host=127.0.0.1 port=8000)",
              ".commands.serve"),
}
for _name, (_help, _module) in LAZY_COMMANDS.items():
    COMMANDS[_name] = (_help, _lazy(_module, "main"))

QUIET, NORMAL, VERBOSE = 0, 1, 2
# Commands that train through Lightning: imported before the console is set up, so that
# its loggers (configured by Lightning at import) are set up once, here.
LIGHTNING_COMMANDS = ("train", "distill")
# Settings -q adds to a training command: no progress bars, neither Lightning's nor the data build's.
QUIET_OVERRIDES = ("trainer.progress_bar=false", "data.show_progress=false")


class _Console(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (tests swap it); levels above INFO
    are prefixed with their name."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(_ConsoleFormat())

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns one; the property ignores it
        pass


class _ConsoleFormat(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno <= logging.INFO else f"{record.levelname.lower()}: {text}"


_CONSOLE = _Console()
_VERBOSITY = NORMAL  # set by setup_console; read by show_progress


def show_progress() -> bool:
    """Whether a command draws progress bars (``duo sample``, ``duo eval``): stderr is a
    terminal and ``-q`` was not given. Training commands get -q as QUIET_OVERRIDES instead."""
    return _VERBOSITY > QUIET and sys.stderr.isatty()


def setup_console(verbosity: int = NORMAL) -> None:
    """One handler, so every message is printed once; levels and warning filters by
    verbosity. Idempotent (``main`` may run many times in one process, e.g. in tests).

    Lightning adds console handlers of its own at import (and propagates to the root's
    when the root has one: each line twice); its loggers are given this handler only,
    at WARNING (INFO with -v: GPU/TPU availability, the cloud-logging tips, ...)."""
    global _VERBOSITY
    _VERBOSITY = verbosity
    root = logging.getLogger()
    if _CONSOLE not in root.handlers:
        root.addHandler(_CONSOLE)
    root.setLevel(logging.WARNING if verbosity > QUIET else logging.ERROR)
    logging.getLogger("duo").setLevel(
        {QUIET: logging.WARNING, NORMAL: logging.INFO, VERBOSE: logging.DEBUG}[verbosity])
    lightning_level = logging.INFO if verbosity == VERBOSE else logging.WARNING
    top = logging.getLogger("lightning")
    top.handlers = [_CONSOLE]
    top.propagate = False
    top.setLevel(lightning_level)
    for name in ("lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        lg.handlers = []  # theirs, when they were imported without a root handler
        lg.propagate = True  # to "lightning" above, which stops there
        lg.setLevel(logging.NOTSET)  # "lightning"'s level
    for name in ("pytorch_lightning", "lightning_fabric"):  # the standalone packages, if installed
        lg = logging.getLogger(name)
        lg.handlers = [_CONSOLE]
        lg.propagate = False
        lg.setLevel(lightning_level)
    if verbosity == VERBOSE:
        return
    # Third-party warnings: deprecations and user warnings are the libraries' business
    # (-q: all of them); duo's own warnings stay.
    others = r"(?!duo(\.|$))"
    categories = (Warning,) if verbosity == QUIET else (DeprecationWarning, PendingDeprecationWarning,
                                                         FutureWarning, UserWarning)
    for category in categories:
        warnings.filterwarnings("ignore", category=category, module=others)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="duo", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(f"  {name:8s} {help_text}" for name, (help_text, _) in COMMANDS.items()),
    )
    parser.add_argument("command", choices=sorted(COMMANDS), help="what to do")
    parser.add_argument("overrides", nargs="*", help="key=value settings")
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true",
                      help="no progress bars: final results and errors only")
    loud.add_argument("-v", "--verbose", action="store_true",
                      help="full tracebacks, Lightning's INFO lines and every warning")
    # Intermixed: -q / -v may stand before or after the command and its overrides.
    return parser.parse_intermixed_args(argv)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # duo <command> --help: that command's keys, types, defaults (the global help otherwise).
    named = [a for a in argv if a in COMMANDS]
    if named and any(a in ("-h", "--help") for a in argv[argv.index(named[0]):]):
        rest = [a for a in argv if a not in ("-h", "--help", "-q", "--quiet", "-v", "--verbose", named[0])]
        print(_command_help(named[0], rest), end="")
        return 0
    ns = _parse(argv)
    verbosity = QUIET if ns.quiet else VERBOSE if ns.verbose else NORMAL
    overrides = list(ns.overrides)
    if ns.command in LIGHTNING_COMMANDS:
        import lightning.pytorch  # noqa: F401  (its loggers exist before setup_console)

        if verbosity == QUIET:
            overrides += QUIET_OVERRIDES
    setup_console(verbosity)
    from .utils.memory import tune_cpu_allocator

    tune_cpu_allocator()  # reuse freed (B, L, K) buffers instead of re-mapping them every step
    try:
        return COMMANDS[ns.command][1](overrides)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        if ns.verbose:
            raise
        print(f"duo {ns.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # read-only or full disk, permissions: the path and the cause
        if ns.verbose:
            raise
        from .utils.io import describe_os_error

        print(f"duo {ns.command}: error: {describe_os_error(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
