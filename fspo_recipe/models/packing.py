"""The model-family interface for packed preference pairs: what a family implements so that FSPO runs a pair as one
sequence [prompt, chosen, rejected] and projects only response positions to the vocabulary.

A packed batch is a [B, L] token tensor plus a :class:`PackedSpans`: for every row, the lengths (P, Rc, Rr) of its
prompt, chosen and rejected segments, and every token's rotary position ([B, L]). Rejected tokens restart at
position P and attend to the prompt and to themselves, never to chosen, so each log-prob equals that of the
separate [prompt, response] sequence. A plain row (one response, Rr = 0) is the paired layout, positions 0..n-1.

A family implements :class:`PackedDecoder`:

- ``decode_packed(seqs, spans)`` returns the final hidden states [B, L, D] of the packed rows; its attention
  layers read the spans (their attention pattern) and the positions (their rotary encoding) from ``spans``;
- the model's ``forward`` accepts a :class:`PairLogpsRequest` and returns the pairs' summed response log-probs
  and token counts (:func:`packed_pair_logps`). That is the entry point DDP and FSDP need: they synchronize
  gradients and gather parameters only when the wrapped module's ``forward`` runs.

This module owns the packed layout and its forward: the spans and their masks, the rotary tables of the rows'
positions, :class:`PackedBatch` (pairs as packed rows) and :func:`packed_pair_logps`. Token log-probs come from
:mod:`fspo_recipe.scoring.tokens`; the choice between packed and stock paths is :mod:`fspo_recipe.scoring.logps`.

fairseq2's llama and mistral get it from :mod:`fspo_recipe.models.llama` (subclasses built by their own factory
when an FSPO command loads the model), qwen3 from its own family. A model without it is trained on the paired
path through its ordinary ``forward`` (full logits), with one logged line.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import final

import torch
from torch import Tensor

from fairseq2.models.sequence import SequenceBatch
from fairseq2.nn.transformer import AttentionMask

from fspo_recipe.scoring.tokens import token_logps


@final
class PackedSpans(AttentionMask):
    """The layout of a packed batch, passed to every attention layer as its ``attn_mask``.

    ``spans[i] = (P, Rc, Rr)``: row i holds P prompt tokens, then Rc tokens of the first response, then Rr tokens
    of the second (Rr = 0: a plain causal row); positions beyond P + Rc + Rr are padding. ``positions`` is [B, L]
    (int64), the rotary position of every token. The layout travels with the mask because the mask is an argument
    of every decoder layer: activation checkpointing recomputes a layer from its arguments during backward.
    """

    def __init__(self, spans: Sequence[tuple[int, int, int]], width: int, positions: Tensor) -> None:
        self.spans = tuple((int(p), int(c), int(r)) for p, c, r in spans)
        self.width = width
        self.positions = positions
        self._dense: Tensor | None = None
        self._second: tuple[Tensor, Tensor, Tensor] | None = None
        self._rotary: dict[tuple[int, torch.dtype], tuple[Tensor, Tensor]] = {}
        self._bias: dict[torch.dtype, Tensor] = {}

    def rotary(self, freqs: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The (cos, sin) tables [B, L, 1, E/2] of the rows' positions in ``dtype``, from a rotary encoder's table
        ``freqs``: made once per forward and shared by every layer (cached per table and dtype)."""
        key = (id(freqs), dtype)
        if key not in self._rotary:
            self._rotary[key] = rotary_tables(freqs, self.positions, dtype)
        return self._rotary[key]

    def second_bias(self, dtype: torch.dtype) -> Tensor:
        """:meth:`second_layout`'s mask as an additive bias [B, 1, R, L] (0 or -inf) in ``dtype``: what SDPA would
        convert a boolean mask to on every call, made once per forward."""
        if dtype not in self._bias:
            allowed = self.second_layout()[2]
            bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
            self._bias[dtype] = bias.masked_fill_(~allowed, float("-inf"))
        return self._bias[dtype]

    @property
    def plain(self) -> bool:
        """Every row is one causal sequence (the paired layout): no second response attends around a first."""
        return all(r == 0 for _, _, r in self.spans)

    @property
    def first_width(self) -> int:
        """max(P + Rc): the positions every row's prompt and first response lie within."""
        return max(p + c for p, c, _ in self.spans)

    def second_layout(self) -> tuple[Tensor, Tensor, Tensor]:
        """Where the second responses are, for the attention: ([B, R] positions of the second-response tokens,
        [B, R] which of those slots are real, [B, 1, R, L] bool mask of the keys each may attend to). R is the
        longest second response; a padded slot points at position 0 and may attend to key 0 only. Cached."""
        if self._second is None:
            device = self.positions.device
            longest = max(max(r for _, _, r in self.spans), 1)
            slot = torch.arange(longest, device=device)
            key = torch.arange(self.width, device=device)
            starts = torch.tensor([p + c for p, c, _ in self.spans], device=device)[:, None]
            prompts = torch.tensor([p for p, _, _ in self.spans], device=device)[:, None, None]
            lengths = torch.tensor([r for _, _, r in self.spans], device=device)[:, None]
            valid = slot[None, :] < lengths  # [B, R]
            index = torch.where(valid, starts + slot[None, :], torch.zeros_like(starts))
            query = index[:, :, None]  # [B, R, 1] positions of the queries
            keys = key[None, None, :]  # [1, 1, L]
            allowed = (keys < prompts) | ((keys >= starts[:, :, None]) & (keys <= query))
            allowed = torch.where(valid[:, :, None], allowed, keys == 0)
            self._second = (index, valid, allowed[:, None])
        return self._second

    def materialize(self) -> Tensor:
        """The equivalent [B, 1, L, L] boolean mask (True = may attend); padded query rows see themselves only."""
        if self._dense is None:
            self._dense = dense_packed_mask(self.spans, self.width, self.positions.device)
        return self._dense


