"""Atomic outputs: a prepared data set appears whole under its final name, or not at all."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
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


def remove_stale_partials(parent: Path, name: str) -> list[Path]:
    """Remove ``.NAME.partial-PID-*`` and ``.NAME.old-PID`` left in ``parent`` by processes that no longer run
    (a SIGKILL leaves no chance to clean up); return what was removed. Live processes' directories are kept."""
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for entry in parent.iterdir():
        rest = None
        if entry.name.startswith(_partial_prefix(name)):
            rest = entry.name[len(_partial_prefix(name)) :].split("-", 1)[0]
        elif entry.name.startswith(f".{name}.old-"):
            rest = entry.name[len(f".{name}.old-") :]
        if rest is None or not rest.isdigit() or pid_alive(int(rest)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; on success it replaces ``final``, on error it is removed.

    A crash (an exception, Ctrl-C, a SIGTERM turned into an exception) leaves ``final`` as it was: an earlier
    complete output, or nothing. The temporary name carries the process id, so a later run can tell the debris of
    a killed process (:func:`remove_stale_partials`) from the work of one still running. Whether ``final`` may be
    replaced at all is the caller's decision; a file there is never replaced.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not final.is_dir():
        raise FileExistsError(f"{final} exists and is not a directory; not replacing it.")
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f"{_partial_prefix(final.name)}{os.getpid()}-"))
    try:
        honour_umask(tmp, directory=True)
        yield tmp
        old = None
        if final.exists():
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
