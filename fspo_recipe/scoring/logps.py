"""Summed response log-probs of preference pairs: the one computation behind training, reference pre-scoring and
evaluation.

The prompt of an FSPO example is long (the shots) and its responses short, so the [T, vocab] logits of the prompt
positions would be most of the memory of a step and none of its signal: only the hidden states of response
positions are projected to the vocabulary.

- A model implementing :class:`~fspo_recipe.models.packing.PackedDecoder` runs :class:`PackedBatch` rows: with
  ``shared_prefix`` one [prompt, chosen, rejected] row per pair (the prompt once), else two [prompt, response]
  rows per pair. Call it through its ``forward`` with a :class:`PairLogpsRequest` (what DDP and FSDP need), or
  :func:`pair_logps` where no wrapper is involved.
- Any other decoder gets :func:`stock_pair_logps`: the paired rows through its ordinary ``forward`` (full logits).
"""

from __future__ import annotations

from typing import Any, final

import torch
from torch import Tensor
from torch.nn import Module

from fairseq2.models.decoder import DecoderModel
from fairseq2.models.sequence import SequenceBatch, as_auto_regressive_input
from fairseq2.nn.padding import PaddingMask

from fspo_recipe.models.packing import PackedDecoder, PackedSpans, PairLogpsRequest


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


def _log_softmax(logits: Tensor) -> Tensor:
    """Log-softmax over the vocabulary in float32 at least: bf16 log-probs summed over hundreds of tokens drift."""
    return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


def _row_lengths(batch: SequenceBatch) -> list[tuple[int, int]]:
    """(prompt length, sequence length) of every row: the prompt ends at the first target token."""
    if batch.target_mask is None:
        raise ValueError("Preference batches must carry target masks.")
    out = []
    for i in range(batch.seqs.size(0)):
        mask = batch.target_mask[i]
        length = int(batch.padding_mask.seq_lens[i]) if batch.padding_mask is not None else batch.seqs.size(1)
        out.append((int(mask.nonzero()[0]) if bool(mask.any()) else length, length))
    return out


@final
class PackedBatch:
    """Packed rows of a batch of pairs and where their response tokens are.

    ``seqs`` [B', L] and ``spans`` (:class:`PackedSpans`) are the model's input; ``hidden_idx`` [N] are the flat
    (row * L + position) indices of the hidden states that predict the ``targets`` [N]; ``owner`` [N] says whose
    response each target belongs to: 0..B-1 the chosen response of pair b, B..2B-1 the rejected one.
    """

    def __init__(self, rows: list[tuple[Tensor, int, int, int]], owners: list[tuple[int, int]], num_owners: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        # rows: (tokens, P, Rc, Rr); owners: (owner of the first response, owner of the second) per row.
        width = max(len(tokens) for tokens, _, _, _ in rows)
        seqs = torch.zeros((len(rows), width), dtype=dtype, device=device)
        positions = torch.zeros((len(rows), width), dtype=torch.int64, device=device)
        hidden_idx: list[int] = []
        targets: list[Tensor] = []
        owner: list[int] = []
        for i, ((tokens, p, nc, nr), (first, second)) in enumerate(zip(rows, owners)):
            n = p + nc + nr
            seqs[i, :n] = tokens
            positions[i, : p + nc] = torch.arange(p + nc, device=device)
            positions[i, p + nc : n] = torch.arange(p, p + nr, device=device)
            base = i * width
            # A first-response token at p + j is predicted by position p + j - 1; the second response's first token
            # also by the last prompt position, its later ones by their own predecessors.
            hidden_idx += [base + p - 1 + j for j in range(nc)]
            hidden_idx += [base + (p - 1 if j == 0 else p + nc + j - 1) for j in range(nr)]
            targets.append(tokens[p:n])
            owner += [first] * nc + [second] * nr
        self.seqs = seqs
        self.spans = PackedSpans([(p, nc, nr) for _, p, nc, nr in rows], width, positions)
        self.hidden_idx = torch.tensor(hidden_idx, dtype=torch.int64, device=device)
        self.targets = torch.cat(targets).to(device=device, dtype=torch.int64)
        self.owner = torch.tensor(owner, dtype=torch.int64, device=device)
        self.num_owners = num_owners

    @staticmethod
    def shared(chosen: SequenceBatch, rejected: SequenceBatch) -> PackedBatch:
        """One [prompt, chosen, rejected] row per pair; the two prompts of a pair must be equal."""
        rows, owners = [], []
        size = chosen.seqs.size(0)
        for i, ((p, lc), (p_r, lr)) in enumerate(zip(_row_lengths(chosen), _row_lengths(rejected))):
            prompt = chosen.seqs[i, :p]
            if p_r != p or not torch.equal(rejected.seqs[i, :p], prompt):
                raise ValueError(f"Pair {i} of the batch has different prompts for chosen and rejected.")
            tokens = torch.cat([prompt, chosen.seqs[i, p:lc], rejected.seqs[i, p:lr]])
            rows.append((tokens, p, lc - p, lr - p))
            owners.append((i, size + i))
        return PackedBatch(rows, owners, 2 * size, chosen.seqs.device, chosen.seqs.dtype)

    @staticmethod
    def paired(chosen: SequenceBatch, rejected: SequenceBatch | None = None) -> PackedBatch:
        """One [prompt, response] row per response: chosen rows first (owners 0..B-1), then rejected (B..2B-1)."""
        rows, owners = [], []
        sides = [chosen] if rejected is None else [chosen, rejected]
        for side in sides:
            for i, (p, length) in enumerate(_row_lengths(side)):
                rows.append((side.seqs[i, :length], p, length - p, 0))
                owners.append((len(owners), -1))
        return PackedBatch(rows, owners, len(rows), chosen.seqs.device, chosen.seqs.dtype)


def packed_pair_logps(model: PackedDecoder, request: PairLogpsRequest) -> tuple[Tensor, Tensor]:
    """([2B] summed response log-probs in nats, [2B] token counts) of ``request``'s pairs, chosen first.

    Runs inside the model's ``forward`` (the documented entry point); rows longer than ``model.packed_max_len``
    fall back to the paired layout.
    """
    packed = PackedBatch.shared(request.chosen, request.rejected) if request.shared_prefix else None
    if packed is None or (model.packed_max_len is not None and packed.seqs.size(1) > model.packed_max_len):
        packed = PackedBatch.paired(request.chosen, request.rejected)
    return _score_packed(model, packed)


LOGITS_CHUNK_ELEMENTS = 1 << 25
"""Most logits (response tokens x vocabulary) projected at once: 32M, 128 MB in float32. Larger sets go through
:class:`ChunkedTokenLogps` in chunks of rows (a 128k vocabulary: 256 tokens per chunk)."""


def _projection_weight(model: Module) -> Tensor | None:
    """The [V, D] weight of a bias-free linear (or tied) output projection, else None (another projection: the
    logits are computed through ``project``, unchunked)."""
    from fairseq2.nn import Linear, TiedProjection

    proj = getattr(model, "final_proj", None)
    if isinstance(proj, (Linear, TiedProjection)) and proj.bias is None:
        return proj.weight  # type: ignore[no-any-return]
    return None


class ChunkedTokenLogps(torch.autograd.Function):
    """log softmax(hidden @ weight.T)[target] per row, chunk by chunk: the [rows, V] logits of one chunk exist at a
    time (float32 only for that chunk), in forward and in backward (which recomputes them: one more matmul, instead
    of keeping [N, V] logits and their float32 log-softmax alive between forward and backward)."""

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, targets: Tensor, rows: int) -> Tensor:  # type: ignore[override]
        out = torch.empty(hidden.size(0), dtype=torch.promote_types(hidden.dtype, torch.float32), device=hidden.device)
        lse = torch.empty_like(out)
        for start in range(0, hidden.size(0), rows):
            logits = (hidden[start : start + rows] @ weight.T).to(out.dtype)
            lse[start : start + rows] = torch.logsumexp(logits, dim=-1)
            out[start : start + rows] = logits.gather(-1, targets[start : start + rows, None])[:, 0]
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.rows = rows
        return out - lse

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        hidden, weight, targets, lse = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=lse.dtype, device=weight.device) if ctx.needs_input_grad[1] \
            else None
        for start in range(0, hidden.size(0), ctx.rows):
            chunk = slice(start, start + ctx.rows)
            h, g = hidden[chunk], grad[chunk, None]
            # d(logit_t - lse)/d logits = onehot(t) - softmax
            d = torch.exp((h @ weight.T).to(lse.dtype) - lse[chunk, None]).mul_(-g)
            d.scatter_add_(-1, targets[chunk, None], g)
            d = d.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[chunk] = d @ weight
            if grad_weight is not None:
                grad_weight += (d.T @ h).to(grad_weight.dtype)
        return grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype), None, None


