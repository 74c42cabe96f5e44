"""Reading preference JSONL (``src``, ``tgt_chosen``, ``tgt_rejected`` per line): one parser for every reader."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fspo_recipe.data.episodes import prompt_parts, split_completion


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
    try:
        if "episode" in example:
            prompt_parts(example)
        if "answers" in example:
            example_answers(example)
        if "messages" in example:
            example_messages(example)
    except ValueError as ex:
        raise PreferenceDataError(f"{path}, line {lineno}: {ex}.") from None
    return example


CHAT_ROLES = ("system", "user", "assistant")


def example_messages(example: dict[str, Any]) -> list[dict[str, str]] | None:
    """The ``messages`` field (the prompt as a conversation, written by plain sources built from dialogues), or None.

    :raises ValueError: naming what is wrong: not a list of ``{"role", "content"}`` objects with roles
        system/user/assistant, or not ending with the user's turn."""
    messages = example.get("messages")
    if messages is None:
        return None
    if not isinstance(messages, list) or not messages:
        raise ValueError("field 'messages' must be a non-empty list of {role, content} objects")
    for i, message in enumerate(messages):
        if (not isinstance(message, dict) or message.get("role") not in CHAT_ROLES
                or not isinstance(message.get("content"), str)):
            raise ValueError(f"field 'messages[{i}]' must be an object with role {'/'.join(CHAT_ROLES)} and string "
                             "content")
    if messages[-1]["role"] != "user":
        raise ValueError("field 'messages' must end with the user's turn (the responses answer it)")
    return messages


def example_answers(example: dict[str, Any]) -> tuple[str, str]:
    """The chosen and rejected answers of an FSPO example without their target headers (and user descriptions): its
    ``answers`` field; files prepared before examples carried it have their targets split
    (:func:`~fspo_recipe.data.episodes.split_completion`).

    :raises ValueError: the ``answers`` field is not ``{"chosen": str, "rejected": str}``."""
    answers = example.get("answers")
    if answers is None:
        return (split_completion(str(example["tgt_chosen"])).response,
                split_completion(str(example["tgt_rejected"])).response)
    if not isinstance(answers, dict) or not all(isinstance(answers.get(k), str) for k in ("chosen", "rejected")):
        raise ValueError("field 'answers' must be an object with string chosen and rejected")
    return answers["chosen"], answers["rejected"]


def read_preference_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record) for every non-blank line of ``path``, records as in the file.

    :raises PreferenceDataError: on a malformed line (file and line named) or bytes that are not UTF-8.
    """
    for lineno, example in object_lines(path, PreferenceDataError):
        yield lineno, check_example(example, path, lineno)


def default_id(path: Path, lineno: int) -> str:
    """The id of an example whose line has none: ``<file name>:<line>``."""
    return f"{path.name}:{lineno}"
