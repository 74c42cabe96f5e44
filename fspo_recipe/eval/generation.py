"""Answers for a pairwise judge: which examples (spread over users), their prompts (with k shots), a baseline's
answers, and the step processor that ends an answer at the chat template's end of turn."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from fspo_recipe.data.episodes import prompt_parts
from fspo_recipe.eval.config import EvalError

class EndOfTurnAsEos:
    """A generation step processor: the chat template's end-of-turn token ends the answer as end-of-sequence does.

    Sampling: its probability moves to EOS (the probability of stopping is the sum of both). Greedy: EOS takes the
    larger of the two, so the answer stops exactly when the most likely token is either (as transformers' greedy
    search with both as ``eos_token_id``).
    """

    def __init__(self, stop: Sequence[int], eos: int, *, greedy: bool = False) -> None:
        self._stop = [i for i in stop if i != eos]
        self._eos = eos
        self._greedy = greedy

    def __call__(self, seqs: torch.Tensor, probs: torch.Tensor, lprob: bool = False) -> None:
        if lprob:
            raise EvalError("EndOfTurnAsEos works on probabilities, not log-probabilities.")
        for i in self._stop:
            if self._greedy:
                probs[:, self._eos] = torch.maximum(probs[:, self._eos], probs[:, i])
            else:
                probs[:, self._eos] += probs[:, i]
            probs[:, i] = 0.0


def read_baseline(path: Path) -> dict[str, str]:
    """``generation.baseline_file``: id -> response."""
    baseline: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rec = json.loads(line)
                baseline[str(rec["id"])] = str(rec["response"])
            except (json.JSONDecodeError, KeyError, TypeError) as ex:
                raise EvalError(f"{path}, line {lineno}: need JSON with 'id' and 'response' ({ex}).") from ex
    return baseline


def spread_over_users(examples: Sequence[Mapping[str, Any]], limit: int | None) -> list[Mapping[str, Any]]:
    """At most ``limit`` examples, taken in turn from each user (first user's first, second user's first, ...), in
    the split's order; all with ``None``."""
    if limit is None or limit >= len(examples):
        return list(examples)
    by_user: dict[str, list[Mapping[str, Any]]] = {}
    for e in examples:
        by_user.setdefault(str(e["user"]), []).append(e)
    picked: list[Mapping[str, Any]] = []
    for rank in range(max(map(len, by_user.values()))):
        picked += [rows[rank] for rows in by_user.values() if rank < len(rows)]
        if len(picked) >= limit:
            break
    return picked[:limit]


def generation_prompts(examples: Sequence[Mapping[str, Any]], shots: int | None
                       ) -> tuple[list[str], list[str], list[int | None]]:
    """The prompts to answer (with their first ``shots`` shots, or as in the data), their questions and shot counts.

    A prompt outside the FSPO template keeps its ``src`` and its ``question`` field (else the prompt) as question;
    it cannot be re-rendered with fewer shots.
    """
    prompts, questions, counts = [], [], []
    for e in examples:
        try:
            parts = prompt_parts(dict(e))
        except ValueError as ex:
            if shots is not None:
                raise EvalError(f"`generation.shots` needs prompts in the FSPO template; example {e['id']!r}: {ex}") from None
            prompts.append(str(e["src"]))
            questions.append(str(e.get("question") or e["src"]))
            counts.append(None)
            continue
        k = len(parts.shots) if shots is None else min(shots, len(parts.shots))
        prompts.append(parts.render(k))
        questions.append(parts.question)
        counts.append(k)
    return prompts, questions, counts
