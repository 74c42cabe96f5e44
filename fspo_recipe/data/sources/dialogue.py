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


def dialogue_messages(prompt: str) -> list[dict[str, str]] | None:
    """The messages of a prompt in the HH dialogue format (:func:`dialogue_prompt`; Anthropic HH's own prompts too):
    ``[{"role": "user", "content": ...}, {"role": "assistant", ...}, ...]`` without the final empty assistant turn,
    each text without the space after its marker; ``None`` for a prompt in another format. Chat templates render
    these as a real conversation."""
    if not prompt.startswith(HUMAN) or not prompt.endswith(HH_ASSISTANT):
        return None
    parts = _TURN.split(prompt[: -len(HH_ASSISTANT)])
    messages = []
    for speaker, text in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if speaker == "Human" else "assistant",
                         "content": text[1:] if text.startswith(" ") else text})
    return messages if messages and messages[-1]["role"] == "user" else None
