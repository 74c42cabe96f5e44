"""Roleplay (the FSPO paper's source): preferred and dispreferred responses of a persona, with its description."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fspo_recipe.data.sources.base import (EMPTY_TEXT, PreferenceRow, RowContext, SourceSpec, accept_pair,
                                           register_source, text, wrong_type)


def persona_rows(spec: SourceSpec, data: Mapping[str, Sequence[Any]], ctx: RowContext) -> list[PreferenceRow]:
    """Roleplay: preferred and dispreferred responses of a persona, and the persona's description."""
    out: list[PreferenceRow] = []
    cols = [data[c] for c in ("x", "yw", "yl", "level", "score_persona")]
    for i, (q, yw, yl, level, persona) in enumerate(zip(*cols)):
        row_id = f"{ctx.split}/{i}"
        if wrong_type(ctx, row_id, {"x": q, "yw": yw, "yl": yl}):
            continue
        user = text(str(level)) if level is not None else ""
        q, yw, yl = text(q), text(yw), text(yl)
        if not user:
            ctx.report.skip(EMPTY_TEXT, row_id)
            continue
        if not accept_pair(ctx, row_id, q, yw, yl):
            continue
        description = text(persona.get("persona_description")) if isinstance(persona, Mapping) else ""
        if not description:
            ctx.report.skip("score_persona without persona_description", row_id)
            continue
        # Roleplay does not say whom the rejected response was written for; the episode builder picks another
        # persona's description for the rejected rationale.
        out.append(PreferenceRow(row_id, user, q, yw, yl, description, "", description))
    return out


register_source(SourceSpec(
    "roleplay",
    "sher222/persona-iterative-responses",
    {
        "x": "the question",
        "yw": "preferred response",
        "yl": "dispreferred response",
        "level": "persona id (the user)",
        "score_persona": "struct with persona_description",
    },
    8,
    persona_rows,
))
