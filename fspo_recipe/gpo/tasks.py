"""What GPO learns from: items of a user or a group, each a few points (question, answer) with a preference label.

- Pairwise preferences (a prepared FSPO split): an item is a pair, the chosen answer labelled 1 and the rejected 0.
  The user's items are every distinct pair of its episodes (shots and queries); its evaluation episodes keep their
  own shots, so GPO sees exactly the examples FSPO sees.
- Group opinions (OpinionQA schema, below): an item is a question, each option labelled with the group's share of
  answers.

Either way the prediction for an item is a softmax over its points' scores, and the loss is the cross-entropy
with the labels: for a pair, -log sigmoid(s_chosen - s_rejected) (Bradley-Terry); for a question, the
cross-entropy with the group's answer distribution.

OpinionQA schema (one JSON object per line; the options in their ordinal order)::

    {"qkey": "GUNS_W92_1", "question": "...", "options": ["Very", "Somewhat", "Not too", "Not at all"],
     "distributions": {"Democrat": [0.41, 0.33, 0.17, 0.09], "Republican": [...], ...}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from fspo_recipe.data.episodes import prompt_parts
from fspo_recipe.data.jsonl import example_answers, object_lines, read_preference_jsonl
from fspo_recipe.files import atomic_file
from fspo_recipe.gpo.embed import point_text


class GpoDataError(ValueError):
    """The data cannot be used; the message names the file, line and field."""


@dataclass(frozen=True)
class Item:
    """Points (question, answer) with their labels (summing to 1)."""

    texts: tuple[str, ...]
    labels: tuple[float, ...]


@dataclass(frozen=True)
class Episode:
    """One evaluation case: a user's context items and the item to predict."""

    id: str
    user: str
    context: tuple[Item, ...]
    target: Item


@dataclass
class TaskSet:
    """Items per user (or group), and the evaluation episodes of a split."""

    kind: str
    """``pairs`` or ``opinions``."""
    items: dict[str, list[Item]] = field(default_factory=dict)
    episodes: list[Episode] = field(default_factory=list)

    def texts(self) -> list[str]:
        seen: dict[str, None] = {}
        for items in self.items.values():
            for item in items:
                seen.update(dict.fromkeys(item.texts))
        for ep in self.episodes:
            for item in (*ep.context, ep.target):
                seen.update(dict.fromkeys(item.texts))
        return list(seen)


def pair_item(question: str, chosen: str, rejected: str) -> Item:
    return Item((point_text(question, chosen), point_text(question, rejected)), (1.0, 0.0))


def read_pairs(path: Path) -> TaskSet:
    """A prepared FSPO split: each user's distinct pairs, and each example as an episode with its own shots."""
    tasks = TaskSet("pairs")
    seen: dict[str, set[Item]] = {}
    for lineno, example in read_preference_jsonl(path):
        try:
            parts = prompt_parts(example)
        except ValueError as ex:
            raise GpoDataError(f"{path}, line {lineno}: not an FSPO episode ({ex}).") from None
        user = str(example.get("user", "(no user)"))
        query = pair_item(parts.question, *example_answers(example))
        shots = tuple(pair_item(s.question, s.preferred, s.dispreferred) for s in parts.shots)
        tasks.episodes.append(Episode(str(example.get("id", f"{path.name}:{lineno}")), user, shots, query))
        mine = seen.setdefault(user, set())
        for item in (*shots, query):
            if item not in mine:
                mine.add(item)
                tasks.items.setdefault(user, []).append(item)
    if not tasks.episodes:
        raise GpoDataError(f"{path} has no examples.")
    return tasks


@dataclass(frozen=True)
class OpinionQuestion:
    qkey: str
    question: str
    options: tuple[str, ...]
    distributions: dict[str, tuple[float, ...]]

    def item(self, group: str) -> Item:
        return Item(tuple(point_text(self.question, o) for o in self.options), self.distributions[group])


def read_opinions(path: Path, *, tolerance: float = 1e-3) -> list[OpinionQuestion]:
    """Questions in the OpinionQA schema (module docstring); every error names the file, line and group."""
    questions = []
    for lineno, rec in object_lines(path, GpoDataError):
        where = f"{path}, line {lineno}"
        qkey, question, options, dists = (rec.get(k) for k in ("qkey", "question", "options", "distributions"))
        if not isinstance(question, str) or not question.strip():
            raise GpoDataError(f"{where}: field 'question' must be a non-empty string.")
        if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) and o for o in options):
            raise GpoDataError(f"{where}: field 'options' must be a list of at least two non-empty strings.")
        if not isinstance(dists, dict) or not dists:
            raise GpoDataError(f"{where}: field 'distributions' must map each group to its answer distribution.")
        parsed: dict[str, tuple[float, ...]] = {}
        for group, dist in dists.items():
            if not isinstance(dist, list) or len(dist) != len(options):
                raise GpoDataError(f"{where}: group {group!r} has {len(dist) if isinstance(dist, list) else 'no'} "
                                   f"probabilities for {len(options)} options.")
            if not all(isinstance(p, (int, float)) and not isinstance(p, bool) and p >= 0 for p in dist):
                raise GpoDataError(f"{where}: group {group!r}: probabilities must be numbers >= 0.")
            if abs(sum(dist) - 1.0) > tolerance:
                raise GpoDataError(f"{where}: group {group!r}: probabilities sum to {sum(dist):.4f}, not 1.")
            parsed[str(group)] = tuple(float(p) / sum(dist) for p in dist)
        questions.append(OpinionQuestion(str(qkey if qkey is not None else f"line{lineno}"), question.strip(),
                                         tuple(options), parsed))
    if not questions:
        raise GpoDataError(f"{path} has no questions.")
    return questions


def opinion_tasks(questions: list[OpinionQuestion], groups: list[str]) -> TaskSet:
    """The groups' items (one per question a group answered)."""
    tasks = TaskSet("opinions")
    for group in groups:
        tasks.items[group] = [q.item(group) for q in questions if group in q.distributions]
    return tasks


def groups_of(questions: list[OpinionQuestion]) -> list[str]:
    return sorted({g for q in questions for g in q.distributions})


def split_groups(groups: list[str], test_groups: list[str]) -> tuple[list[str], list[str]]:
    unknown = sorted(set(test_groups) - set(groups))
    if unknown:
        raise GpoDataError(f"test group(s) {unknown} are not in the data; groups: {groups}.")
    return [g for g in groups if g not in test_groups], [g for g in groups if g in test_groups]


def write_json(path: Path, value: object) -> None:
    with atomic_file(path) as fp:
        json.dump(value, fp, indent=1)
