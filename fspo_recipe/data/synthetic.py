"""Synthetic users with hidden preferences over visible, byte-level properties of responses (seeded).

A study of whether a model personalizes needs users whose preferences a tiny byte-level model can read, and whom
no model can serve without reading their shots. Each response of this generator has four binary properties:

    case       UPPER CASE           or lower case
    length     two sentences        or one sentence
    mood       positive words       or negative words
    ending     ends with "!"        or ends with "."

A user prefers one pole of one property (``heldout`` study: several differently named users per preference) or
of two properties (``interpolated`` study: combinations never seen in training). In every pair, chosen and
rejected answer the same question with the same sentence; they differ only on the user's properties (chosen has
the user's pole of each, rejected the other pole of at least one), the other properties are drawn per pair and
shared. Both poles of every property are preferred by equally many users, so pooled over users each property
wins half of the pairs: without the shots a model can do no better than chance.

Rows are written in the Elix source schema (prompt, response_x, response_y, level_x, level_y, scorer_level,
label), so the regular ``fspo-prepare elix`` builds the episodes. The user's level text is its description
("Ada who likes answers in upper case"), which the rationale variant learns to write.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from fspo_recipe.data.jsonl import example_answers
from fspo_recipe.files import atomic_file, jsonl_line

PROPERTIES: Final = ("case", "length", "mood", "ending")
POLES: Final[dict[str, tuple[str, str]]] = {
    "case": ("upper", "lower"),
    "length": ("long", "short"),
    "mood": ("positive", "negative"),
    "ending": ("exclaiming", "calm"),
}
# How a preference reads in a user's description ("Ada who likes answers in upper case").
POLE_TEXT: Final = {
    "upper": "answers in upper case", "lower": "answers in lower case",
    "long": "long answers", "short": "short answers",
    "positive": "positive answers", "negative": "negative answers",
    "exclaiming": "answers ending with an exclamation mark", "calm": "answers ending with a period",
}

NAMES: Final = (
    "Ada", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea", "Max", "Nia", "Otto",
    "Pia", "Quin", "Rosa", "Sam", "Tara", "Uma", "Vic", "Wen", "Xia", "Yara", "Zed",
)
TOPICS: Final = (
    "rain", "wind", "the moon", "a river", "bread", "snow", "a cloud", "ice", "sand", "a bee", "salt", "fog",
    "a comet", "glass", "a clock", "soap", "a kite", "steam", "a candle", "a wave", "a tree", "the sun", "a bird",
    "a lake", "a stone", "milk", "a leaf", "a star", "a bell", "a boat", "a road", "a cat",
)
GOOD: Final = ("lovely", "great", "wonderful", "nice", "bright", "happy")
BAD: Final = ("awful", "bad", "dull", "sad", "grim", "poor")
MORE: Final = ("I like it", "It is so", "We see it", "Think of it", "That is all")


@dataclass(frozen=True)
class SyntheticUser:
    """One user: a display name and the poles it prefers (one per property it cares about)."""

    name: str
    poles: tuple[str, ...]

    @property
    def level(self) -> str:
        """The user's text in the source data (and its description): "Ada who likes ..."."""
        return f"{self.name} who likes " + " and ".join(POLE_TEXT[p] for p in self.poles)

    @property
    def attributes(self) -> str:
        """The Review-style level ("upper and positive") used by the interpolated split."""
        return " and ".join(self.poles)


def _property_of(pole: str) -> str:
    return next(prop for prop, poles in POLES.items() if pole in poles)


def _other(pole: str) -> str:
    a, b = POLES[_property_of(pole)]
    return b if pole == a else a


def render_response(topic: str, word_index: int, poles: dict[str, str]) -> str:
    """The response about ``topic`` with one pole per property; ``word_index`` picks the mood word."""
    word = (GOOD if poles["mood"] == "positive" else BAD)[word_index % len(GOOD)]
    end = "!" if poles["ending"] == "exclaiming" else "."
    sentences = [f"{topic.capitalize()} is {word}"]
    if poles["length"] == "long":
        sentences.append(MORE[word_index % len(MORE)])
    text = " ".join(s + end for s in sentences)
    return text.upper() if poles["case"] == "upper" else text.lower()


