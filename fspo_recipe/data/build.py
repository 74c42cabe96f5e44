"""From rows of many users to FSPO episodes: splits (source, held-out users, interpolated) and episode building.

Pure Python, deterministic: the same rows, options and seed give the same episodes, byte for byte.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fspo_recipe.data.episodes import PromptParts, Shot, render_from_bodies, shot_body
from fspo_recipe.data.sources.base import SOURCE_SPLITS, PreferenceRow, ReadReport
from fspo_recipe.data.sources.dialogue import messages_field

Rationale = Literal["none", "generated", "teacher_forced"]
SplitMode = Literal["source", "heldout_users", "interpolated"]

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class EpisodeOptions:
    """How episodes are cut from one user's rows."""

    num_shots: int
    """N: labelled preferences of the user shown in the prompt."""

    num_passes: int | None = None
    """Reshuffles of a user's rows; each cuts them into windows of N+1. Default 2*(N+1), as in the paper's code."""

    seed: int = 0
    """Seed of the shuffles (per user, so adding a user does not change another's episodes)."""

    include_dispreferred: bool = True
    """Show the dispreferred response of each shot (the paper's default)."""

    rationale: Rationale = "none"
    """``generated``: the targets start with a user description; ``teacher_forced``: the prompt ends with it."""

    def passes(self) -> int:
        return self.num_passes if self.num_passes is not None else 2 * (self.num_shots + 1)


def group_by_user(rows: Sequence[PreferenceRow]) -> dict[str, list[PreferenceRow]]:
    """Rows per user, users in sorted order, rows in their input order."""
    groups: dict[str, list[PreferenceRow]] = {}
    for row in rows:
        groups.setdefault(row.user, []).append(row)
    return dict(sorted(groups.items()))


def user_count(value: float, total: int, what: str) -> int:
    """How many of ``total`` users ``value`` asks for: a count (a whole number >= 1), or a fraction in (0, 1)
    that rounds to at least one user (a fraction asks for some users, never for none)."""
    if not math.isfinite(value) or value < 0 or (value >= 1 and value != int(value)):
        raise ValueError(f"{what} must be a number of users (0, 1, 2, ...) or a fraction in (0, 1), got {value:g}.")
    if 0.0 < value < 1.0:
        return max(1, int(round(value * total)))
    return int(value)


