"""Atomic outputs: a prepared data set appears whole under its final name, or not at all."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
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
def atomic_file(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Yield a temporary file beside ``path`` (``mode`` "w" for UTF-8 text, "wb" for bytes); on success it
    replaces ``path``, on error it is removed, so ``path`` is never half-written."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as fp:
            yield fp
        honour_umask(Path(tmp), directory=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    contents in ``.NAME.old-PID``, which the next run puts back (:func:`recover_stale`); the temporary name carries
    the process id, so a later run can tell the debris of a killed process from the work of one still running.
    Whether ``final`` may be replaced at all is the caller's decision; a file there is never replaced.
    """
    commit = commit if commit is not None else Commit()
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not final.is_dir():
        raise FileExistsError(f"{final} exists and is not a directory; not replacing it.")
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f"{_partial_prefix(final.name)}{os.getpid()}-"))
    try:
        honour_umask(tmp, directory=True)
        yield tmp
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


def dataset_card(name: str, jsonl_name: str, description: str) -> str:
    """A fairseq2 asset card for the plugin's ``fspo_preference`` reader; ``data`` is relative to the card file."""
    return (
        f"# {description}\n"
        f"name: {name}\n"
        "dataset_family: fspo_preference\n"
        f"data: {jsonl_name}\n"
    )
