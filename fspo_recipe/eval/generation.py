"""Answers for a pairwise judge: which examples (spread over users), their prompts (with k shots), a baseline's
answers, and the step processor that ends an answer at the chat template's end of turn."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
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


def answer_record(example: Mapping[str, Any], *, question: str, shots: int | None, system: str, prompt: str,
                  generated: str, tokens: int | None, ended: bool | None = None,
                  baseline: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One line of ``generations.jsonl`` as ``preference_eval`` and ``fspo-generate`` write it: what ``fspo-judge``
    reads (``question``, ``response``: the answer under the response header, ``user``, ``user_description``,
    ``system``), the raw continuation (``generated``), whether the model ended it by itself before the token limit
    (``ended``; None where the backend does not say), the description it wrote first (rationale variant), the
    data's preferred answer (``reference_chosen``) and a baseline's answer when one was given."""
    from fspo_recipe.data.episodes import split_completion
    from fspo_recipe.data.jsonl import example_answers

    parts = split_completion(generated)
    record = {"id": example["id"], "user": example["user"], "user_description": example.get("user_description"),
              "question": question, "shots": shots, "system": system, "tokens": tokens, "ended": ended, "response": parts.response,
              "description": parts.description, "generated": generated, "prompt": prompt,
              "reference_chosen": example_answers(dict(example))[0]}
    if baseline and str(example["id"]) in baseline:
        record["baseline_response"] = baseline[str(example["id"])]
    return record


def length_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices of prompts in batches of at most ``batch_size``, shortest prompts first: batches of similar length pad
    (transformers) or feed one step at a time (fairseq2) few tokens."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


class Fairseq2Answers:
    """fairseq2's sampling generator as ``preference_eval`` runs it: greedy (top-k 1) or top-p sampling, the prompt
    encoded by ``encoder`` (:class:`fspo_recipe.scoring.pairs.PairEncoder`: plain, or the user turn of the chat
    template), stopping at EOS and at the chat template's end-of-turn token, at most ``max_new_tokens`` tokens."""

    def __init__(self, model: Any, tokenizer: Any, encoder: Any, *, greedy: bool, top_p: float, temperature: float,
                 max_new_tokens: int, seed: int, chat_kwargs: Mapping[str, Any]) -> None:
        from fairseq2.generation import SamplingSequenceGenerator, TopKSampler, TopPSampler

        from fspo_recipe.fairseq2_compat import generation_view

        self.encoder, self.decoder = encoder, tokenizer.create_decoder()
        self.stop: list[int] = []
        self.eos = model.vocab_info.eos_idx
        self.max_new_tokens = max_new_tokens
        if encoder.template is not None:
            token = encoder.template.end_of_turn(**chat_kwargs)
            ids = tokenizer.create_encoder(mode="as_is")(token).tolist()
            if len(ids) != 1:
                raise EvalError(f"the chat template's end-of-turn token {token!r} is not one token of the tokenizer.")
            self.stop = ids
        if self.eos is None:
            raise EvalError("the model has no end-of-sequence token; it cannot generate.")
        torch.manual_seed(seed)
        sampler = TopKSampler(k=1) if greedy else TopPSampler(p=top_p)
        # fairseq2's generator ends a hypothesis that reaches max_gen_len with a forced EOS in place of its last
        # token: one step more, then the cut in generate(), gives max_new_tokens tokens as transformers and servers.
        processors = [EndOfTurnAsEos(self.stop, self.eos, greedy=greedy)] if self.stop else None
        self.generator = SamplingSequenceGenerator(generation_view(model), sampler, max_gen_len=max_new_tokens + 1,
                                                   temperature=1.0 if greedy else temperature,
                                                   step_processors=processors)

    def generate(self, prompts: Sequence[str], batch_size: int, device: Any) -> Iterator[tuple[int, str, int, bool]]:
        """(index, answer text, its token count, whether the model ended it before the limit) of every prompt, ``batch_size`` prompts per call, in batches of
        prompts of similar length: fairseq2's generator starts every row of a batch at its shortest prompt and feeds
        the longer prompts' remaining tokens one step at a time (measured: 8 prompts of mixed lengths per batch were
        slower than one prompt at a time). Yielded as each batch ends, shortest prompts first."""
        from fairseq2.nn.padding import pad_seqs

        encoded = [self.encoder.prompt(p) for p in prompts]
        for batch in length_batches([len(e) for e in encoded], batch_size):
            seqs, padding = pad_seqs([encoded[i].to(device) for i in batch])
            output = self.generator(seqs, padding)
            for i, hypotheses in zip(batch, output.hypotheses):
                # fairseq2 lets a batch's shorter prompts run to the longest prompt + max_gen_len: cut to
                # max_new_tokens, the documented limit of every answer.
                ids = hypotheses[0].seq.tolist()[: self.max_new_tokens]
                ended = bool(ids) and (ids[-1] == self.eos or ids[-1] in self.stop)
                while ids and (ids[-1] == self.eos or ids[-1] in self.stop):
                    ids.pop()
                yield i, self.decoder(torch.tensor(ids, dtype=torch.int64)), len(ids), ended
