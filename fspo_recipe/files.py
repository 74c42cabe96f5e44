"""The plugin's file handling, one place for every stage: atomic files and directories, resumable JSON Lines
(appended as work is done; a line torn by a kill is cut off when the file is opened again), numbered checkpoints.

Pure Python (no torch, no fairseq2), so that ``data/`` can use it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from fspo_recipe.lock import pid_alive


def _umask() -> int:
    """The process umask (reading it means setting it; it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: Path, *, directory: bool) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would have: ``mkstemp``/``mkdtemp`` create 0600/0700,
    which leaves outputs unreadable to the rest of a group on a shared cluster."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that wants a file name (``torch.save``, safetensors); on
    success it replaces ``path``, on error it is removed, so ``path`` is never half-written."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        honour_umask(Path(tmp), directory=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Yield a temporary file beside ``path`` (``mode`` "w" for UTF-8 text, "wb" for bytes); on success it
    replaces ``path``, on error it is removed, so ``path`` is never half-written."""
    with atomic_path(path) as tmp, tmp.open(mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as fp:
        yield fp


def _partial_prefix(name: str) -> str:
    return f".{name}.partial-"


def recover_stale(parent: Path, name: str) -> list[str]:
    """Clean up after processes that were killed while writing ``parent/name`` (a SIGKILL leaves no chance to):
    their ``.NAME.partial-PID-*`` directories are removed, and the earlier data set a killed replacement had moved
    aside (``.NAME.old-PID``) is put back under its name when nothing is there, else removed. Debris of processes
    that still run is left alone. Returns one line per thing done."""
    done: list[str] = []
    if not parent.is_dir():
        return done
    final = parent / name
    for entry in sorted(parent.iterdir()):
        rest = None
        if entry.name.startswith(_partial_prefix(name)):
            rest = entry.name[len(_partial_prefix(name)) :].split("-", 1)[0]
        elif entry.name.startswith(f".{name}.old-"):
            rest = entry.name[len(f".{name}.old-") :]
        if rest is None or not rest.isdigit() or pid_alive(int(rest)):
            continue
        if entry.name.startswith(f".{name}.old-") and not final.exists():
            os.replace(entry, final)
            done.append(f"put {final} back from {entry}, where a run killed while replacing it had moved it")
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        done.append(f"removed {entry}, left by a process that was killed")
    return done


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM that arrive while the block runs are delivered just after it, to the handlers in place
    before (Python runs signal handlers in the main thread only, so elsewhere the block runs as it is). SIGKILL
    cannot be held, which is what :func:`recover_stale` is for."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if pending:
            signal.raise_signal(pending[0])


class Terminated(BaseException):
    """SIGTERM arrived while an :func:`atomic_directory` was being written (in a process that had left SIGTERM to
    Python's default, which ends the process at once): raised instead, so that the partial directory is removed and
    the command's locks are released on the way out. Commands report it as one line and exit 143."""


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` while the block runs, where nothing else handles it."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def terminated(signum: int, frame: object) -> None:
        raise Terminated("terminated (SIGTERM) while writing; the partial output was removed")

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class Commit:
    """Whether an :func:`atomic_directory` has put its new contents in place (a signal may still arrive after)."""

    done: bool = False
    replaced: bool = False
    """An earlier directory was replaced."""


@contextmanager
def atomic_directory(final: Path, commit: Commit | None = None) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; on success it replaces ``final``, on error it is removed.

    At every moment ``final`` holds either what it held before or the complete new contents: the two renames of a
    replacement run with SIGINT and SIGTERM held (they arrive just after), so an interrupted command leaves the old
    contents or the new, and ``commit`` (when given) says which. A SIGKILL between the renames leaves the old
    contents in ``.NAME.old-PID``, which the next run puts back (:func:`recover_stale`, also called here first); the temporary name carries
    the process id, so a later run can tell the debris of a killed process from the work of one still running.
    Whether ``final`` may be replaced at all is the caller's decision; a file there is never replaced. What ends up
    in ``final`` has the modes the umask gives (for a group sharing the output on a cluster).
    """
    commit = commit if commit is not None else Commit()
    final.parent.mkdir(parents=True, exist_ok=True)
    for line in recover_stale(final.parent, final.name):  # what a killed writer of the same output left
        print(line, file=sys.stderr, flush=True)
    if final.exists() and not final.is_dir():
        raise FileExistsError(f"{final} exists and is not a directory; not replacing it.")
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f"{_partial_prefix(final.name)}{os.getpid()}-"))
    try:
        honour_umask(tmp, directory=True)
        with _sigterm_unwinds():
            yield tmp
        for path in tmp.rglob("*"):  # some writers (safetensors) create their files 0600 whatever the umask
            if not path.is_symlink():
                honour_umask(path, directory=path.is_dir())
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        with _signals_held():
            if final.exists():
                os.replace(final, old)
                commit.replaced = True
            os.replace(tmp, final)
            commit.done = True
    except BaseException:
        if not commit.done:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if commit.done:
            shutil.rmtree(final.parent / f".{final.name}.old-{os.getpid()}", ignore_errors=True)


try:  # orjson (the `data` extra) encodes the long prompts about 5x faster than the json module
    import orjson

    def jsonl_line(record: dict[str, Any]) -> bytes:
        """One JSON line, UTF-8, ending with a newline."""
        return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)

except ImportError:  # pragma: no cover - same bytes, slower

    def jsonl_line(record: dict[str, Any]) -> bytes:
        """One JSON line, UTF-8, ending with a newline."""
        return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def complete_lines(path: Path) -> list[str]:
    """The complete lines of a JSON Lines file that a killed process may have been appending to: a last line
    without its newline (torn by the kill) is cut off the file, so that appending goes on after the last complete
    line. A missing file has none."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep < len(data):
        with path.open("r+b") as fp:
            fp.truncate(keep)
    return data[:keep].decode("utf-8").splitlines()


def keep_lines(path: Path, keep: Callable[[dict[str, Any]], bool]) -> int:
    """Rewrite ``path`` (atomically, only when something goes) with the complete JSON-object lines for which
    ``keep`` is true; a torn or unreadable line goes too. Returns the number of lines dropped."""
    if not path.is_file():
        return 0
    kept: list[str] = []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # cut by a kill mid-write
        if isinstance(record, dict) and keep(record):
            kept.append(line)
    dropped = len(lines) - len(kept)
    if dropped:
        with atomic_file(path, "w") as fp:
            fp.writelines(f"{line}\n" for line in kept)
    return dropped


def numbered(directory: Path, prefix: str = "step_", suffix: str = "") -> list[tuple[int, Path]]:
    """(N, path) of every ``PREFIX<N>SUFFIX`` entry of ``directory``, by N: the steps of a run's checkpoints."""
    if not directory.is_dir():
        return []
    pattern = re.compile(rf"{re.escape(prefix)}(\d+){re.escape(suffix)}")
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := pattern.fullmatch(p.name))]
    return sorted(found)