def token_logps(model: Module, hidden: Tensor, targets: Tensor, *, chunk_elements: int | None = None) -> Tensor:
    """[N] log-probs of ``targets`` [N] under the output projection of ``hidden`` [N, D], float32 at least. Up to
    ``chunk_elements`` (default :data:`LOGITS_CHUNK_ELEMENTS`) logits are projected at once; beyond, chunked
    (:class:`ChunkedTokenLogps`)."""
    chunk_elements = chunk_elements or LOGITS_CHUNK_ELEMENTS
    weight = _projection_weight(model)
    if weight is None or hidden.size(0) * weight.size(0) <= chunk_elements:
        logits = model.project(hidden.unsqueeze(0), None).logits.squeeze(0)  # type: ignore[attr-defined]  # [N, V]
        return _log_softmax(logits).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    rows = max(1, chunk_elements // weight.size(0))
    return ChunkedTokenLogps.apply(hidden, weight, targets, rows)  # type: ignore[no-any-return]


def _score_packed(model: PackedDecoder, packed: PackedBatch) -> tuple[Tensor, Tensor]:
    hidden = model.decode_packed(packed.seqs, packed.spans)  # [B', L, D]
    picked = hidden.flatten(0, 1)[packed.hidden_idx]  # [N, D]
    logps = token_logps(model, picked, packed.targets)  # [N]
    sums = torch.zeros(packed.num_owners, dtype=logps.dtype, device=logps.device)
    sums = sums.index_add(0, packed.owner, logps)
    counts = torch.bincount(packed.owner, minlength=packed.num_owners).to(logps.dtype)
    return sums, counts


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
    return _score_packed(decoder, PackedBatch.shared(chosen, rejected))


def response_logps(model: Module, batch: SequenceBatch) -> tuple[Tensor, Tensor]:
    """Return (summed log-probs [B] in nats, response token counts [B]) of the target tokens of ``batch``.

    ``batch.seqs`` is [B, T] (prompt + response, padded), ``batch.target_mask`` [B, T] is True on response tokens.
    Only response positions reach the output projection, so peak memory grows with the response length.
    """
    decoder = unwrap_decoder(model)
    if isinstance(decoder, PackedDecoder):
        return _score_packed(decoder, PackedBatch.paired(batch))
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
    token_logps = _log_softmax(logits).gather(-1, targets.seqs.unsqueeze(-1)).squeeze(-1)
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