def dense_packed_mask(spans: Sequence[tuple[int, int, int]], width: int, device: torch.device) -> Tensor:
    """[B, 1, L, L] bool: causal over each row's tokens, except that the second response does not see the first."""
    mask = torch.zeros((len(spans), 1, width, width), dtype=torch.bool, device=device)
    causal = torch.ones((width, width), dtype=torch.bool, device=device).tril_()
    for i, (p, nc, nr) in enumerate(spans):
        n = p + nc + nr
        m = mask[i, 0]
        m[:n, :n] = causal[:n, :n]
        m[p + nc : n, p : p + nc] = False
        idx = torch.arange(n, width, device=device)
        m[idx, idx] = True
    return mask


@final
@dataclass(frozen=True)
class PairLogpsRequest:
    """The input of a :class:`PackedDecoder`'s ``forward`` that asks for response log-probs of preference pairs.

    ``chosen`` and ``rejected`` are the batches of fairseq2's preference reader ([B, T], target masks on response
    tokens). With ``shared_prefix`` each pair runs as one [prompt, chosen, rejected] row, else as two
    [prompt, response] rows. The answer is ([2B] summed log-probs in nats, [2B] token counts), chosen first.
    """

    chosen: SequenceBatch
    rejected: SequenceBatch
    shared_prefix: bool = True

    def __post_init__(self) -> None:
        if self.chosen.target_mask is None or self.rejected.target_mask is None:
            raise ValueError("The batch has no target mask: cannot tell prompt tokens from response tokens.")


class PackedDecoder(ABC):
    """Implemented by a model family that runs packed rows (see the module docstring)."""

    packed_max_len: int | None = None
    """The longest packed row the family represents exactly (e.g. a sliding attention window); None: any."""

    @abstractmethod
    def decode_packed(self, seqs: Tensor, spans: PackedSpans) -> Tensor:
        """Return the final hidden states [B, L, D] (after the last layer norm) of the packed rows ``seqs`` [B, L]."""


def rotary_tables(freqs: Tensor, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(cos, sin) [B, L, 1, E/2] in ``dtype`` at ``positions`` [B, L], from a :class:`RotaryEncoder`'s table
    ``freqs`` [max_seq_len, E/2, 2] of (cos, sin) per position and frequency (computed there in float32)."""
    table = freqs[positions].unsqueeze(2)  # [B, L, 1, E/2, 2]
    # Contiguous: the per-layer products read them faster than strided views (measured: 20% of the rotary's time).
    return table[..., 0].to(dtype).contiguous(), table[..., 1].to(dtype).contiguous()


def prompt_lengths(batch: SequenceBatch) -> list[tuple[int, int]]:
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
        for i, ((p, lc), (p_r, lr)) in enumerate(zip(prompt_lengths(chosen), prompt_lengths(rejected))):
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
            for i, (p, length) in enumerate(prompt_lengths(side)):
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
    return score_packed(model, packed)


def score_packed(model: PackedDecoder, packed: PackedBatch) -> tuple[Tensor, Tensor]:
    """([owners] summed log-probs of each owner's response tokens, in nats; [owners] token counts) of ``packed``."""
    hidden = model.decode_packed(packed.seqs, packed.spans)  # [B', L, D]
    picked = hidden.flatten(0, 1)[packed.hidden_idx]  # [N, D]
    logps = token_logps(model, picked, packed.targets)  # [N]
    sums = torch.zeros(packed.num_owners, dtype=logps.dtype, device=logps.device)
    sums = sums.index_add(0, packed.owner, logps)
    counts = torch.bincount(packed.owner, minlength=packed.num_owners).to(logps.dtype)
    return sums, counts