def assign_splits(
    by_source_split: Mapping[str, Sequence[PreferenceRow]],
    mode: SplitMode,
    *,
    seed: int = 0,
    valid_fraction: float = 0.0,
    valid_users: float = 0,
    test_users: float = 0,
    test_user_names: Sequence[str] = (),
    attributes: Callable[[str], list[str]] | None = None,
) -> dict[str, list[PreferenceRow]]:
    """Distribute rows over train / valid / test.

    - ``source``: the source's own splits (train, validation, test); with ``valid_fraction`` > 0 and no validation
      split in the source, that fraction of every user's train rows becomes valid.
    - ``heldout_users``: all rows pooled; ``test_users`` and ``valid_users`` (a count, or a fraction if below 1) or
      ``test_user_names`` pick whole users for test and valid, so no user of valid/test appears in train.
    - ``interpolated`` (sources whose users have attributes, i.e. Review; ``attributes`` maps a user to them):
      users with one attribute train, users combining several are test; valid as in ``source``.
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"--valid-fraction must be in [0, 1), got {valid_fraction:g}.")
    out: dict[str, list[PreferenceRow]] = {s: [] for s in SPLITS}
    rng = random.Random(f"splits:{seed}")

    if mode == "source":
        for name, rows in by_source_split.items():
            out[SOURCE_SPLITS.get(name.lower(), "train")].extend(rows)
    else:
        pooled = [row for rows in by_source_split.values() for row in rows]
        users = sorted({row.user for row in pooled})
        if mode == "heldout_users":
            if test_user_names:
                unknown = sorted(set(test_user_names) - set(users))
                if unknown:
                    raise ValueError(f"--test-user-names: unknown user(s) {unknown}; known users: {users[:20]}")
                test = set(test_user_names)
                rest = [u for u in users if u not in test]
            else:
                shuffled = list(users)
                rng.shuffle(shuffled)
                n_test = user_count(test_users, len(users), "--test-users")
                test, rest = set(shuffled[:n_test]), shuffled[n_test:]
            n_valid = user_count(valid_users, len(users), "--valid-users")
            valid = set(rest[:n_valid])
            if len(test) + len(valid) >= len(users):
                raise ValueError(f"{len(test)} test and {len(valid)} valid user(s) leave no training user "
                                 f"({len(users)} users in all).")
            for row in pooled:
                out["test" if row.user in test else "valid" if row.user in valid else "train"].append(row)
            return out
        if mode == "interpolated":
            if attributes is None:
                raise ValueError("--split-mode interpolated needs users made of attributes (review); this source's "
                                 "users have none. Use heldout_users (--test-user-names picks the test users).")
            for row in pooled:
                out["test" if len(attributes(row.user)) > 1 else "train"].append(row)
        else:
            raise ValueError(f"Unknown split mode '{mode}'; expected source, heldout_users or interpolated.")

    if valid_fraction > 0.0 and not out["valid"]:
        kept: list[PreferenceRow] = []
        for user, rows in group_by_user(out["train"]).items():
            order = list(range(len(rows)))
            random.Random(f"valid:{seed}:{user}").shuffle(order)
            n_valid = int(len(rows) * valid_fraction)
            chosen = set(order[:n_valid])
            for i, row in enumerate(rows):
                (out["valid"] if i in chosen else kept).append(row)
        if not out["valid"] and kept:
            most = max((len(rows) for rows in group_by_user(out["train"]).values()), default=0)
            raise ValueError(f"--valid-fraction {valid_fraction:g} takes no row: it is a fraction of each user's "
                             f"training rows, and no user has {math.ceil(1 / valid_fraction)} or more (the most: "
                             f"{most}). Give a larger fraction, or hold out whole users (--split-mode heldout_users "
                             "--valid-users N).")
        out["train"] = kept
    return out


DUPLICATE_ROW = "duplicate of an earlier row (same user, question and both responses)"


def drop_duplicate_rows(by_source_split: Mapping[str, Sequence[PreferenceRow]], report: ReadReport
                        ) -> dict[str, list[PreferenceRow]]:
    """The rows without those that repeat an earlier one (same user, question and responses, in any split), which
    are skipped and counted: a repeated pair could be shown as a shot of its own query (the answer given away), and a
    pair in two splits is a test pair seen in training."""
    seen: set[tuple[str, str, str, str]] = set()
    out: dict[str, list[PreferenceRow]] = {}
    for split, rows in by_source_split.items():
        kept = out.setdefault(split, [])
        for row in rows:
            key = (row.user, row.question, row.preferred, row.dispreferred)
            if key in seen:
                report.skip(DUPLICATE_ROW, row.row_id)
            else:
                seen.add(key)
                kept.append(row)
    return out


def query_last(window: Sequence[int], rows: Sequence[PreferenceRow]) -> tuple[int, ...] | None:
    """``window`` (row indices: shots, then the query) with a query whose question no shot asks: as it is when its
    query's question is not among the shots', else with the last row whose question is asked once in the window
    swapped into the query's place; None when every question of the window is asked twice or more."""
    questions = [rows[i].question for i in window]
    if questions[-1] not in questions[:-1]:
        return tuple(window)
    once = [j for j, q in enumerate(questions) if questions.count(q) == 1]
    if not once:
        return None
    order = list(window)
    order[once[-1]], order[-1] = order[-1], order[once[-1]]
    return tuple(order)


