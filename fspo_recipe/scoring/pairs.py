"""Preference pairs as token ids, and their summed response log-probs under a model, batched (evaluation and reference scoring)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fairseq2.data.text.tokenizers import TextTokenizer
from fairseq2.models.decoder import DecoderModel
from fairseq2.models.sequence import SequenceBatch
from fairseq2.nn.padding import PaddingMask

from fspo_recipe.scoring.logps import pair_logps


def default_device(device: str | None = None) -> torch.device:
    """``device`` if given, else ``FAIRSEQ2_DEVICE``, else CUDA when present, else CPU (fairseq2's own rule)."""
    return torch.device(device or os.environ.get("FAIRSEQ2_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))


@dataclass(frozen=True)
class EncodedPair:
    """Token ids of one example: the prompt (with bos) and the two responses (with eos)."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


@dataclass(frozen=True)
class PairScores:
    """Per-pair log-probs (nats, summed over response tokens) and response token counts, each [num_pairs]."""

    chosen: np.ndarray
    rejected: np.ndarray
    chosen_lengths: np.ndarray
    rejected_lengths: np.ndarray


class PairEncoder:
    """Token ids of (prompt, chosen, rejected), as the ``fspo_preference`` reader, the evaluator and reference
    scoring all encode them.

    Plain (the default; base models and the tiny model): the prompt in ``source_mode`` (fairseq2's ``prompt``:
    with the tokenizer's beginning-of-sequence token), each response in ``target_mode`` (``prompt_response``: with
    its end-of-sequence token). With ``chat_template`` (instruct models): the FSPO prompt is the user turn (an
    example with a ``messages`` field, a plain source's dialogue: those turns) and each response the assistant turn of the tokenizer's chat template (:class:`fspo_recipe.models.hf_tokenizer.ChatTemplate`),
    the response ending with the template's end-of-turn token; ``chat_kwargs`` go to the template (e.g.
    ``enable_thinking: false`` for Qwen3).
    """

    def __init__(self, tokenizer: TextTokenizer, *, chat_template: bool = False,
                 chat_kwargs: Mapping[str, object] | None = None, source_mode: str = "prompt",
                 target_mode: str = "prompt_response") -> None:
        self.template = getattr(tokenizer, "chat_template", None) if chat_template else None
        if chat_template and self.template is None:
            raise ValueError(
                "chat_template is set, but the model's tokenizer has no chat template (it must be a Hugging Face "
                "tokenizer, tokenizer_family: hf_tokenizer, whose tokenizer_config.json has a chat_template)."
            )
        self._kwargs = dict(chat_kwargs or {})
        self._src = tokenizer.create_encoder(mode=source_mode)
        self._tgt = tokenizer.create_encoder(mode=target_mode)
        self._raw = tokenizer.create_encoder(mode="as_is") if self.template is not None else None

    def encode(self, prompt: str, chosen: str, rejected: str, messages: Sequence[Mapping[str, str]] | None = None
               ) -> tuple[Tensor, Tensor, Tensor]:
        """([P], [Rc], [Rr]) token ids. ``messages``: the prompt as a conversation (the example's ``messages``
        field), rendered by the chat template in place of ``prompt``; ignored without one."""
        if self.template is None:
            return self._src(prompt), self._tgt(chosen), self._tgt(rejected)
        assert self._raw is not None
        if messages is not None:  # a dialogue in the HH format: the responses without the format's space
            chosen, rejected = chosen.removeprefix(" "), rejected.removeprefix(" ")
        conversation = list(messages) if messages is not None else prompt
        head, chosen_turn = self.template.render_pair(conversation, chosen, **self._kwargs)
        _, rejected_turn = self.template.render_pair(conversation, rejected, **self._kwargs)
        return self._raw(head), self._raw(chosen_turn), self._raw(rejected_turn)

    def prompt(self, prompt: str, messages: Sequence[Mapping[str, str]] | None = None) -> Tensor:
        """The ids a model continues to answer ``prompt`` (or ``messages``, with a chat template: generation)."""
        if self.template is None:
            return self._src(prompt)
        assert self._raw is not None
        return self._raw(self.template.render_prompt(list(messages) if messages is not None else prompt,
                                                     **self._kwargs))


def encode_pairs(tokenizer: TextTokenizer, prompts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str],
                 encoder: PairEncoder | None = None,
                 messages: Sequence[Sequence[Mapping[str, str]] | None] | None = None) -> list[EncodedPair]:
    """Encode as the ``fspo_preference`` reader does (``encoder``: plain by default, or with a chat template;
    ``messages``: each prompt's ``messages`` field or None)."""
    encoder = encoder or PairEncoder(tokenizer)
    out = []
    for i, (p, c, r) in enumerate(zip(prompts, chosen, rejected)):
        src, tgt_c, tgt_r = encoder.encode(p, c, r, None if messages is None else messages[i])
        out.append(EncodedPair(src.tolist(), tgt_c.tolist(), tgt_r.tolist()))
    return out


def _side(pairs: Sequence[EncodedPair], key: str, device: torch.device) -> SequenceBatch:
    seqs = [p.prompt + getattr(p, key) for p in pairs]
    width = max(map(len, seqs))
    lens = torch.tensor([len(s) for s in seqs], device=device)
    tokens = torch.zeros((len(seqs), width), dtype=torch.int64)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (p, s) in enumerate(zip(pairs, seqs)):
        tokens[i, : len(s)] = torch.tensor(s)
        mask[i, len(p.prompt) : len(s)] = True
    padding = None if bool((lens == width).all()) else PaddingMask(lens, width)
    return SequenceBatch(tokens.to(device), padding, mask.to(device))


@torch.inference_mode()
def score_pairs(
    model: DecoderModel,
    pairs: Sequence[EncodedPair],
    *,
    batch_size: int,
    device: torch.device,
    tick: Callable[[int], None] = lambda n: None,
    shared_prefix: bool = True,
) -> PairScores:
    """Score every pair (one forward per batch, the prompt once per pair with ``shared_prefix``), batched by length."""
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i].prompt) + len(pairs[i].chosen) + len(pairs[i].rejected))
    out = np.zeros((4, len(pairs)), dtype=np.float64)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = [pairs[i] for i in idx]
        logps, lengths = pair_logps(model, _side(batch, "chosen", device), _side(batch, "rejected", device),
                                    shared_prefix=shared_prefix)
        n = len(idx)
        out[0, idx] = logps[:n].double().cpu().numpy()
        out[1, idx] = logps[n:].double().cpu().numpy()
        out[2, idx] = lengths[:n].double().cpu().numpy()
        out[3, idx] = lengths[n:].double().cpu().numpy()
        tick(n)
    return PairScores(*out)
