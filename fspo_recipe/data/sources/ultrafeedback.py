"""UltraFeedback binarized: a prompt and two message lists [user, assistant]."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fspo_recipe.data.sources.base import (PLAIN_USER, PreferenceRow, RowContext, SourceSpec, accept_pair,
                                           register_source, text, wrong_type)
from fspo_recipe.data.sources.plain import plain_after_reading, plain_options


def ultrafeedback_rows(spec: SourceSpec, data: Mapping[str, Sequence[Any]], ctx: RowContext) -> list[PreferenceRow]:
    """UltraFeedback binarized: ``chosen`` and ``rejected`` are message lists [user, assistant] of the same
    ``prompt``; the responses are the assistant messages. Conversations of more than one user turn are skipped and
    counted (not supported yet)."""
    out: list[PreferenceRow] = []
    for i, (prompt, chosen, rejected) in enumerate(zip(data["prompt"], data["chosen"], data["rejected"])):
        row_id = f"{ctx.split}/{i}"
        turns = []
        for messages in (chosen, rejected):
            ok = (isinstance(messages, list) and all(isinstance(m, Mapping) for m in messages)
                  and [m.get("role") for m in messages] == ["user", "assistant"])
            turns.append(messages if ok else None)
        if turns[0] is None or turns[1] is None:
            ctx.report.skip("chosen/rejected not one user and one assistant message", row_id)
            continue
        if turns[0][0].get("content") != turns[1][0].get("content"):
            ctx.report.skip("chosen and rejected answer different prompts", row_id)
            continue
        if wrong_type(ctx, row_id, {"prompt": prompt, "chosen's assistant content": turns[0][1].get("content"),
                                    "rejected's assistant content": turns[1][1].get("content")}):
            continue
        q, preferred, dispreferred = (text(x) for x in (prompt, turns[0][1].get("content"), turns[1][1].get("content")))
        if accept_pair(ctx, row_id, q, preferred, dispreferred):
            out.append(PreferenceRow(row_id, PLAIN_USER, q, preferred, dispreferred, "", ""))
    return out


register_source(SourceSpec("ultrafeedback", "HuggingFaceH4/ultrafeedback_binarized",
                           {"prompt": "the user's prompt", "chosen": "messages [user, preferred assistant]",
                            "rejected": "messages [user, dispreferred assistant]"},
                           0, ultrafeedback_rows, plain=True, hub_splits=("train_prefs", "test_prefs"),
                           options=plain_options(), after_reading=plain_after_reading))
