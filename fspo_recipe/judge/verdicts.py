"""A judge's reply to one ordering of a pair, and the outcome of a pair judged in both orders."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

Choice = Literal["A", "B", "tie"]

WIN: Final = 1.0
TIE: Final = 0.5
LOSS: Final = 0.0

# "Preferred: A", "preferred - (B)", "**Preferred:** A", "Preferred answer: [B]": the word, a separator, one letter,
# and not "A or B" (a judge quoting the format). "Neither answer is preferred. A and B are ..." has no separator.
_VERDICT = re.compile(r"(?i:\bpreferred\b)[\s*_]*(?i:answer|response)?[\s*_]*[:=\-\u2013\u2014][\s*_]*[(\[]?([AB])[)\]]?"
                      r"(?![\w])(?!\s*(?:or|/|and)\s*[(\[]?[AB]\b)")
_BARE = re.compile(r"^\W*\(?([AB])\)?\W*$")


def parse_choice(reply: str) -> Choice | None:
    """The answer a judge's reply prefers, when it gives one clear verdict: the verdict (``Preferred: A`` or
    ``Preferred: B``) on its last non-blank line, as the judge is asked to end; else the verdicts elsewhere in the
    reply when they all agree; else a reply that is only ``A`` or ``B``. ``None`` when there is no verdict, or
    verdicts that disagree: the caller asks again, then records a failure; it never guesses."""
    lines = [line for line in reply.splitlines() if line.strip()]
    if not lines:
        return None
    for text in (lines[-1], reply):
        found = set(_VERDICT.findall(text))
        if found:
            return found.pop() if len(found) == 1 else None  # type: ignore[return-value]
    bare = _BARE.match(reply.strip())
    return bare.group(1) if bare else None  # type: ignore[return-value]


@dataclass(frozen=True)
class Verdict:
    """The judge's decision on one ordering, or why there is none."""

    choice: Choice | None
    """``A``, ``B``, ``tie`` (the exact judge), or ``None`` for a failure."""

    reply: str | None = None
    """The judge's raw reply (LLM judges)."""

    error: str | None = None
    """Why there is no choice (unparseable reply, server errors after retries, a timeout)."""

    cached: bool = False
    """Answered from the cache, no request sent."""


def system_score(first: Verdict, second: Verdict) -> float | None:
    """The system's score for a pair judged with its answer as A (``first``) and as B (``second``).

    Agreeing orders give a win (1) or a loss (0) (or a tie, when both say so); orders that disagree give a tie
    (0.5), which cancels the judge's position bias. ``None`` when either order failed.
    """
    if first.choice is None or second.choice is None:
        return None
    a = {"A": WIN, "B": LOSS, "tie": TIE}[first.choice]
    b = {"B": WIN, "A": LOSS, "tie": TIE}[second.choice]
    return a if a == b else TIE


def outcome_name(score: float | None) -> str:
    return {WIN: "win", TIE: "tie", LOSS: "loss"}.get(score, "failure") if score is not None else "failure"


@dataclass(frozen=True)
class JudgeQuery:
    """What a judge is shown for one ordering of a pair."""

    description: str
    question: str
    answer_a: str
    answer_b: str

    def swapped(self) -> JudgeQuery:
        return JudgeQuery(self.description, self.question, self.answer_b, self.answer_a)