def pairs_of_user(user: SyntheticUser, num_rows: int, rng: random.Random) -> Iterator[tuple[str, str, str]]:
    """(question, chosen, rejected) of ``user``: they differ only on the user's properties."""
    for _ in range(num_rows):
        topic = rng.choice(TOPICS)
        word_index = rng.randrange(len(GOOD) * len(MORE))
        shared = {prop: rng.choice(POLES[prop]) for prop in PROPERTIES}
        chosen = dict(shared)
        for pole in user.poles:
            chosen[_property_of(pole)] = pole
        rejected = dict(chosen)
        flips = [p for p in user.poles if rng.random() < 0.5] or [rng.choice(user.poles)]  # at least one
        for pole in flips:
            rejected[_property_of(pole)] = _other(pole)
        yield f"What is {topic}?", render_response(topic, word_index, chosen), render_response(topic, word_index, rejected)


def heldout_users(users_per_pole: int, test_users_per_pole: int, properties: Sequence[str] = PROPERTIES
                  ) -> tuple[list[SyntheticUser], list[SyntheticUser]]:
    """Single-property users: ``users_per_pole`` for training and ``test_users_per_pole`` held out, per pole.

    Every pole has as many users as its opposite, so pooled over training users each property is preferred half
    of the time; test users have other names (they are other people with the same kinds of tastes).
    """
    train: list[SyntheticUser] = []
    test: list[SyntheticUser] = []
    names = iter(f"{n}{'' if k == 0 else k + 1}" for k in range(100) for n in NAMES)
    for prop in properties:
        for pole in POLES[prop]:
            train += [SyntheticUser(next(names), (pole,)) for _ in range(users_per_pole)]
            test += [SyntheticUser(next(names), (pole,)) for _ in range(test_users_per_pole)]
    return train, test


def interpolated_users(properties: Sequence[str] = PROPERTIES) -> tuple[list[SyntheticUser], list[SyntheticUser]]:
    """Training users with one property (8) and test users combining two properties of different kinds (24)."""
    singles = [SyntheticUser(pole, (pole,)) for prop in properties for pole in POLES[prop]]
    combos = [
        SyntheticUser(f"{a} and {b}", (a, b))
        for i, pa in enumerate(properties) for pb in properties[i + 1 :]
        for a in POLES[pa] for b in POLES[pb]
    ]
    return singles, combos


def source_rows(users: list[SyntheticUser], rows_per_user: int, seed: int, *, review: bool = False
                ) -> list[dict[str, object]]:
    """Rows in the Elix/Review source schema; ``review`` puts the attribute text in the level columns."""
    out: list[dict[str, object]] = []
    for user in users:
        rng = random.Random(f"synthetic:{seed}:{user.name}")
        level = user.attributes if review else user.level
        for question, chosen, rejected in pairs_of_user(user, rows_per_user, rng):
            # As in Elix, each response is "written for" a user: the chosen one for this user, the rejected one
            # for a user with the rejected response's poles (the rationale variant's rejected description).
            got = classify(rejected)
            other = SyntheticUser(user.name, tuple(got[_property_of(p)] for p in user.poles))
            other_level = other.attributes if review else other.level
            label = rng.randrange(2)  # which column holds the preferred response
            x, y = (chosen, rejected) if label == 0 else (rejected, chosen)
            lx, ly = (level, other_level) if label == 0 else (other_level, level)
            out.append({"prompt": question, "response_x": x, "response_y": y, "level_x": lx, "level_y": ly,
                        "scorer_level": level, "label": label})
    return out


