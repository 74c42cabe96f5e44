"""Preference pairs as token ids, and their summed response log-probs under a model, batched (evaluation and reference scoring)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

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


def encode_pairs(tokenizer: TextTokenizer, prompts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str]) -> list[EncodedPair]:
    """Encode as fairseq2's preference reader does: prompt in ``prompt`` mode, responses in ``prompt_response``."""
    src = tokenizer.create_encoder(mode="prompt")
    tgt = tokenizer.create_encoder(mode="prompt_response")
    return [EncodedPair(src(p).tolist(), tgt(c).tolist(), tgt(r).tolist()) for p, c, r in zip(prompts, chosen, rejected)]


def with_prompts(tokenizer: TextTokenizer, pairs: Sequence[EncodedPair], prompts: Sequence[str]) -> list[EncodedPair]:
    """``pairs`` with new prompts (the shots ablation); the responses' tokens are reused."""
    src = tokenizer.create_encoder(mode="prompt")
    return [EncodedPair(src(p).tolist(), pair.chosen, pair.rejected) for p, pair in zip(prompts, pairs)]


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
