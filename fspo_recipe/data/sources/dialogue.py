"""The Anthropic HH dialogue format the DPO code gives prompts ("\n\nHuman: ...\n\nAssistant:"), shared by the
sources that build prompts from conversations (hh, shp, stackexchange, oasst2)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

HH_ASSISTANT: Final = "\n\nAssistant:"


def hh_prompt(dialogue: str) -> str | None:
    """The prompt of an Anthropic HH dialogue as the DPO code cuts it: everything up to and including the last
    "\n\nAssistant:" (``None`` when there is none)."""
    at = dialogue.rfind(HH_ASSISTANT)
    return None if at < 0 else dialogue[: at + len(HH_ASSISTANT)]


HUMAN: Final = "\n\nHuman:"


def dialogue_prompt(turns: Sequence[tuple[str, str]]) -> str:
    """A conversation in the Anthropic HH format the DPO code gives SHP and StackExchange prompts: each turn
    ``"\n\nHuman: <text>"`` or ``"\n\nAssistant: <text>"`` (role ``prompter``/``user`` or ``assistant``), ending with
    ``"\n\nAssistant:"`` for the reply. Responses then start with a space (``" " + text``), as in the DPO code."""
    parts = [f"{HH_ASSISTANT if role == 'assistant' else HUMAN} {text}" for role, text in turns]
    return "".join(parts) + HH_ASSISTANT


_TURN = re.compile(r"\n\n(Human|Assistant):")

Turns = tuple[tuple[str, str], ...]
"""A conversation as (role, text) pairs, role ``user`` or ``assistant``, ending with the user's turn."""


def dialogue_turns(turns: Sequence[tuple[str, str]]) -> Turns:
    """``turns`` with the roles of :func:`dialogue_prompt` (``assistant``; anything else is the user's)."""
    return tuple(("assistant" if role == "assistant" else "user", text) for role, text in turns)


def hh_turns(prompt: str) -> Turns | None:
    """The turns of an Anthropic HH prompt (the source's own text format, read once at preparation), each text
    without the space after its marker; ``None`` for a text that is not such a dialogue ending with the user's turn."""
    if not prompt.startswith(HUMAN) or not prompt.endswith(HH_ASSISTANT):
        return None
    parts = _TURN.split(prompt[: -len(HH_ASSISTANT)])
    turns = tuple(("user" if speaker == "Human" else "assistant", text[1:] if text.startswith(" ") else text)
                  for speaker, text in zip(parts[1::2], parts[2::2]))
    return turns if turns and turns[-1][0] == "user" else None


def messages_field(turns: Turns) -> list[dict[str, str]]:
    """The ``messages`` field of a prepared line: ``[{"role": ..., "content": ...}, ...]``, what chat templates
    render as the conversation."""
    return [{"role": role, "content": text} for role, text in turns]
