"""OpenAssistant2 message trees: ranked replies to one message become pairs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fspo_recipe.data.sources.base import PreferenceRow, RowContext, SourceSpec, finite, plain_pair, register_source
from fspo_recipe.data.sources.dialogue import dialogue_prompt
from fspo_recipe.data.sources.plain import plain_after_reading, plain_options


def oasst2_rows(spec: SourceSpec, data: Mapping[str, Sequence[Any]], ctx: RowContext) -> list[PreferenceRow]:
    """OpenAssistant2 message trees: the ranked assistant replies to one message (``rank`` 0 is the best) become
    pairs, every two replies of different rank, the better one preferred; the prompt is the conversation from the
    tree's root to that message (:func:`dialogue_prompt`), the responses ``" " + text``. Deleted messages are left
    out; replies whose conversation cannot be followed to its root in the same split are skipped and counted."""
    out: list[PreferenceRow] = []
    cols = [data[c] for c in ("message_id", "parent_id", "role", "text", "rank")]
    deleted = data.get("deleted") or [False] * len(cols[0])
    messages: dict[str, tuple[str | None, str, str]] = {}
    replies: dict[str, list[tuple[float, int, str]]] = {}
    for i, (mid, parent, role, text, rank, gone) in enumerate(zip(*cols, deleted)):
        if gone is True:
            ctx.report.skip("deleted message", f"{ctx.split}/{i}")
            continue
        if not isinstance(mid, str) or role not in ("prompter", "assistant") or not isinstance(text, str):
            ctx.report.skip("message without message_id, role prompter/assistant or text", f"{ctx.split}/{i}")
            continue
        messages[mid] = (parent if isinstance(parent, str) else None, role, text)
        if role == "assistant" and isinstance(parent, str) and finite(ctx, i, "rank", rank) is not None:
            replies.setdefault(parent, []).append((float(rank), i, text))
    for parent, ranked in replies.items():
        turns: list[tuple[str, str]] = []
        at: str | None = parent
        while at is not None and at in messages and len(turns) <= len(messages):
            up, role, text = messages[at]
            turns.append((role, text))
            at = up
        if at is not None or not turns or turns[-1][0] != "prompter":
            for _, i, _ in ranked:
                ctx.report.skip("a reply whose conversation does not reach its root prompt", f"{ctx.split}/{i}")
            continue
        turns.reverse()
        prompt = dialogue_prompt(turns)
        ranked.sort()
        for j in range(len(ranked)):
            for k in range(j + 1, len(ranked)):
                (rank_j, i_j, text_j), (rank_k, i_k, text_k) = ranked[j], ranked[k]
                pair_id = f"{ctx.split}/{i_j}-{i_k}"
                if rank_j == rank_k:
                    ctx.report.skip("two replies of equal rank", pair_id)
                    continue
                plain_pair(ctx, pair_id, prompt, " " + text_j, " " + text_k, out, turns)
    return out


register_source(SourceSpec("oasst2", "OpenAssistant/oasst2",
                           {"message_id": "the message's id", "parent_id": "the id of the message it replies to "
                            "(null for a tree's root prompt)", "role": "prompter or assistant",
                            "text": "the message", "rank": "rank among its siblings, 0 the best (null: unranked)"},
                           0, oasst2_rows, plain=True, options=plain_options(),
                           after_reading=plain_after_reading))
