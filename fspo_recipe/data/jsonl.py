"""Reading preference JSONL (``src``, ``tgt_chosen``, ``tgt_rejected`` per line): one parser for every reader."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fspo_recipe.data.episodes import prompt_parts


class PreferenceDataError(ValueError):
    """A line of a preference JSONL is malformed; the message names the file and line."""


def parse_object(line: str, path: Path, lineno: int, error: type[ValueError] = ValueError) -> dict[str, Any]:
    """One JSONL line as a JSON object; ``error`` (naming the file, line and column) otherwise."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as ex:
        raise error(f"{path}, line {lineno}, column {ex.colno}: not valid JSON ({ex.msg}).") from None
    if not isinstance(value, dict):
        raise error(f"{path}, line {lineno}: expected a JSON object.")
    return value


def object_lines(path: Path, error: type[ValueError] = ValueError) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, JSON object) for every non-blank line of ``path``; ``error`` names the file and line of a
    line that is not a JSON object, or of bytes that are not UTF-8."""
    with path.open("rb") as fp:
        for lineno, raw in enumerate(fp, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as ex:
                raise error(f"{path}: not UTF-8 text (line {lineno}, byte {ex.start + 1}: {ex.reason}).") from None
            if line.strip():
                yield lineno, parse_object(line, path, lineno, error)


def check_example(example: dict[str, Any], path: Path, lineno: int) -> dict[str, Any]:
    """``example`` (line ``lineno`` of ``path``) if it has string ``src``, ``tgt_chosen``, ``tgt_rejected`` (responses
    not empty) and, when present, an ``episode`` that renders to ``src``."""
    for key in ("src", "tgt_chosen", "tgt_rejected"):
        if not isinstance(example.get(key), str):
            raise PreferenceDataError(f"{path}, line {lineno}: field '{key}' must be a string.")
    if not example["tgt_chosen"] or not example["tgt_rejected"]:
        raise PreferenceDataError(f"{path}, line {lineno}: empty response.")
    if "episode" in example:
        try:
            prompt_parts(example)
        except ValueError as ex:
            raise PreferenceDataError(f"{path}, line {lineno}: {ex}.") from None
    return example


def read_preference_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record) for every non-blank line of ``path``, records as in the file.

    :raises PreferenceDataError: on a malformed line (file and line named) or bytes that are not UTF-8.
    """
    for lineno, example in object_lines(path, PreferenceDataError):
        yield lineno, check_example(example, path, lineno)


def default_id(path: Path, lineno: int) -> str:
    """The id of an example whose line has none: ``<file name>:<line>``."""
    return f"{path.name}:{lineno}"
