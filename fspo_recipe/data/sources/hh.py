"""Anthropic HH: dialogues that share everything up to the last assistant turn."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fspo_recipe.data.sources.base import (EMPTY_TEXT, PreferenceRow, RowContext, SourceSpec, plain_pair,
                                           register_source, wrong_type)
from fspo_recipe.data.sources.dialogue import HH_ASSISTANT, hh_turns
from fspo_recipe.data.sources.plain import plain_after_reading, plain_options


def hh_rows(spec: SourceSpec, data: Mapping[str, Sequence[Any]], ctx: RowContext) -> list[PreferenceRow]:
    """Anthropic HH: the prompt is cut from the chosen dialogue (:func:`hh_prompt`), the responses are the rest of
    each dialogue, texts kept byte for byte (the responses start with a space, as in the DPO code); the prompt's turns
    are read from its text once, here (the ``messages`` field). A pair whose
    rejected dialogue does not start with that prompt is skipped and counted."""
    out: list[PreferenceRow] = []
    split = ctx.split
    for i, (chosen, rejected) in enumerate(zip(data["chosen"], data["rejected"])):
        if wrong_type(ctx, f"{split}/{i}", {"chosen": chosen, "rejected": rejected}):
            continue
        if not isinstance(chosen, str) or not isinstance(rejected, str):
            ctx.report.skip(EMPTY_TEXT, f"{split}/{i}")
            continue
        at = chosen.rfind(HH_ASSISTANT)  # hh_prompt, inlined: this loop runs 160k times for HH
        if at < 0:
            ctx.report.skip('no "\n\nAssistant:" in the chosen dialogue', f"{split}/{i}")
            continue
        cut = at + len(HH_ASSISTANT)
        if not rejected.startswith(chosen[:cut]):
            ctx.report.skip("chosen and rejected dialogues with different prompts", f"{split}/{i}")
            continue
        prompt = chosen[:cut]
        plain_pair(ctx, f"{split}/{i}", prompt, chosen[cut:], rejected[cut:], out, hh_turns(prompt) or ())
    return out


register_source(SourceSpec("hh", "Anthropic/hh-rlhf",
                           {"chosen": "dialogue ending with the preferred assistant turn",
                            "rejected": "the same dialogue ending with the dispreferred one"},
                           0, hh_rows, plain=True, options=plain_options(),
                           after_reading=plain_after_reading))
