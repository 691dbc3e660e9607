"""Atomic writes: a crash mid-write never leaves a half-written file under the final name.

Temporary files are named ``.<name>.<random>.tmp`` next to their target; a process killed
mid-write leaves one behind, which :func:`remove_stale_temp_files` clears on the next start.
Written files get the user's umask (``mkstemp`` alone would make them 0600).
"""

from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """What ``open(path, "w")`` would give a new file: 0o666 less the umask."""
    return 0o666 & ~_umask()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it over
    ``path``. On an exception the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as err:  # name the file the caller asked for, not a temp name
        raise OSError(err.errno, err.strerror, str(path)) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, default_file_mode())
        os.replace(tmp_path, path)
    except OSError as err:
        tmp_path.unlink(missing_ok=True)
        if err.filename in (str(tmp_path), tmp_path, None) and err.errno is not None:
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """For writing a whole folder at ``path``: refuse one that exists and is not an empty
    folder (a one-line ValueError, before any work), then yield a temporary path beside it
    (not created yet) for the caller to fill. On success it is renamed to ``path``; on any
    exception it is removed, so a failed write never leaves a half-written folder."""
    import shutil

    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValueError(f"output {str(path)!r} already exists and is not empty; pass a new folder")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        if path.exists():
            path.rmdir()
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def is_temp_file(path: Path) -> bool:
    """A temporary file of :func:`atomic_path` (``.<name>.<random>.tmp``)."""
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX) and path.name.count(".") >= 3


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete the temporary files that killed writes left under ``directory`` (recursively).
    Call it only while no other process writes there (e.g. holding the run directory lock)."""
    removed = []
    root = Path(directory)
    if not root.is_dir():
        return removed
    for p in root.rglob(f".*{TEMP_SUFFIX}"):
        if p.is_file() and is_temp_file(p):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


# errno -> the cause in words, for one-line error messages.
_CAUSES = {
    errno.ENOSPC: "no space left on the device; free some space or write elsewhere",
    errno.EDQUOT: "disk quota exceeded; free some space or write elsewhere",
    errno.EACCES: "permission denied; check the permissions or pick another path",
    errno.EPERM: "operation not permitted; check the permissions or pick another path",
    errno.EROFS: "read-only file system; write elsewhere (e.g. out=... or run_dir=...)",
    errno.ENOTDIR: "a part of the path is a file, not a directory; pick another path",
    errno.EISDIR: "is a directory, not a file",
    errno.ENOENT: "no such file or directory",
    errno.EEXIST: "already exists",
    errno.EIO: "input/output error (failing disk?)",
    errno.ENAMETOOLONG: "file name too long",
    errno.EMFILE: "too many open files",
}


def describe_os_error(err: OSError, path: str | Path | None = None) -> str:
    """``<path>: <cause>`` in one line, e.g. ``'runs/x/eval/results.json': no space left ...``."""
    where = path if path is not None else (err.filename or "")
    cause = _CAUSES.get(err.errno) if err.errno is not None else None
    if cause is None:
        cause = (err.strerror or str(err) or type(err).__name__).splitlines()[0]
    return f"{str(where)!r}: {cause}" if where else cause


# ----------------------------------------------------------------------------
# One writer per run directory


class RunDirBusy(ValueError):
    """Another live process holds the run directory's lock."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class RunDirLock:
    """``<run_dir>/.duo.lock``: a kernel lock (``flock``) on the file, which also holds
    ``pid host`` for messages. The kernel drops the lock when its process dies, so a crash
    leaves no stale lock and two processes can never both hold it. A file naming a live
    process on this host that holds no kernel lock (a hand-made lock or an older duo) is
    respected too. A busy lock makes :meth:`acquire` raise :class:`RunDirBusy` in one line."""

    NAME = ".duo.lock"

    def __init__(self, run_dir: str | Path, command: str = "duo train") -> None:
        self.path = Path(run_dir) / self.NAME
        self.command = command
        self.held = False
        self.took_over: str | None = None  # "pid N on host H" of a stale lock that was replaced
        self._fd: int | None = None

    def _owner(self) -> tuple[int | None, str]:
        try:
            text = self.path.read_text().split()
        except (FileNotFoundError, UnicodeDecodeError):
            return None, ""
        pid = int(text[0]) if text and text[0].isdigit() else None
        return pid, text[1] if len(text) > 1 else ""

    def _busy(self, pid: int | None, host: str) -> RunDirBusy:
        who = f"pid {pid} on host {host}" if pid is not None else "another process"
        return RunDirBusy(
            f"run directory {str(self.path.parent)!r} is in use by {self.command} ({who}); wait for it to "
            f"finish, pick another run_dir=, or delete {str(self.path)!r} if that process is gone"
        )

    def acquire(self) -> "RunDirLock":
        import fcntl
        import socket

        if self.held:
            return self
        host = socket.gethostname()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, default_file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._busy(*self._owner()) from None
        pid, owner_host = self._owner()  # under the kernel lock: no one else writes it now
        if pid is not None and pid != os.getpid() and owner_host == host and _pid_alive(pid):
            os.close(fd)  # releases the kernel lock
            raise self._busy(pid, owner_host)
        if pid is not None and pid != os.getpid():
            self.took_over = f"pid {pid} on host {owner_host}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {host}\n".encode(), 0)
        self._fd, self.held = fd, True
        return self

    def release(self) -> None:
        # The file stays (deleting it would let a waiting process lock an unlinked inode
        # while a third creates a new file); emptied, it names no owner.
        if self.held and self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
        self._fd, self.held = None, False

    def __enter__(self) -> "RunDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _os_error_behind(err: BaseException) -> OSError | None:
    seen = err
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def atomic_torch_save(obj, path: str | Path) -> None:
    """``torch.save`` through :func:`atomic_path`. Writes go through a Python file, so a
    full disk or a revoked permission surfaces as the ``OSError`` naming the path and
    its errno (torch alone reports ``unexpected pos ...``)."""
    import shutil

    import torch

    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as fh:
                torch.save(obj, fh)
        except RuntimeError as err:
            cause = _os_error_behind(err)
            if cause is not None:
                raise OSError(cause.errno, cause.strerror, str(path)) from None
            try:
                full = shutil.disk_usage(path.parent).free < 1 << 20
            except OSError:
                full = False
            if full:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
            raise