def pole_balance(rows: list[dict[str, object]]) -> dict[str, float]:
    """Fraction of pairs whose chosen response has pole A of each property, among pairs differing on it."""
    counts = {prop: [0, 0] for prop in PROPERTIES}
    for row in rows:
        x, y = classify(str(row["response_x"])), classify(str(row["response_y"]))
        chosen, rejected = (x, y) if row["label"] == 0 else (y, x)
        for prop in PROPERTIES:
            c, r = chosen[prop], rejected[prop]
            if c != r:
                counts[prop][0] += c == POLES[prop][0]
                counts[prop][1] += 1
    return {prop: a / n if n else float("nan") for prop, (a, n) in counts.items()}


def classify(response: str) -> dict[str, str]:
    """The pole of each property of a rendered response (the inverse of :func:`render_response`)."""
    lower = response.lower()
    return {
        "case": "upper" if response == response.upper() else "lower",
        "length": "long" if response.count("!") + response.count(".") > 1 else "short",
        "mood": "positive" if any(f" {w}" in lower for w in GOOD) else "negative",
        "ending": "exclaiming" if response.endswith("!") else "calm",
    }


def reading_ceiling(episodes: Iterable[dict[str, object]]) -> float:
    """The implicit-reward accuracy of a perfect reader of the shots, on prepared episodes (fspo-prepare's lines).

    The reader knows the user's pole of every property on which a shot's preferred and dispreferred responses
    differ; it ranks a pair right when chosen and rejected differ on such a property, and guesses (half right)
    otherwise. A property both responses of a shot share does not count as shown: for a training user it is drawn
    per pair and says nothing. One-property users show their property in every shot (ceiling 1.0); a user of two
    properties leaves one unshown when no shot's rejected response flips it, so its ceiling is lower.
    """
    right = total = 0.0
    for row in episodes:
        shown: dict[str, str] = {}
        for shot in row["episode"]["shots"]:  # type: ignore[index]
            preferred, dispreferred = classify(shot["preferred"]), classify(shot["dispreferred"])
            shown.update({p: preferred[p] for p in PROPERTIES if preferred[p] != dispreferred[p]})
        chosen, rejected = (classify(answer) for answer in example_answers(row))
        right += 1.0 if any(shown.get(p) == chosen[p] != rejected[p] for p in PROPERTIES) else 0.5
        total += 1
    if not total:
        raise ValueError("no episodes to compute a reading ceiling of")
    return right / total


def has_pole(text: str, pole: str) -> bool:
    """Whether any text (a model's own answer, not only a rendered response) has ``pole``: the exact judge's test.

    Stricter than :func:`classify` where a generated text can be degenerate: a case needs a letter, a length counts
    sentence ends (``.``, ``!``, ``?``: two or more is long, exactly one short), a mood needs a word of its list and
    none of the other's, an ending is the last character.
    """
    stripped = text.strip()
    lower = f" {stripped.lower()} "
    words = lambda ws: any(f" {w}" in lower for w in ws)  # noqa: E731
    sentences = sum(stripped.count(c) for c in ".!?")
    letters = any(c.isalpha() for c in stripped)
    tests = {
        "upper": letters and stripped == stripped.upper(),
        "lower": letters and stripped == stripped.lower(),
        "long": sentences >= 2,
        "short": sentences == 1,
        "positive": words(GOOD) and not words(BAD),
        "negative": words(BAD) and not words(GOOD),
        "exclaiming": stripped.endswith("!"),
        "calm": stripped.endswith("."),
    }
    if pole not in tests:
        raise ValueError(f"unknown pole {pole!r}; known: {', '.join(tests)}")
    return bool(tests[pole])


def poles_in_description(description: str) -> tuple[str, ...]:
    """The poles a synthetic user's description names ("... who likes answers in upper case" -> ("upper",))."""
    return tuple(pole for pole, text in POLE_TEXT.items() if text in description)


