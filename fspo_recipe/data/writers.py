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


@contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Yield a temporary file beside ``path`` (``mode`` "w" for UTF-8 text, "wb" for bytes); on success it
    replaces ``path``, on error it is removed, so ``path`` is never half-written."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as fp:
            yield fp
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; on success it replaces ``final``, on error it is removed.

    A crash (an exception, Ctrl-C) leaves ``final`` as it was: an earlier complete output, or nothing.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.partial-"))
    try:
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
