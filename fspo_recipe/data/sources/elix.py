"""Elix and Review (the FSPO paper's sources): two responses, each written for a user level, and a label saying which
the scoring user preferred; Review's users combine attributes ("positive concise")."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from fspo_recipe.data.sources.base import (EMPTY_TEXT, PreferenceRow, RowContext, SourceSpec, accept_pair,
                                           register_source, text, wrong_type)


_ATTRIBUTE_SPLIT = re.compile(r"\s*(?:,|\band\b|_|\+|&|/)\s*|\s+")


def review_attributes(level: str) -> list[str]:
    """The attributes of a Review user: ``"positive concise"``, ``"positive_concise"`` -> [positive, concise]."""
    return [a for a in _ATTRIBUTE_SPLIT.split(level.strip().lower()) if a]


def elix_description(level: str) -> str:
    """The paper's Elix user description."""
    return f"The user is {level.strip()}."


def review_description(level: str) -> str:
    """The paper's Review user description, e.g. "This user prefers positive and concise reviews."."""
    return f"This user prefers {' and '.join(review_attributes(level))} reviews."


_PAIRWISE_COLUMNS = {
    "prompt": "the question",
    "response_x": "first response",
    "response_y": "second response",
    "level_x": "user response_x was written for",
    "level_y": "user response_y was written for",
    "scorer_level": "the user who judged the pair",
    "label": "0 if response_x is preferred, 1 if response_y is",
}


def scored_pair_rows(spec: SourceSpec, data: Mapping[str, Sequence[Any]], ctx: RowContext) -> list[PreferenceRow]:
    """Elix / Review: two responses, each written for a level, and a label saying which the scorer preferred."""
    describe = spec.describe or elix_description
    out: list[PreferenceRow] = []
    cols = [data[c] for c in ("prompt", "response_x", "response_y", "level_x", "level_y", "scorer_level", "label")]
    for i, (q, rx, ry, lx, ly, user, label) in enumerate(zip(*cols)):
        row_id = f"{ctx.split}/{i}"
        if label not in (0, 1) or isinstance(label, bool):
            ctx.report.skip("label not 0 or 1", row_id)
            continue
        if wrong_type(ctx, row_id, {"prompt": q, "response_x": rx, "response_y": ry, "scorer_level": user,
                                    "level_x": lx, "level_y": ly}):
            continue
        q, rx, ry, user = text(q), text(rx), text(ry), text(user)
        if not user:
            ctx.report.skip(EMPTY_TEXT, row_id)
            continue
        preferred, dispreferred = (rx, ry) if label == 0 else (ry, rx)
        if not accept_pair(ctx, row_id, q, preferred, dispreferred):
            continue
        lx, ly = text(lx) or user, text(ly) or user
        lp, ld = (lx, ly) if label == 0 else (ly, lx)
        out.append(PreferenceRow(row_id, user, q, preferred, dispreferred, describe(lp), describe(ld), describe(user)))
    return out


register_source(SourceSpec("elix", "Asap7772/elix_generations_gpt4omini_pref", _PAIRWISE_COLUMNS, 4,
                           scored_pair_rows, elix_description))
register_source(SourceSpec("review", "Asap7772/steered_reviews_full_autolabel_gpt4o_pref", _PAIRWISE_COLUMNS, 8,
                           scored_pair_rows, review_description, attributes=review_attributes))