def build_user_episodes(
    user: str,
    rows: Sequence[PreferenceRow],
    options: EpisodeOptions,
    other_descriptions: Sequence[str] = (),
    stats: SplitStats | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield the episodes of one user: N shots and one query per episode, all rows of this user.

    Each pass shuffles the rows and cuts them into consecutive windows of N+1 (rows 0..N-1 shots, row N the query;
    no row of a window is left unused). The query's question is never among its shots' questions (the shot would
    answer it): such a window takes another of its rows as the query (:func:`query_last`) or, when none fits, is
    skipped and counted in ``stats``. A window already produced (same shots in the same order, same query) is not
    produced again, so identical prompts merge. ``other_descriptions`` supply the rejected rationale where the
    source does not say whom the rejected response was written for (Roleplay).
    """
    n = options.num_shots
    width = n + 1
    if len(rows) < width:
        return
    rng = random.Random(f"episodes:{options.seed}:{user}")
    order = list(range(len(rows)))
    # A row is a shot in about 2N episodes: render its block once.
    bodies = [shot_body((r.question, r.preferred, r.dispreferred), include_dispreferred=options.include_dispreferred)
              for r in rows]
    seen: set[tuple[int, ...]] = set()
    generated = options.rationale != "none"
    teacher_forced = options.rationale == "teacher_forced"

    for p in range(options.passes()):
        rng.shuffle(order)
        for w in range(len(order) // width):
            window = query_last(order[w * width : (w + 1) * width], rows)
            if window is None:
                if stats is not None:
                    stats.windows_one_question += 1
                continue
            if window in seen:
                continue
            seen.add(window)
            query = rows[window[n]]

            rejected_description = query.dispreferred_description
            if generated and not rejected_description and other_descriptions:
                rejected_description = other_descriptions[rng.randrange(len(other_descriptions))]

            ep = render_from_bodies(
                [bodies[i] for i in window[:n]],
                query.question,
                query.preferred,
                query.dispreferred,
                include_dispreferred=options.include_dispreferred,
                rationale_chosen=query.preferred_description if generated else None,
                rationale_rejected=(rejected_description or query.preferred_description) if generated else None,
                teacher_forced=teacher_forced,
            )
            parts = PromptParts(tuple(Shot(rows[i].question, rows[i].preferred, rows[i].dispreferred) for i in window[:n]),
                                query.question, options.include_dispreferred, generated,
                                query.preferred_description if teacher_forced else None)
            yield {
                "id": f"{user}/{p}/{w}",
                "src": ep.prompt,
                "tgt_chosen": ep.chosen,
                "tgt_rejected": ep.rejected,
                "user": user,
                "num_shots": n,
                "shot_row_ids": [rows[i].row_id for i in window[:n]],
                "query_row_id": query.row_id,
                "episode": parts.to_record(),
                "answers": {"chosen": query.preferred, "rejected": query.dispreferred},
                **({"user_description": query.user_description} if query.user_description else {}),
            }


@dataclass
class SplitStats:
    """What building one split did."""

    users: int = 0
    episodes: int = 0
    users_too_few_rows: int = 0
    rows_of_skipped_users: int = 0
    windows_one_question: int = 0
    """Windows skipped because each of their questions is asked by two rows or more (no query without its answer
    among the shots)."""


def build_split_episodes(
    rows: Sequence[PreferenceRow], options: EpisodeOptions, stats: SplitStats
) -> Iterator[dict[str, Any]]:
    """Yield the episodes of every user of a split (users in sorted order); counts go to ``stats``."""
    groups = group_by_user(rows)
    descriptions = [rs[0].preferred_description for rs in groups.values()]
    positions: dict[str, list[int]] = {}
    for i, d in enumerate(descriptions):
        positions.setdefault(d, []).append(i)
    for index, (user, user_rows) in enumerate(groups.items()):
        if len(user_rows) < options.num_shots + 1:
            stats.users_too_few_rows += 1
            stats.rows_of_skipped_users += len(user_rows)
            continue
        stats.users += 1
        others = _Excluding(descriptions, positions[descriptions[index]])
        for episode in build_user_episodes(user, user_rows, options, others, stats):
            stats.episodes += 1
            yield episode


class _Excluding(Sequence[str]):
    """``items`` without the positions ``excluded`` (sorted), as a sequence, without copying: every user's list of
    other users' descriptions in O(1) memory and O(log n) per look-up (a copy per user was quadratic)."""

    def __init__(self, items: Sequence[str], excluded: Sequence[int]) -> None:
        self._items, self._excluded = items, excluded

    def __len__(self) -> int:
        return len(self._items) - len(self._excluded)

    def __getitem__(self, index: int) -> str:  # type: ignore[override]
        if not 0 <= index < len(self):
            raise IndexError(index)
        # The answer is the smallest fixed point of p = index + (excluded positions <= p); iterating from
        # p = index climbs to it without overshooting.
        position = index
        while (step := index + bisect_right(self._excluded, position)) != position:
            position = step
        return self._items[position]


def plain_examples(rows: Sequence[PreferenceRow], stats: SplitStats) -> Iterator[dict[str, Any]]:
    """Plain preference pairs (sources without users): one example per row, the texts as the source has them."""
    for row in rows:
        stats.episodes += 1
        stats.users = 1
        yield {"id": row.row_id, "src": row.question, "tgt_chosen": row.preferred, "tgt_rejected": row.dispreferred,
               "user": row.user, **({"messages": messages_field(row.turns)} if row.turns else {})}

