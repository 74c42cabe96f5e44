"""What a reader sees of generated answers, beside the win rates: does each answer end by itself, stay clean of the
prompt's template, avoid loops, and (synthetic users) have the poles its user prefers?

Per answer (a line of a generation file, as ``preference_eval generation.enabled=true`` and ``fspo-generate`` write
it):

- ``ended``: the model stopped by itself (end-of-sequence or the chat template's end of turn) before
  ``max_new_tokens``; unknown (left out) where the file does not say (files of older versions, OpenAI servers);
- ``clean``: the text, after the response header the model was trained to write first (and a user description
  before it, rationale variant), has none of the template's headers ("# Example", "## Question",
  "## Dispreferred Response", ...): the model did not run on into another example; an empty answer is not clean;
- ``loops``: some sequence of 4 words occurs 3 or more times (``a bell is a bell is a bell is ...``);
- ``follows`` (users whose description names synthetic poles, ``fspo-synthetic-users``): the answer (the text the
  judge reads) has every pole its user prefers; ``follows_<pole>``: the same, among the users who prefer that pole.

Shares come with 95% bootstrap intervals over answers.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Final

import numpy as np

from fspo_recipe.data.episodes import (DESCRIPTION_HEADER, DISPREFERRED_HEADER, PREFERRED_HEADER, QUESTION_HEADER,
                                       RESPONSE_HEADER, TASK_HEADER, example_header, split_completion)
from fspo_recipe.data.synthetic import has_pole, poles_in_description
from fspo_recipe.stats import bootstrap_interval

TEMPLATE_TEXT: Final = tuple(h.strip() for h in (example_header(1).split(" 1")[0], QUESTION_HEADER, PREFERRED_HEADER,
                                                 DISPREFERRED_HEADER, RESPONSE_HEADER, TASK_HEADER,
                                                 DESCRIPTION_HEADER))
"""Template text an answer must not contain once its leading headers are taken off ("# Example", "## Question", ...)."""

LOOP_WORDS: Final = 4
LOOP_REPEATS: Final = 3


def _answer_body(generated: str) -> str:
    """The generated text without the headers it was trained to start with: an optional user description block,
    then the response header."""
    text = generated.strip()
    if text.startswith(DESCRIPTION_HEADER.strip()):
        at = min((text.find(h.strip()) for h in (PREFERRED_HEADER, RESPONSE_HEADER) if h.strip() in text),
                 default=len(text))
        text = text[at:]
    for header in (PREFERRED_HEADER, RESPONSE_HEADER):
        if text.startswith(header.strip()):
            return text[len(header.strip()) :].strip()
    return text


def is_clean(generated: str) -> bool:
    """Whether the answer is non-empty and holds no template text after its leading headers."""
    body = _answer_body(generated)
    return bool(body) and not any(marker in body for marker in TEMPLATE_TEXT)


def loops(text: str, words: int = LOOP_WORDS, repeats: int = LOOP_REPEATS) -> bool:
    """Whether some sequence of ``words`` words (case-folded) occurs ``repeats`` times or more in ``text``."""
    tokens = re.findall(r"\w+", text.lower())
    grams = Counter(tuple(tokens[i : i + words]) for i in range(len(tokens) - words + 1))
    return any(n >= repeats for n in grams.values())


def answer_flags(record: Mapping[str, Any]) -> dict[str, bool | None]:
    """``ended``, ``clean``, ``loops`` and, for a synthetic user, ``follows`` and ``follows_<pole>`` of one line of a
    generation file (``generated``: the raw continuation, else ``response``; ``ended`` where the file has it)."""
    generated = str(record.get("generated") if record.get("generated") is not None else record.get("response", ""))
    response = record.get("response")
    answer = str(response) if response is not None else split_completion(generated).response
    ended = record.get("ended")
    flags: dict[str, bool | None] = {"ended": ended if isinstance(ended, bool) else None,
                                     "clean": is_clean(generated), "loops": loops(generated)}
    poles = poles_in_description(str(record.get("user_description") or record.get("user") or ""))
    if poles:
        met = {pole: has_pole(answer, pole) for pole in poles}
        flags["follows"] = all(met.values())
        flags.update({f"follows_{pole}": ok for pole, ok in met.items()})
    return flags


def answer_figures(records: Iterable[Mapping[str, Any]], *, samples: int = 1000, seed: int = 0
                   ) -> dict[str, dict[str, Any]]:
    """Every flag of :func:`answer_flags` over ``records``: {flag: {share, ci95, count, answers}} where ``answers`` is
    how many answers the flag is known for and ``count`` how many have it."""
    values: dict[str, list[bool]] = {}
    for record in records:
        for flag, value in answer_flags(record).items():
            if value is not None:
                values.setdefault(flag, []).append(value)
    out = {}
    for flag in sorted(values, key=lambda f: (f.startswith("follows_"), f)):
        xs = np.array(values[flag], dtype=np.float64)
        lo, hi = bootstrap_interval(xs, samples=samples, seed=seed)
        out[flag] = {"share": float(xs.mean()), "ci95": [lo, hi], "count": int(xs.sum()), "answers": len(xs)}
    return out


def figure_cell(figure: Mapping[str, Any] | None) -> str:
    """``0.917 [0.85, 0.97]`` (share and 95% interval), or ``n/a``."""
    if not figure:
        return "n/a"
    lo, hi = figure["ci95"]
    return f"{figure['share']:.3f} [{lo:.2f}, {hi:.2f}]"
