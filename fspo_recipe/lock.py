"""One writer per output: an exclusive lock on a run or output directory (or an output file), held while a command
writes it.

The lock is ``flock`` on a small hidden file (``DIR/.fspo.lock``, or ``.NAME.lock`` beside an output file) that
also records the holder (process id, host, command). The kernel releases the lock when its process ends, however
it ends, so a lock left by a killed run is free: the next command takes it over and says whose it was. A second
command started while the first runs is refused at once, naming the first one's process id and host. A command
that ends removes its lock file (and the directory the lock created, when nothing was written into it); a process
that locked a file just removed that way takes the lock again on a new file, so two never hold it.

On a shared file system the lock is as good as the file system's ``flock`` (NFSv4 and Lustre mounted with
``flock`` lock across machines; a file system without it locks per machine only).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, final

LOCK_NAME = ".fspo.lock"


class OutputInUseError(RuntimeError):
    """Another process writes the same output; the message names it."""


def lock_path(output: Path, *, directory: bool) -> Path:
    """The lock file of an output directory (inside it) or of an output file (beside it)."""
    return output / LOCK_NAME if directory else output.with_name(f".{output.name}.lock")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _describe(holder: dict[str, Any]) -> str:
    return (f"process {holder.get('pid')} on {holder.get('host')} ({holder.get('command') or 'a command'}, "
            f"since {holder.get('started') or 'an unknown time'})")


def _read_holder(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, 4096)
    try:
        holder = json.loads(data.decode("utf-8")) if data.strip() else {}
    except (UnicodeDecodeError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


@final
class OutputLock:
    """The exclusive lock of one output (see the module docstring); a context manager, or :meth:`acquire` /
    :meth:`release` for a lock held until the process ends."""

    def __init__(self, output: Path, command: str, *, directory: bool = True) -> None:
        self.output = output
        self.path = lock_path(output, directory=directory)
        self.command = command
        self._fd: int | None = None
        self._created = False

    def acquire(self, *, say: Any = None) -> OutputLock:
        """Take the lock or raise :class:`OutputInUseError`; ``say`` (default: a line on stderr) is told when a
        lock left by a process that is gone is taken over."""
        directory = self.path.parent
        self._created = not directory.exists()
        directory.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if not _same_file(fd, self.path):  # removed by its last holder meanwhile (see release)
                    os.close(fd)
                    continue
                self._take(fd, say)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise OutputInUseError(
                    f"{self.output} is in use by {_describe(holder) if holder else 'another process'}: one command "
                    "writes an output at a time. Wait for it to end, or choose another output."
                ) from None
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            return self
        raise OutputInUseError(f"{self.path}: the lock file keeps being removed by other processes; try again.")

    def _take(self, fd: int, say: Any) -> None:
        """Record this process as the holder of the (acquired) lock ``fd``; report a holder left by a dead one."""
        host = socket.gethostname()
        left = _read_holder(fd)
        if left and left.get("pid") != os.getpid():
            pid = left.get("pid")
            if left.get("host") == host and isinstance(pid, int) and pid_alive(pid):
                # Free by flock, yet its process runs: a file system without flock, or a reused process id. Never
                # risk two writers: say what to check.
                raise OutputInUseError(
                    f"{self.output}: its lock file {self.path} names {_describe(left)}, which is still running. "
                    f"If that process does not write {self.output}, remove {self.path} and start again."
                )
            message = (f"{self.output}: took over the lock left by {_describe(left)}, which is gone "
                       f"({'no such process' if left.get('host') == host else 'its lock was released'}).")
            (say or (lambda text: print(text, file=sys.stderr, flush=True)))(message)
        record = {"pid": os.getpid(), "host": host, "command": self.command,
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)

    def release(self) -> None:
        """Remove the lock file and release the lock; a directory the lock created that is still empty goes too
        (see the module docstring)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
            directory = self.path.parent
            if self._created and not any(directory.iterdir()):
                directory.rmdir()
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
