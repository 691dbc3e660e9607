"""What ``duo train`` prints: every message once, no advertisements or third-party
deprecation warnings, the run and its summary before the progress bar; ``-q`` and ``-v``;
the AR perplexity as exact; the training plot's curriculum marker."""

import os
import re
import subprocess
import sys

import pytest

from duo import cli
from duo.training.callbacks import curriculum_end_of, draw_history

from conftest import tiny_overrides

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
PROGRESS = re.compile(r"^(Epoch \d+|Validation|Training|Sanity Checking)\b|\d+(\.\d+)?(it|s)/(s|it)|\?it/s")


def duo(*args: str, timeout: float = 300) -> tuple[int, list[str]]:
    """Run the ``duo`` entry point in a fresh process, as a user does; stdout and stderr
    merged in the order they were written."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from duo.cli import main; sys.exit(main())", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=timeout,
    )
    # Progress bars redraw with carriage returns: each redraw is a line of its own here.
    lines = [ANSI.sub("", part).strip() for part in re.split(r"[\r\n]", proc.stdout)]
    return proc.returncode, lines


def messages(lines: list[str]) -> list[str]:
    """The printed lines that are not progress-bar redraws or blank."""
    return [line for line in lines if line and not PROGRESS.search(line)]


def assert_clean(lines: list[str]) -> None:
    text = "\n".join(lines)
    msgs = messages(lines)
    repeated = sorted({m for m in msgs if msgs.count(m) > 1})
    assert not repeated, f"printed more than once: {repeated}\n{text}"
    for noise in ("litlogger", "litmodels", "Tip:", "DeprecationWarning", "is deprecated", "FutureWarning"):
        assert noise not in text, f"{noise!r} in the output:\n{text}"


def tiny_run(tiny_corpus, duo_cache, run_dir, *extra: str) -> list[str]:
    return tiny_overrides(tiny_corpus, duo_cache, run_dir, "trainer.max_steps=6", "trainer.val_every=3",
                          "trainer.ckpt_every=3", "trainer.val_batches=1", *extra)


@pytest.mark.slow
def test_default_output_is_the_run_then_the_progress_bar(tiny_corpus, duo_cache, tmp_path):
    code, lines = duo("train", *tiny_run(tiny_corpus, duo_cache, tmp_path / "run", "trainer.progress_bar=true"))
    text = "\n".join(lines)
    assert code == 0, text
    assert_clean(lines)
    first_bar = next(i for i, line in enumerate(lines) if PROGRESS.search(line))
    before = "\n".join(lines[:first_bar])
    assert f"run directory: {tmp_path / 'run'}" in before, text
    assert re.search(r"^model: tiny duo, [\d.]+[KM] parameters \(1 layers x 32 wide, 2 heads, vocab [\d,]+\)$",
                     before, re.M), text
    assert re.search(r"^data: .*tiny\.txt, tokenizer .*seq_len 32 .*train [\d,]+ rows .*validation [\d,]+ rows", before,
                     re.M), text
    assert re.search(r"^training: 6 steps of batch 8 .*curriculum until step 3$", before, re.M), text
    assert f"checkpoints: {tmp_path / 'run' / 'checkpoints'}" in before, text
    # Lightning's INFO lines add nothing here; results come last.
    assert "GPU available" not in text and "`Trainer.fit` stopped" not in text
    assert re.search(r"^validation perplexity <= [\d.]+ \(NELBO", text, re.M), text
    assert messages(lines)[-1] == f"checkpoint: {tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}", text


@pytest.mark.slow
def test_quiet_prints_results_only(tiny_corpus, duo_cache, tmp_path):
    code, lines = duo("-q", "train", *tiny_run(tiny_corpus, duo_cache, tmp_path / "run", "trainer.progress_bar=true"))
    text = "\n".join(lines)
    assert code == 0, text
    assert not any(PROGRESS.search(line) for line in lines), text
    assert_clean(lines)
    msgs = messages(lines)
    assert [m.split(" ")[0] for m in msgs] == ["validation", "checkpoint:"], text


@pytest.mark.slow
def test_verbose_ar_run_shows_lightning_once_and_an_exact_perplexity(tiny_corpus, duo_cache, tmp_path):
    # -v after the command; Lightning's INFO lines appear, each once.
    code, lines = duo("train", *tiny_run(tiny_corpus, duo_cache, tmp_path / "run", "algo=ar"), "-v")
    text = "\n".join(lines)
    assert code == 0, text
    assert sum("GPU available" in line for line in lines) == 1, text
    msgs = messages(lines)
    assert len(msgs) == len(set(msgs)), text
    ppl = [m for m in msgs if m.startswith("validation perplexity")]
    assert len(ppl) == 1 and "<=" not in ppl[0] and re.match(r"validation perplexity [\d.]+ \(NLL", ppl[0]), text
    assert "curriculum" not in next(m for m in msgs if m.startswith("training:"))


@pytest.mark.parametrize("argv", [["-q", "train", "a=1"], ["train", "a=1", "-q"], ["train", "--quiet", "a=1"]])
def test_quiet_flag_goes_before_or_after_the_command(argv, monkeypatch):
    seen = []
    monkeypatch.setitem(cli.COMMANDS, "train", ("", lambda args: seen.append(args) or 0))
    assert cli.main(argv) == 0
    assert seen == [["a=1", *cli.QUIET_OVERRIDES]]


def test_quiet_and_verbose_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        cli.main(["-q", "-v", "train"])
    assert "not allowed with" in capsys.readouterr().err


def test_setup_console_is_idempotent_and_lightning_logs_once():
    import logging

    cli.setup_console(cli.VERBOSE)
    cli.setup_console(cli.VERBOSE)
    assert logging.getLogger().handlers.count(cli._CONSOLE) == 1
    # A record from inside Lightning reaches exactly one handler.
    handlers, logger = [], logging.getLogger("lightning.pytorch.utilities.rank_zero")
    while logger is not None:
        handlers += logger.handlers
        logger = logger.parent if logger.propagate else None
    assert handlers == [cli._CONSOLE]
    cli.setup_console(cli.NORMAL)
    assert not logging.getLogger("lightning.pytorch").isEnabledFor(logging.INFO)
    assert logging.getLogger("duo").isEnabledFor(logging.INFO)


def test_training_plot_marks_the_end_of_the_curriculum():
    train = [{"step": s, "loss": 2.0 if s <= 10 else 6.0, "phase_curriculum": float(s <= 10)} for s in range(1, 21)]
    val = [{"step": 10, "ppl": 300.0}, {"step": 20, "ppl": 200.0}]
    assert curriculum_end_of(train) == 11  # the first record logged after the phase
    for end, expected in ((10, 10), (None, 11)):  # given, or read from the records
        fig = draw_history(train, val, curriculum_end=end)
        for ax in fig.axes:
            marks = [line for line in ax.get_lines() if list(line.get_xdata()) == [expected, expected]]
            assert len(marks) == 1, ax.get_lines()
        assert "end of curriculum" in fig.axes[0].get_legend().get_texts()[0].get_text()
    # No curriculum, no marker.
    fig = draw_history([{"step": s, "loss": 1.0, "phase_curriculum": 0.0} for s in range(1, 5)], [])
    assert [len(ax.get_lines()) for ax in fig.axes] == [1, 0]
    assert fig.axes[0].get_legend() is None


@pytest.mark.parametrize("command", sorted(__import__("duo.cli", fromlist=["COMMANDS"]).COMMANDS))
def test_every_command_has_its_own_help(command, capsys):
    from duo.cli import main

    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.strip() and "usage: duo [-h]" not in out  # its own keys, not the global help