def write_study_sources(out_dir: Path, *, users_per_pole: int = 6, test_users_per_pole: int = 1,
                        rows_per_user: int = 80, test_rows_per_user: int = 30, seed: int = 0,
                        properties: Sequence[str] = PROPERTIES) -> dict[str, object]:
    """Write the study's source files (Elix schema) under ``out_dir``; return a summary (also ``users.json``).

    - ``heldout/train.jsonl``: single-property users, ``users_per_pole`` per preference (the training users);
    - ``heldout/test.jsonl``: other single-property users, ``test_users_per_pole`` per preference (held out);
    - ``interpolated/test.jsonl``: users combining two properties of different kinds (24), a combination that
      no training user has.

    ``fspo-prepare elix --input OUT/heldout --split-mode source`` and ``--input OUT/interpolated`` build the
    episodes. :func:`interpolated_users` also gives Review-style users for ``--split-mode interpolated``.
    ``properties`` restricts the users' preferences to some of the four properties (the others are still drawn for
    every pair, equal in chosen and rejected).
    """
    unknown = sorted(set(properties) - set(PROPERTIES))
    if unknown or not properties:
        raise ValueError(f"properties must be some of {', '.join(PROPERTIES)}; got {', '.join(properties) or 'none'}.")

    train, test = heldout_users(users_per_pole, test_users_per_pole, properties)
    _, combos = interpolated_users(properties)
    names = iter(f"{n}{k + 50}" for k in range(100) for n in NAMES)
    combos = [SyntheticUser(next(names), user.poles) for user in combos]
    files = {
        out_dir / "heldout" / "train.jsonl": source_rows(train, rows_per_user, seed),
        out_dir / "heldout" / "test.jsonl": source_rows(test, test_rows_per_user, seed),
    }
    if combos:  # users combining two properties exist with two properties or more
        files[out_dir / "interpolated" / "test.jsonl"] = source_rows(combos, max(4, test_rows_per_user // 2), seed)
    for path, rows in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path, "wb") as fp:
            fp.writelines(jsonl_line(row) for row in rows)
    summary = {
        "seed": seed,
        "properties": list(properties),
        "rows_per_user": rows_per_user,
        "test_rows_per_user": test_rows_per_user,
        "train_users": [u.level for u in train],
        "heldout_test_users": [u.level for u in test],
        "interpolated_test_users": [u.level for u in combos],
        "train_pole_balance": pole_balance(files[out_dir / "heldout" / "train.jsonl"]),
    }
    with atomic_file(out_dir / "users.json") as fp:
        json.dump(summary, fp, indent=1)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fspo-synthetic-users", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="directory to write heldout/, interpolated/ and users.json into")
    parser.add_argument("--users-per-pole", type=int, default=6, help="training users per preference (default: 6)")
    parser.add_argument("--test-users-per-pole", type=int, default=1, help="held-out users per preference (default: 1)")
    parser.add_argument("--rows-per-user", type=int, default=80, help="preference pairs per training user (default: 80)")
    parser.add_argument("--test-rows-per-user", type=int, default=30,
                        help="preference pairs per held-out user (default: 30; half that per interpolated user)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--properties", default=",".join(PROPERTIES),
                        help=f"the properties users have preferences over (default: {','.join(PROPERTIES)})")
    args = parser.parse_args(argv)
    if min(args.users_per_pole, args.test_users_per_pole, args.rows_per_user, args.test_rows_per_user) < 1:
        parser.error("--users-per-pole, --test-users-per-pole, --rows-per-user, --test-rows-per-user must be >= 1")
    summary = write_study_sources(args.out_dir, users_per_pole=args.users_per_pole,
                                  test_users_per_pole=args.test_users_per_pole, rows_per_user=args.rows_per_user,
                                  test_rows_per_user=args.test_rows_per_user, seed=args.seed,
                                  properties=[p for p in args.properties.split(",") if p])
    print(f"wrote {len(summary['train_users'])} training users, {len(summary['heldout_test_users'])} held-out and "
          f"{len(summary['interpolated_test_users'])} interpolated test users to {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
