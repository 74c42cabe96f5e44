"""What plain preference sources (pairs without users: hh, shp, stackexchange, oasst2, ultrafeedback) share: their
options, and what they do to their rows once read (at most N pairs of a prompt; a test split of held-out prompts
when the source was published without one)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from fspo_recipe.data.sources.base import (SOURCE_SPLITS, PreferenceRow, ReadReport, SourceOption, at_least,
                                           fraction)


def plain_options(test_fraction: float = 0.0) -> tuple[SourceOption, ...]:
    """The options of a plain source; ``test_fraction``: the share of prompts held out when it has no test split."""
    return (
        SourceOption("--max-pairs-per-prompt", at_least(1), None,
                     "keep at most this many pairs of one prompt, the first in source order (default: all; SHP's "
                     "authors advise 5)"),
        SourceOption("--test-fraction", fraction, test_fraction,
                     "fraction of the prompts held out as the test split when the input has no test split (default: "
                     f"{test_fraction:g}{', as the DPO code' if test_fraction else ''})"),
    )


def plain_after_reading(by_split: dict[str, list[PreferenceRow]], options: Mapping[str, Any], report: ReadReport,
                        seed: int) -> dict[str, list[PreferenceRow]]:
    """At most ``max_pairs_per_prompt`` pairs of one prompt per split, then :func:`hold_out_prompts`."""
    limited = {split: limit_pairs_per_prompt(rows, options["max_pairs_per_prompt"], report)
               for split, rows in by_split.items()}
    return hold_out_prompts(limited, options["test_fraction"], seed)


def hold_out_prompts(by_source_split: Mapping[str, Sequence[PreferenceRow]], fraction: float, seed: int
                     ) -> dict[str, list[PreferenceRow]]:
    """For a source published without a test split: move ``fraction`` of the prompts (chosen by a seeded hash of the
    prompt, so every pair of a prompt goes to the same side and the choice does not depend on row order) from the
    train split to ``test``. A source that has a test split, or ``fraction`` 0, is returned as it is."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"--test-fraction must be in [0, 1), got {fraction:g}.")
    splits = {name: list(rows) for name, rows in by_source_split.items()}
    if fraction == 0.0 or any(SOURCE_SPLITS.get(n.lower()) == "test" for n in splits):
        return splits
    side: dict[str, bool] = {}
    threshold = int(fraction * 2**64)
    for name in [n for n in splits if SOURCE_SPLITS.get(n.lower(), "train") == "train"]:
        kept = []
        for row in splits[name]:
            held = side.get(row.question)
            if held is None:
                digest = hashlib.blake2b(f"{seed}:{row.question}".encode(), digest_size=8).digest()
                held = side[row.question] = int.from_bytes(digest, "big") < threshold
            (splits.setdefault("test", []) if held else kept).append(row)
        splits[name] = kept
    return splits


def limit_pairs_per_prompt(rows: Sequence[PreferenceRow], limit: int | None, report: ReadReport) -> list[PreferenceRow]:
    """At most ``limit`` pairs of one prompt, the first ones in source order (SHP's authors advise at most 5 per
    post so that posts with many comments do not dominate); the rest are skipped and counted."""
    if limit is None:
        return list(rows)
    seen: dict[str, int] = {}
    kept = []
    for row in rows:
        n = seen[row.question] = seen.get(row.question, 0) + 1
        if n <= limit:
            kept.append(row)
        else:
            report.skip(f"more than {limit} pairs of one prompt (--max-pairs-per-prompt)", row.row_id)
    return kept
