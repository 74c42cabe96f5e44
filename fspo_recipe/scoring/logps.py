"""Summed response log-probs of preference pairs: the one computation behind training, reference pre-scoring and
evaluation.

The prompt of an FSPO example is long (the shots) and its responses short, so the [T, vocab] logits of the prompt
positions would be most of the memory of a step and none of its signal: only the hidden states of response
positions are projected to the vocabulary.

- A model implementing :class:`~fspo_recipe.models.packing.PackedDecoder` runs ``PackedBatch`` rows: with
  ``shared_prefix`` one [prompt, chosen, rejected] row per pair (the prompt once), else two [prompt, response]
  rows per pair. Call it through its ``forward`` with a :class:`PairLogpsRequest` (what DDP and FSDP need), or
  :func:`pair_logps` where no wrapper is involved.
- Any other decoder gets :func:`stock_pair_logps`: the paired rows through its ordinary ``forward`` (full logits).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Module

from fairseq2.models.decoder import DecoderModel
from fairseq2.models.sequence import SequenceBatch, as_auto_regressive_input
from fairseq2.nn.padding import PaddingMask

from fspo_recipe.models.packing import PackedBatch, PackedDecoder, PairLogpsRequest, packed_pair_logps, score_packed
from fspo_recipe.scoring.tokens import float_log_softmax, token_logps


def unwrap_decoder(module: Module) -> DecoderModel:
    """Return the :class:`DecoderModel` inside DDP, FSDP or ``torch.compile`` wrappers."""
    seen = module
    while not isinstance(seen, DecoderModel):
        inner = getattr(seen, "module", None) or getattr(seen, "_orig_mod", None)
        if inner is None or inner is seen:
            raise TypeError(f"Expected a fairseq2 DecoderModel (possibly wrapped), got {type(module).__name__}.")
        seen = inner
    return seen


def supports_packing(module: Module) -> bool:
    """Whether the (possibly wrapped) model implements the packed-pairs interface."""
    return isinstance(unwrap_decoder(module), PackedDecoder)


def pair_logps(model: Module, chosen: SequenceBatch, rejected: SequenceBatch, *, shared_prefix: bool
               ) -> tuple[Tensor, Tensor]:
    """Summed response log-probs and token counts of chosen (first B) and rejected (last B) responses, [2B] each,
    for a model that is not wrapped (evaluation, reference scoring, tests); see the module docstring."""
    decoder = unwrap_decoder(model)
    if isinstance(decoder, PackedDecoder):
        return packed_pair_logps(decoder, PairLogpsRequest(chosen, rejected, shared_prefix))
    return stock_pair_logps(decoder, chosen, rejected)


def shared_prefix_logps(model: Module, chosen: SequenceBatch, rejected: SequenceBatch) -> tuple[Tensor, Tensor]:
    """:func:`pair_logps` with one [prompt, chosen, rejected] row per pair (the model must implement packing)."""
    decoder = unwrap_decoder(model)
    if not isinstance(decoder, PackedDecoder):
        raise TypeError(f"{type(decoder).__name__} does not implement PackedDecoder: no shared-prefix forward.")
    return score_packed(decoder, PackedBatch.shared(chosen, rejected))


def response_logps(model: Module, batch: SequenceBatch) -> tuple[Tensor, Tensor]:
    """Return (summed log-probs [B] in nats, response token counts [B]) of the target tokens of ``batch``.

    ``batch.seqs`` is [B, T] (prompt + response, padded), ``batch.target_mask`` [B, T] is True on response tokens.
    Only response positions reach the output projection, so peak memory grows with the response length.
    """
    decoder = unwrap_decoder(model)
    if isinstance(decoder, PackedDecoder):
        return score_packed(decoder, PackedBatch.paired(batch))
    inputs, targets = as_auto_regressive_input(batch)
    hidden, _ = decoder.decode(inputs.seqs, inputs.padding_mask)  # [B, T-1, D]
    mask = targets.target_mask  # [B, T-1]
    assert mask is not None
    logps = token_logps(decoder, hidden[mask], targets.seqs[mask])  # [N]
    per_position = torch.zeros(mask.shape, dtype=logps.dtype, device=logps.device)
    per_position = per_position.masked_scatter(mask, logps)
    return per_position.sum(dim=-1), mask.sum(dim=-1).to(logps.dtype)


def stock_pair_logps(model: Module, chosen: SequenceBatch, rejected: SequenceBatch) -> tuple[Tensor, Tensor]:
    """The paired path for a decoder without the packed interface: chosen and rejected rows through its ordinary
    ``forward`` (full logits, as fairseq2's DPO unit computes them), so that DDP and FSDP still synchronize."""
    batch = concat_pairs(chosen, rejected)
    inputs, targets = as_auto_regressive_input(batch)
    logits = model(inputs).logits  # [2B, T-1, V]
    token_logps = float_log_softmax(logits).gather(-1, targets.seqs.unsqueeze(-1)).squeeze(-1)
    mask = targets.target_mask
    assert mask is not None
    return (token_logps * mask).sum(dim=-1), mask.sum(dim=-1).to(token_logps.dtype)


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
