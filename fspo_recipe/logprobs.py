"""Sequence log-probabilities of responses, computing logits only at response positions.

The prompt of an FSPO example is long (the shots) and its responses short, so the [T, vocab] logits of the
prompt positions would be most of the memory of a step and none of its signal. Here the decoder runs over the
whole sequence, but only the hidden states of response positions are projected to the vocabulary.
"""

from __future__ import annotations

import types
from typing import final

import torch
from torch import Tensor
from torch.nn import Module

from fairseq2.models.decoder import DecoderModel
from fairseq2.models.sequence import SequenceBatch, as_auto_regressive_input
from fairseq2.nn.padding import PaddingMask


@final
class ResponseLogpsInput:
    """What the patched ``forward`` of a decoder receives to return response log-probs instead of logits."""

    def __init__(self, batch: SequenceBatch) -> None:
        if batch.target_mask is None:
            raise ValueError("The batch has no target mask: cannot tell prompt tokens from response tokens.")
        self.batch = batch


def response_logps(model: DecoderModel, batch: SequenceBatch) -> tuple[Tensor, Tensor]:
    """Return (summed log-probs [B] in nats, response token counts [B]) of the target tokens of ``batch``.

    ``batch.seqs`` is [B, T] (prompt + response, padded), ``batch.target_mask`` [B, T] is True on response
    tokens. Log-softmax runs in float32 whatever the model's dtype. Only response positions reach the output
    projection, so peak memory grows with the response length, not with the prompt.
    """
    inputs, targets = as_auto_regressive_input(batch)
    assert targets.target_mask is not None

    hidden, _ = model.decode(inputs.seqs, inputs.padding_mask)  # [B, T-1, D]

    mask = targets.target_mask  # [B, T-1], padding is never a target
    picked = hidden[mask]  # [N, D], N = response tokens in the batch

    logits = model.project(picked.unsqueeze(0), None).logits.squeeze(0)  # [N, V]

    token_logps = torch.log_softmax(logits.float(), dim=-1)
    token_logps = token_logps.gather(-1, targets.seqs[mask].unsqueeze(-1)).squeeze(-1)  # [N]

    per_position = torch.zeros(mask.shape, dtype=token_logps.dtype, device=token_logps.device)
    per_position = per_position.masked_scatter(mask, token_logps)

    return per_position.sum(dim=-1), mask.sum(dim=-1).to(token_logps.dtype)


def unwrap_decoder(module: Module) -> DecoderModel:
    """Return the :class:`DecoderModel` inside DDP, FSDP or ``torch.compile`` wrappers."""
    seen = module
    while not isinstance(seen, DecoderModel):
        inner = getattr(seen, "module", None) or getattr(seen, "_orig_mod", None)
        if inner is None or inner is seen:
            raise TypeError(f"Expected a fairseq2 DecoderModel (possibly wrapped), got {type(module).__name__}.")
        seen = inner
    return seen


def enable_response_logps_forward(module: Module) -> None:
    """Let ``module(ResponseLogpsInput(batch))`` return :func:`response_logps` of the inner decoder.

    DDP synchronizes gradients and FSDP gathers parameters only when the wrapper's ``forward`` runs, so the
    response-only computation has to happen inside the decoder's ``forward`` and not by calling ``decode``
    around the wrapper. Other inputs go to the original ``forward`` unchanged. Idempotent.
    """
    decoder = unwrap_decoder(module)
    if getattr(decoder, "_fspo_response_forward", False):
        return

    original = decoder.forward

    def forward(self: DecoderModel, batch: object) -> object:
        if isinstance(batch, ResponseLogpsInput):
            return response_logps(self, batch.batch)
        return original(batch)

    decoder.forward = types.MethodType(forward, decoder)  # type: ignore[method-assign]
    decoder._fspo_response_forward = True  # type: ignore[attr-defined]


def concat_pairs(chosen: SequenceBatch, rejected: SequenceBatch) -> SequenceBatch:
    """Stack chosen and rejected sequences into one [2B, T] batch (chosen first), so one forward serves both."""
    if chosen.target_mask is None or rejected.target_mask is None:
        raise ValueError("Preference batches must carry target masks.")

    width = max(chosen.seqs.size(1), rejected.seqs.size(1))

    def pad(x: Tensor, value: int | bool) -> Tensor:
        return torch.nn.functional.pad(x, (0, width - x.size(1)), value=value)

    def lens(b: SequenceBatch) -> Tensor:
        if b.padding_mask is None:
            return torch.full((b.seqs.size(0),), b.seqs.size(1), device=b.seqs.device, dtype=torch.int64)
        return b.padding_mask.seq_lens

    seqs = torch.cat([pad(chosen.seqs, 0), pad(rejected.seqs, 0)])
    target_mask = torch.cat([pad(chosen.target_mask, False), pad(rejected.target_mask, False)])
    seq_lens = torch.cat([lens(chosen), lens(rejected)])

    padding_mask = None if bool((seq_lens == width).all()) else PaddingMask(seq_lens, width)

    return SequenceBatch(seqs, padding_mask, target_mask)
