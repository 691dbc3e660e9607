"""Faults and bad inputs: each ends in one clear line, and nothing earlier is lost.

One tiny run (4 steps, checkpoints at steps 2 and 4) is trained once; each test damages
a copy of it and checks the one-line message and that the earlier files survive."""

import dataclasses
import errno
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch

from duo.checkpoints import load_checkpoint, read_checkpoint
from duo.cli import main
from duo.utils.io import RunDirBusy, RunDirLock, atomic_write_text

from conftest import tiny_overrides


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line_error(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and "weights_only=False" not in err, err
    assert lines and lines[-1].startswith(f"duo {command}: error: "), err
    assert sum(line.startswith(f"duo {command}: error") for line in lines) == 1, err
    return lines[-1]


@pytest.fixture(scope="module")
def base_run(tiny_corpus, duo_cache, tmp_path_factory):
    run = tmp_path_factory.mktemp("faults") / "run"
    assert main(["-q", "train", *_train_args(tiny_corpus, duo_cache, run, 4)]) == 0
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step_2.ckpt", "step_4.ckpt"], names
    return run


def _train_args(corpus, cache, run, steps: int) -> list[str]:
    return tiny_overrides(corpus, cache, run, f"trainer.max_steps={steps}", "trainer.ckpt_every=2",
                          "algo.curriculum=none", "trainer.batch_size=4")


@pytest.fixture
def run(base_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(base_run, copy)
    return copy


def _steps(run: Path) -> list[tuple[str, int]]:
    return [(r["split"], r["step"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def _storage_offset(path: Path) -> int:
    """Byte offset of the first weight tensor's data inside a torch zip checkpoint."""
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if "/data/" in i.filename and i.file_size >= 64)
    with open(path, "rb") as fh:
        fh.seek(info.header_offset + 26)
        n, m = int.from_bytes(fh.read(2), "little"), int.from_bytes(fh.read(2), "little")
    return info.header_offset + 30 + n + m


# ----------------------------------------------------------------------------- checksums


def test_checkpoints_carry_a_checksum(base_run):
    meta = read_checkpoint(base_run / "checkpoints" / "last.ckpt")["duo"]
    assert meta["checksum"]["algorithm"] == "sha256" and len(meta["checksum"]["digest"]) == 64


@pytest.mark.parametrize("keep", [0, 100, 0.5, -20])
def test_truncated_checkpoint_is_one_line(run, capsys, keep):
    last = run / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (len(data) + keep if keep < 0 else keep)
    last.write_bytes(data[:n])
    code, _, err = _cli(capsys, "sample", f"checkpoint={run}", "num_samples=1", "steps=2")
    line = _one_line_error(err, "sample")
    assert code == 2 and str(last) in line and ("empty" in line or "truncated" in line or "corrupt" in line), line
    load_checkpoint(run / "checkpoints" / "step_4.ckpt")  # the earlier checkpoint still loads


def test_flipped_bytes_in_a_weight_fail_the_checksum(run, capsys):
    last = run / "checkpoints" / "last.ckpt"
    data = bytearray(last.read_bytes())
    at = _storage_offset(last) + 8
    data[at:at + 4] = bytes(b ^ 0xFF for b in data[at:at + 4])
    last.write_bytes(bytes(data))
    code, out, err = _cli(capsys, "eval", f"checkpoint={run}", "max_batches=1")
    line = _one_line_error(err, "eval")
    assert code == 2 and "checksum" in line and str(last) in line and "step_" in line, line
    assert not (run / "eval").exists()  # no number printed or saved from damaged weights


def test_checkpoints_without_a_checksum_still_load(run):
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    del ckpt["duo"]["checksum"]
    torch.save(ckpt, last)
    assert load_checkpoint(run).algo == "duo"


def test_a_pickle_that_would_run_code_is_refused_in_one_line(run, capsys, tiny_corpus, duo_cache):
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    ckpt["evil"] = subprocess.Popen  # a global torch's weights_only loader refuses
    torch.save(ckpt, last)
    (run / "checkpoints" / "step_2.ckpt").unlink()
    (run / "checkpoints" / "step_4.ckpt").unlink()
    code, _, err = _cli(capsys, "-q", "train", *_train_args(tiny_corpus, duo_cache, run, 6))
    line = _one_line_error(err, "train")
    assert code == 2 and str(last) in line and "refuses" in line, line
    assert last.is_file()  # nothing overwritten


# ----------------------------------------------------------------------------- resume


def test_resume_skips_a_truncated_last_and_cleans_temp_files(run, capsys, tiny_corpus, duo_cache):
    """What a kill during a checkpoint write leaves: a partial temp file (and, had the
    rename not been atomic, a truncated last.ckpt). The rerun resumes from step_4."""
    ckpts = run / "checkpoints"
    (ckpts / ".last.ckpt.k1ll3d.tmp").write_bytes(b"PK\x03\x04 partial")
    (ckpts / "last.ckpt").write_bytes((ckpts / "last.ckpt").read_bytes()[:1000])
    code, _, err = _cli(capsys, "train", *_train_args(tiny_corpus, duo_cache, run, 6),
                        "trainer.progress_bar=false")
    assert code == 0, err
    assert f"resuming from {ckpts / 'step_4.ckpt'} (step 4)" in err
    assert "skipping a damaged checkpoint" in err and "last.ckpt" in err
    assert not list(ckpts.glob(".*.tmp"))
    assert read_checkpoint(ckpts / "last.ckpt")["global_step"] == 6
    steps = [s for split, s in _steps(run) if split == "train"]
    assert steps == sorted(set(steps)) == [1, 2, 3, 4, 5, 6]  # no step twice


def test_kill_during_the_first_checkpoint_write(tmp_path, tiny_corpus, duo_cache, base_run):
    """A real kill: a run is stopped by SIGKILL while it writes last.ckpt (its write
    blocks on a pipe); the rerun resumes from the complete step_2.ckpt."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(base_run / "checkpoints" / "step_2.ckpt", run / "checkpoints" / "step_2.ckpt")
    script = (
        "import os, sys, torch, duo.utils.io as io\n"
        "real = torch.save\n"
        "def slow(obj, fh):\n"
        "    fh.write(b'PK partial'); fh.flush(); print('writing', flush=True); os.read(0, 1)\n"
        "torch.save = slow\n"
        "from duo.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = _train_args(tiny_corpus, duo_cache, run, 4)
    proc = subprocess.Popen([sys.executable, "-c", script, "-q", "train", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ})
    watchdog = threading.Timer(300, proc.kill)  # a stuck child must not hang the suite
    watchdog.start()
    try:
        assert proc.stdout.readline().strip() == b"writing"
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()
    assert list((run / "checkpoints").glob(".*.tmp"))  # the killed write's temp file
    assert (run / ".duo.lock").is_file()  # and its lock, now stale
    out = subprocess.run([sys.executable, "-m", "duo.cli", "train", *args], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    assert "took over a stale lock" in out.stderr
    assert "resuming from" in out.stderr and "step_2.ckpt (step 2)" in out.stderr
    assert not list((run / "checkpoints").glob(".*.tmp"))
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 4


def test_rejected_resume_leaves_config_yaml_alone(run, capsys, tiny_corpus, duo_cache):
    before = (run / "config.yaml").read_text()
    code, _, err = _cli(capsys, "-q", "train", *_train_args(tiny_corpus, duo_cache, run, 6), "model.n_blocks=2")
    line = _one_line_error(err, "train")
    assert code == 2 and "another size" in line, line
    assert (run / "config.yaml").read_text() == before


def test_a_second_train_on_the_same_run_dir_refuses(run, capsys, tiny_corpus, duo_cache):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (run / ".duo.lock").write_text(f"{holder.pid} {socket.gethostname()}\n")
        before = sorted((p.name, p.stat().st_mtime_ns) for p in (run / "checkpoints").iterdir())
        code, _, err = _cli(capsys, "-q", "train", *_train_args(tiny_corpus, duo_cache, run, 6))
        line = _one_line_error(err, "train")
        assert code == 2 and "in use" in line and str(holder.pid) in line, line
        assert sorted((p.name, p.stat().st_mtime_ns) for p in (run / "checkpoints").iterdir()) == before
    finally:
        holder.kill()
        holder.wait()


def test_lock_is_released_and_stale_locks_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    tmp_path.joinpath(".duo.lock").write_text(f"{dead.pid} {socket.gethostname()}\n")
    with RunDirLock(tmp_path) as lock:
        assert lock.took_over and str(dead.pid) in lock.took_over
        assert tmp_path.joinpath(".duo.lock").read_text().split()[0] == str(os.getpid())
        with pytest.raises(RunDirBusy, match="in use"):  # the kernel lock, even in this process
            RunDirLock(tmp_path).acquire()
    assert tmp_path.joinpath(".duo.lock").read_text() == ""  # released: names no owner
    with RunDirLock(tmp_path) as again:
        assert again.took_over is None


def test_only_one_of_many_racing_processes_takes_the_lock(tmp_path):
    # Six processes try at once; with a stale lock present too. Exactly one may win.
    code = ("import sys, time; from duo.utils.io import RunDirLock, RunDirBusy\n"
            "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
            "try:\n    RunDirLock(sys.argv[1]).acquire(); print('won'); time.sleep(1.5)\n"
            "except RunDirBusy:\n    print('busy')\n")
    for stale in (False, True):
        run = tmp_path / f"race{int(stale)}"
        run.mkdir()
        if stale:
            dead = subprocess.Popen([sys.executable, "-c", "pass"])
            dead.wait()
            (run / ".duo.lock").write_text(f"{dead.pid} {__import__('socket').gethostname()}\n")
        start = time.time() + 3.0
        procs = [subprocess.Popen([sys.executable, "-c", code, str(run), str(start)], stdout=subprocess.PIPE,
                                  text=True) for _ in range(6)]
        outs = [p.communicate(timeout=60)[0].strip() for p in procs]
        assert outs.count("won") == 1, outs


# ----------------------------------------------------------------------------- I/O faults


@pytest.mark.parametrize("wrapped", [False, True])  # True: torch's own form, a RuntimeError over the OSError
def test_disk_full_during_a_checkpoint_is_one_line_and_keeps_the_last(run, capsys, monkeypatch, tiny_corpus,
                                                                       duo_cache, wrapped):
    def full(obj, fh):
        fh.write(b"PK partial")
        cause = OSError(errno.ENOSPC, "No space left on device")
        if wrapped:
            raise RuntimeError("[enforce fail at inline_container.cc] . unexpected pos 64") from cause
        raise cause

    monkeypatch.setattr(torch, "save", full)
    code, _, err = _cli(capsys, "-q", "train", *_train_args(tiny_corpus, duo_cache, run, 6))
    line = _one_line_error(err, "train")
    assert code == 1 and "no space left" in line and str(run / "checkpoints") in line, line
    monkeypatch.undo()
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert not list((run / "checkpoints").glob(".*.tmp"))


def test_disk_full_during_eval_keeps_the_earlier_results(run, capsys, monkeypatch):
    assert _cli(capsys, "eval", f"checkpoint={run}", "max_batches=1")[0] == 0
    before = (run / "eval" / "results.json").read_text()

    real = Path.write_text

    def full(self, *a, **k):  # the disk fills up when the results are written
        if "results" in self.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", full)
    code, _, err = _cli(capsys, "eval", f"checkpoint={run}", "max_batches=1")
    monkeypatch.undo()
    line = _one_line_error(err, "eval")
    assert code == 1 and "no space left" in line and "results.json" in line, line
    assert (run / "eval" / "results.json").read_text() == before


def _unwritable(tmp_path: Path) -> Path:
    """A directory this process cannot write into: chmod where that binds, else (root)
    a path under a regular file."""
    if os.geteuid() != 0:
        d = tmp_path / "readonly"
        d.mkdir()
        d.chmod(0o500)
        return d / "out"
    return Path("/dev/null") / "out"


def test_read_only_output_prints_samples_first(run, capsys, tmp_path):
    target = _unwritable(tmp_path)
    code, out, err = _cli(capsys, "sample", f"checkpoint={run}", "num_samples=2", "steps=2",
                          f"out={target / 'samples.jsonl'}")
    line = _one_line_error(err, "sample")
    assert code == 1 and str(target) in line and ("permission" in line or "not a directory" in line
                                                  or "a part of the path is a file" in line), line
    assert "--- sample 0 ---" in out and "--- sample 1 ---" in out


def test_read_only_run_dir_for_train_and_eval(run, capsys, tmp_path, tiny_corpus, duo_cache):
    target = _unwritable(tmp_path)
    code, _, err = _cli(capsys, "-q", "train", *_train_args(tiny_corpus, duo_cache, target / "run", 2))
    line = _one_line_error(err, "train")
    assert code == 1 and str(target) in line, line
    code, _, err = _cli(capsys, "eval", f"checkpoint={run}", "max_batches=1", f"out={target}")
    line = _one_line_error(err, "eval")
    assert code == 1 and str(target) in line, line


# ----------------------------------------------------------------------------- bad values


@pytest.mark.parametrize("override,expected", [
    ("trainer.devices=0", "trainer.devices=0"),
    ("trainer.devices=-3", "valid:"),
    ("trainer.accelerator=quantum", "trainer.accelerator='quantum'"),
    ("trainer.beta2=1.5", "[0, 1)"),
    ("data.seq_len=64", "data.seq_len=64 exceeds the model's maximum length 32"),
])
def test_bad_trainer_values_fail_before_any_work(override, expected, capsys, tmp_path, tiny_corpus):
    run = tmp_path / "run"
    cache = tmp_path / "cache"
    code, _, err = _cli(capsys, "-q", "train", *_train_args(tiny_corpus, str(cache), run, 2), override)
    line = _one_line_error(err, "train")
    assert code == 2 and expected in line, line
    assert not cache.exists() and not (run / "config.yaml").exists()  # no tokenizer, cache or config built


def test_files_get_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


def test_eval_results_are_merged_not_overwritten(tmp_path):
    from duo.evaluation.report import write_results

    write_results({"checkpoint": "c", "ppl": {"ppl": 2.0, "bound": True, "num_tokens": 1, "nelbo": 0.7}}, tmp_path)
    write_results({"checkpoint": "c", "gen_ppl_dummy": {"x": 1}}, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["ppl"]["ppl"] == 2.0 and saved["gen_ppl_dummy"] == {"x": 1} and len(saved["history"]) == 2


def test_command_help_lists_keys(capsys):
    code, out, _ = _cli(capsys, "train", "--help")
    assert code == 0 and "trainer.devices" in out and "data.seq_len" in out and "default" in out
    code, out, _ = _cli(capsys, "sample", "--help")
    assert code == 0 and "num_samples" in out and "default 4" in out
    code, out, _ = _cli(capsys, "-q", "eval", "-h")
    assert code == 0 and "metrics" in out


# ----------------------------------------------------------------------------- progress, splits, inputs


class _Terminal:
    """A stderr that says it is a terminal (tqdm draws its bars into it)."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True

    def text(self) -> str:
        return "".join(self.parts)


def _on_terminal(monkeypatch, *argv) -> tuple[int, str]:
    term = _Terminal()
    with monkeypatch.context() as m:
        m.setattr(sys, "stderr", term)
        code = main(list(argv))
    return code, term.text()


def test_progress_bars_on_a_terminal_only(base_run, capsys, monkeypatch, tmp_path, tiny_corpus):
    sample = ["sample", f"checkpoint={base_run}", "num_samples=3", "batch_size=2", "steps=3",
              f"out={tmp_path / 's.jsonl'}"]
    code, err = _on_terminal(monkeypatch, *sample)
    # One bar over 2 batches x 3 steps, updated in place (one line when done).
    assert code == 0 and "sampling: 100%" in err and "| 6/6 " in err and err.count("\n") == 1, err
    assert "| 0/6 " in err and "/3 " not in err, err  # from the start, not one bar per batch
    code, err = _on_terminal(monkeypatch, "eval", f"checkpoint={base_run}", "metrics=ppl,zero-shot",
                             f"corpora={tiny_corpus}", "max_batches=2", f"out={tmp_path / 'ev'}")
    assert code == 0 and "perplexity: 100%" in err and "zero-shot tiny.txt: 100%" in err and "2/2" in err, err
    capsys.readouterr()
    code, err = _on_terminal(monkeypatch, "-q", *sample)  # -q: none (not a terminal: the next tests)
    assert code == 0 and "%|" not in err, err


def _folder(root: Path, files: int = 22) -> Path:
    """``files`` text files of a few paragraphs each (a folder of notes)."""
    import random

    from conftest import WORDS

    rng = random.Random(7)
    root.mkdir()
    for i in range(files):
        paragraphs = ["\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14)))
                                for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(3, 12))]
        (root / f"note{i:02d}.txt").write_text("\n\n".join(paragraphs) + "\n")
    return root


def test_a_small_folder_holds_out_a_few_percent(tmp_path):
    from duo.data import get_corpus
    from duo.data.corpora import _content_fingerprint, read_local_documents

    folder = _folder(tmp_path / "notes")
    corpus = get_corpus(str(folder))
    train, val = list(corpus.documents("train")), list(corpus.documents("validation"))
    share = sum(map(len, val)) / (sum(map(len, val)) + sum(map(len, train)))
    assert 0.03 <= share < 0.08 and len(val) >= 2, (share, len(val))  # was one document, any size
    pieces = lambda docs: [q for d in docs for p in d.split("\n\n") for q in [p]]  # noqa: E731
    assert not set(pieces(train)) & set(pieces(val))  # no paragraph on both sides
    original = sorted(p.strip() for d in read_local_documents(folder) for p in d.split("\n\n"))
    assert sorted(pieces(train) + pieces(val)) == original  # nothing lost or repeated
    again = get_corpus(str(folder))
    assert again.documents("validation") == val and again.fingerprint == corpus.fingerprint  # deterministic
    # A new split: a new fingerprint (the caches keyed on it are rebuilt), not the whole-document one.
    assert corpus.fingerprint != _content_fingerprint("local:text", read_local_documents(folder), 0.03)


def test_zero_shot_with_every_corpus_skipped_fails_in_one_line(base_run, capsys, tmp_path, tiny_corpus):
    out = tmp_path / "ev"
    code, _, err = _cli(capsys, "eval", f"checkpoint={base_run}", "metrics=zero-shot", f"out={out}",
                        f"corpora=ptb,{tmp_path / 'missing.txt'}")  # offline (HF_HUB_OFFLINE=1), missing
    line = _one_line_error(err, "eval")
    assert code == 2 and "every corpus was skipped (2 of 2)" in line and "ptb" in line, line
    assert "offline" in line.lower() and "%|" not in err and not out.exists(), line
    code, table, err = _cli(capsys, "eval", f"checkpoint={base_run}", "metrics=zero-shot", f"out={out}",
                            f"corpora={tiny_corpus},{tmp_path / 'missing.txt'}", "max_batches=1")
    assert code == 0 and "error" not in err, err  # some ran: exit 0, the skipped one in the table
    assert "| zero-shot missing.txt | skipped" in table and "zero-shot tiny.txt" in table, table


def test_non_utf8_jsonl_names_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "notes.jsonl"
    bad.write_bytes(b'{"text": "fine"}\n{"text": "also fine"}\n{"text": "caf\xe9"}\n')
    code, _, err = _cli(capsys, "-q", "train", *tiny_overrides(str(bad), str(tmp_path / "cache"), tmp_path / "run"))
    line = _one_line_error(err, "train")
    at = bad.read_bytes().index(b"\xe9")  # the offset in the file, as for .txt files
    assert code == 2 and f"'{bad}' line 3 is not UTF-8" in line and f"byte {at}: b'\\xe9'" in line, line


def test_resume_takes_the_furthest_step_not_the_newest_file(tmp_path):
    from duo.checkpoints import find_resumable

    for name, step in (("last.ckpt", 200), ("step_100.ckpt", 100)):
        torch.save({"state_dict": {"w": torch.ones(2) * step}, "global_step": step}, tmp_path / name)
    now = time.time()
    os.utime(tmp_path / "last.ckpt", (now - 60, now - 60))  # e.g. copied without -p: older time
    os.utime(tmp_path / "step_100.ckpt", (now, now))
    path, ckpt, _ = find_resumable(tmp_path)
    assert path.name == "last.ckpt" and ckpt["global_step"] == 200


@pytest.mark.parametrize("devices,world", [("0,1", 2), ("1,", 1), ("2", 2), ([0, 1, 2], 3)])
def test_accepted_device_forms_count_their_processes(devices, world):
    """What the config check accepts, the launcher counts (the CLI gives "0,1" as a string)."""
    from duo.config import build_config
    from duo.training.run import resolve_world

    cfg = build_config(["trainer.accelerator=cpu", f"trainer.devices={devices}" if isinstance(devices, str)
                        else "trainer.devices=" + ",".join(map(str, devices))])
    if not isinstance(devices, str):
        cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, devices=devices))
    assert resolve_world(cfg) == ("cpu", world)
