"""Generation files -> matchups: one question of one user answered by a system and by the baseline.

A generation file is JSONL, one answer per line, as ``preference_eval generation.enabled=true`` writes it:

    {"id": ..., "question": ..., "response": <the answer>, "user": ..., "user_description": ..., "system": ...}

``id``, ``question`` and ``response`` are required; ``user`` (default ``(no user)``), ``user_description`` (default:
the ``user`` text, or a ``--descriptions`` file) and ``system`` (the system's name) are optional. A baseline made
by another tool needs only these fields. ``reference_chosen`` (the data's preferred answer) makes the system
``data_chosen`` available.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from fspo_recipe.data.jsonl import object_lines

DATA_CHOSEN: Final = "data_chosen"
"""The system whose answers are the data's preferred responses (``reference_chosen`` of a generation file)."""


class JudgeInputError(ValueError):
    """A generation file or an option cannot be used; the message names the file, line and field."""


@dataclass(frozen=True)
class Answer:
    id: str
    user: str
    description: str | None
    question: str
    text: str
    generated: str | None = None
    """The raw continuation the answer was cut from (``generated``), when the file has it."""

    ended: bool | None = None
    """Whether the model ended the answer by itself before the token limit (``ended``), when the file says."""


@dataclass(frozen=True)
class System:
    """One system's answers, by id, and the file they came from."""

    name: str
    path: Path
    answers: dict[str, Answer]


@dataclass(frozen=True)
class Matchup:
    """One question of one user, answered by ``system`` and by ``baseline``."""

    id: str
    user: str
    description: str
    question: str
    system: str
    baseline: str
    answer: str
    baseline_answer: str


def _field(rec: Mapping[str, object], key: str, where: str, *, required: bool = True) -> str | None:
    value = rec.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise JudgeInputError(f"{where}: field '{key}' is missing or not a string.")
    return str(value)


def read_generations(spec: str) -> tuple[System, System | None]:
    """Read ``[NAME=]PATH``: the system's answers, and the data's chosen answers when the file has them.

    The name is NAME, else the records' ``system`` field, else the file's stem.
    """
    name, sep, path_text = spec.partition("=")
    if not sep or not name or "/" in name:
        name, path_text = "", spec
    path = Path(path_text)
    if not path.is_file():
        raise JudgeInputError(f"{path}: no such generation file.")
    answers: dict[str, Answer] = {}
    chosen: dict[str, Answer] = {}
    names: set[str] = set()
    for lineno, rec in object_lines(path, JudgeInputError):
        where = f"{path}, line {lineno}"
        id_ = _field(rec, "id", where)
        assert id_ is not None
        if id_ in answers:
            raise JudgeInputError(f"{where}: id {id_!r} appears twice.")
        user = _field(rec, "user", where, required=False) or "(no user)"
        description = _field(rec, "user_description", where, required=False)
        question = _field(rec, "question", where)
        response = _field(rec, "response", where)
        assert question is not None and response is not None
        generated = rec.get("generated") if isinstance(rec.get("generated"), str) else None
        ended = rec.get("ended") if isinstance(rec.get("ended"), bool) else None
        answers[id_] = Answer(id_, user, description, question, response, generated, ended)
        if rec.get("system") is not None:
            names.add(str(rec["system"]))
        if isinstance(rec.get("reference_chosen"), str):
            chosen[id_] = Answer(id_, user, description, question, rec["reference_chosen"])
    if not answers:
        raise JudgeInputError(f"{path}: no answers.")
    if not name:
        if len(names) > 1:
            raise JudgeInputError(f"{path}: holds the systems {sorted(names)}; name this file as NAME={path}.")
        name = names.pop() if names else path.stem
    data = System(DATA_CHOSEN, path, chosen) if len(chosen) == len(answers) else None
    return System(name, path, answers), data


def load_systems(specs: Sequence[str], *, include_chosen: bool) -> dict[str, System]:
    """The systems of the generation files (names unique), plus ``data_chosen`` with ``include_chosen``."""
    systems: dict[str, System] = {}
    data: System | None = None
    for spec in specs:
        system, chosen = read_generations(spec)
        if system.name in systems:
            raise JudgeInputError(f"{system.path} and {systems[system.name].path} are both named "
                                  f"'{system.name}'; name them as NAME=PATH.")
        systems[system.name] = system
        data = data or chosen
    if include_chosen:
        if data is None:
            raise JudgeInputError("--include-chosen: no generation file has 'reference_chosen' on every line.")
        systems[DATA_CHOSEN] = data
    return systems


def build_matchups(systems: Mapping[str, System], baseline: str, *, descriptions: Mapping[str, str] | None = None,
                   limit: int | None = None) -> tuple[list[Matchup], list[str]]:
    """Every other system against ``baseline`` on the ids both answered (the first ``limit`` per system); and
    warnings (ids only one side answered, users without a description).

    :raises JudgeInputError: an unknown baseline, two files that ask different questions under one id, or no shared
        id at all.
    """
    if baseline not in systems:
        raise JudgeInputError(f"--baseline {baseline!r} is not one of the systems: {', '.join(systems)}.")
    base = systems[baseline]
    descriptions = descriptions or {}
    matchups: list[Matchup] = []
    warnings: list[str] = []
    undescribed: set[str] = set()
    for name, system in systems.items():
        if name == baseline:
            continue
        shared = [i for i in system.answers if i in base.answers]
        if not shared:
            raise JudgeInputError(f"{system.path} ({name}) and {base.path} ({baseline}) share no id.")
        missing = len(system.answers) - len(shared)
        if missing:
            warnings.append(f"{name}: {missing} answer(s) have no {baseline} answer with the same id; not judged.")
        for id_ in shared[:limit]:
            mine, theirs = system.answers[id_], base.answers[id_]
            if (mine.user, mine.question) != (theirs.user, theirs.question):
                raise JudgeInputError(f"id {id_!r}: {system.path} and {base.path} have a different user or question; "
                                      "were they generated from the same split?")
            description = descriptions.get(mine.user) or mine.description or theirs.description
            if description is None:
                undescribed.add(mine.user)
                description = mine.user
            matchups.append(Matchup(id_, mine.user, description, mine.question, name, baseline, mine.text,
                                    theirs.text))
    if undescribed:
        warnings.append(f"{len(undescribed)} user(s) have no user_description (e.g. {sorted(undescribed)[0]!r}); "
                        "the judge is shown the user's name instead (pass --descriptions FILE.json).")
    return matchups, warnings


def read_descriptions(path: Path) -> dict[str, str]:
    """``--descriptions``: a JSON object user -> description."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as ex:
        raise JudgeInputError(f"{path}: cannot be read as JSON ({ex}).") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise JudgeInputError(f"{path}: expected a JSON object mapping each user to its description (strings).")
    return value
