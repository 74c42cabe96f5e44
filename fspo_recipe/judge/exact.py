"""The exact judge of synthetic users: the user's hidden preference decides, from the answers' text alone.

A synthetic user (``fspo-synthetic-users``) prefers one pole of one or two properties (upper case, long, positive,
exclaiming, ...), named in its description. The answer that has more of the user's poles wins; as many is a tie.
No model is involved, so the win rates of the synthetic study measure the generations, not a judge's taste.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import final

from fspo_recipe.data.synthetic import POLE_TEXT, has_pole, poles_in_description
from fspo_recipe.judge.matchups import JudgeInputError
from fspo_recipe.judge.verdicts import JudgeQuery, Verdict


@final
class ExactJudge:
    """Decides ``A``, ``B`` or ``tie`` by counting the user's poles each answer has (:func:`has_pole`)."""

    name = "exact"

    def judge_all(self, queries: Sequence[JudgeQuery], tick: Callable[[Verdict], None] = lambda v: None
                  ) -> list[Verdict]:
        out = []
        for query in queries:
            verdict = Verdict(self.choose(query))
            tick(verdict)
            out.append(verdict)
        return out

    @staticmethod
    def choose(query: JudgeQuery) -> str:
        poles = poles_in_description(query.description)
        if not poles:
            raise JudgeInputError(
                f"the exact judge knows synthetic users only (fspo-synthetic-users); the description "
                f"{query.description!r} names none of: {', '.join(POLE_TEXT.values())}."
            )
        a = sum(has_pole(query.answer_a, p) for p in poles)
        b = sum(has_pole(query.answer_b, p) for p in poles)
        return "A" if a > b else "B" if b > a else "tie"
