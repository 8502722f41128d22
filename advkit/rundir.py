"""The run directory's guards: one writer at a time, and output paths checked before any work starts.

The lock is ``RUN_DIR/.advkit.lock``, held with ``flock`` for as long as a process trains there. The
kernel drops an ``flock`` when its process dies, however it dies, so a stale lock (kill -9, a node that
rebooted) is taken over without anyone deleting files; the file also names its holder (pid, host,
start time) for the message that refuses a second writer.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import tempfile
from pathlib import Path

from .errors import AdvkitError, RunDirectoryBusy

LOCK_NAME = ".advkit.lock"


class RunLock:
    """An exclusive, non-blocking lock on one run directory (which must exist)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, name_holder: bool = True) -> None:
        """Take the lock or raise ``RunDirectoryBusy`` naming the process and host that hold it.

        ``name_holder=False`` (a probe that lets go at once) leaves the file as it was.
        """
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise AdvkitError(f"cannot lock run directory {self.run_dir}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_text(fd)
            os.close(fd)
            raise RunDirectoryBusy(
                f"run directory {self.run_dir} is in use by {holder}; wait for that run to "
                "end (or stop it), or choose another --out"
            ) from None
        except OSError:  # a filesystem without flock: no protection, but no reason to refuse the run either
            pass
        self._fd = fd
        if not name_holder:
            return
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}).encode()
        with contextlib.suppress(OSError):  # the holder's name is a courtesy; a full disk must not stop here
            os.ftruncate(fd, 0)
            os.pwrite(fd, record, 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock (unbuffered: nothing left to flush)
            self._fd = None

    def __del__(self) -> None:  # a Trainer built but never fitted must not keep its directory locked
        self.release()


def check_not_busy(run_dir: str | Path) -> None:
    """Refuse early (before data and models load) when another live process holds ``run_dir``'s lock."""
    path = Path(run_dir) / LOCK_NAME
    if path.is_file():
        probe = RunLock(run_dir)
        probe.acquire(name_holder=False)
        probe.release()


def _holder_text(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"process {holder['pid']} on host {holder['host']} (since {holder['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def check_output_dir(path: str | Path, flag: str) -> None:
    """``path`` is, or can become, a folder this process can write to; else one line naming ``flag``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AdvkitError(f"{flag} {path} is a file, not a folder; choose a folder path")
    _check_writable_ancestor(path, flag, path)


def check_output_file(path: str | Path, flag: str) -> None:
    """``path`` can be written (checked before an expensive evaluation, not after it)."""
    path = Path(path)
    if path.is_dir():
        raise AdvkitError(f"{flag} {path} is a folder; give a file path")
    _check_writable_ancestor(path.parent, flag, path)


def _check_writable_ancestor(folder: Path, flag: str, target: Path) -> None:
    """The nearest existing ancestor of ``folder`` is a folder in which a file can be created."""
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise AdvkitError(f"{flag} {target}: {ancestor} is a file, not a folder")
    try:  # root passes os.access on read-only mounts and immutable folders; creating a file tells the truth
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as exc:
        raise AdvkitError(f"{flag} {target}: cannot write in {ancestor} ({exc.strerror or exc})") from None
