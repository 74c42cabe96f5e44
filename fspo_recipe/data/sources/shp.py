"""Stanford SHP: one pair of comments per row with their scores; pairs whose score ratio is below
``--min-score-ratio`` are skipped, as the DPO code filters them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fspo_recipe.data.sources.base import (EMPTY_TEXT, PreferenceRow, RowContext, SourceSpec, finite, plain_pair,
                                           register_source, wrong_type)
from fspo_recipe.data.sources.base import SourceOption, positive
from fspo_recipe.data.sources.dialogue import dialogue_prompt
from fspo_recipe.data.sources.plain import plain_after_reading, plain_options


MIN_SCORE_RATIO = SourceOption("--min-score-ratio", positive, 2.0,
                               "skip pairs whose higher comment score is below this many times the lower (default: "
                               "2, the DPO code's filter; 1 keeps every pair)")


def shp_rows(spec: SourceSpec, data: Mapping[str, Sequence[Any]], ctx: RowContext) -> list[PreferenceRow]:
    """Stanford SHP: one pair per row, as the DPO code reads it: prompt ``"\n\nHuman: " + history +
    "\n\nAssistant:"``, responses ``" " + human_ref_A/B``, A preferred when ``labels`` is 1; pairs whose score
    ratio (higher over lower) is below ``--min-score-ratio`` (2 in the DPO code) are skipped and counted."""
    out: list[PreferenceRow] = []
    cols = [data[c] for c in ("history", "human_ref_A", "human_ref_B", "score_A", "score_B", "labels")]
    for i, (history, ref_a, ref_b, score_a, score_b, label) in enumerate(zip(*cols)):
        row_id = f"{ctx.split}/{i}"
        a, b = finite(ctx, i, "score_A", score_a), finite(ctx, i, "score_B", score_b)
        if label not in (0, 1) or isinstance(label, bool):
            ctx.report.skip("labels not 0 or 1", row_id)
        elif a is None or b is None or a <= 0 or b <= 0:
            ctx.report.skip("score_A/score_B not positive numbers", row_id)
        elif max(a / b, b / a) < ctx.options['min_score_ratio']:
            ctx.report.skip(f"score ratio below {ctx.options['min_score_ratio']:g} (--min-score-ratio)", row_id)
        elif wrong_type(ctx, row_id, {"history": history, "human_ref_A": ref_a, "human_ref_B": ref_b}):
            pass
        elif not all(isinstance(x, str) for x in (history, ref_a, ref_b)):
            ctx.report.skip(EMPTY_TEXT, row_id)
        else:
            chosen, rejected = (ref_a, ref_b) if label == 1 else (ref_b, ref_a)
            turns = [("user", history)]
            plain_pair(ctx, row_id, dialogue_prompt(turns), " " + chosen, " " + rejected, out, turns)
    return out


register_source(SourceSpec("shp", "stanfordnlp/SHP",
                           {"history": "the post (question)", "human_ref_A": "comment A", "human_ref_B": "comment B",
                            "score_A": "comment A's score", "score_B": "comment B's score",
                            "labels": "1 if comment A is preferred, 0 if B is"},
                           0, shp_rows, plain=True, after_reading=plain_after_reading,
                           options=(MIN_SCORE_RATIO, *plain_options())))
