"""Sequence log-probabilities of responses, computing logits only at response positions.

The prompt of an FSPO example is long (the shots) and its responses short, so the [T, vocab] logits of the
prompt positions would be most of the memory of a step and none of its signal. Here the decoder runs over the
whole sequence, but only the hidden states of response positions are projected to the vocabulary.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import final

import torch
from torch import Tensor
from torch.nn import Module

from fairseq2.models.decoder import DecoderModel
from fairseq2.models.sequence import SequenceBatch, as_auto_regressive_input
from fairseq2.nn.padding import PaddingMask
from fairseq2.nn.transformer import CustomAttentionMask


@final
class ResponseLogpsInput:
    """What the patched ``forward`` of a decoder receives to return response log-probs instead of logits.

    ``forward`` returns ([2B] summed log-probs, [2B] token counts), the chosen responses first.
    With ``shared_prefix`` the pair runs as one [prompt, chosen, rejected] sequence (:func:`shared_prefix_logps`),
    else as two [prompt, response] rows (:func:`response_logps` on :func:`concat_pairs`).
    """

    def __init__(self, chosen: SequenceBatch, rejected: SequenceBatch, *, shared_prefix: bool) -> None:
        if chosen.target_mask is None or rejected.target_mask is None:
            raise ValueError("The batch has no target mask: cannot tell prompt tokens from response tokens.")
        self.chosen = chosen
        self.rejected = rejected
        self.shared_prefix = shared_prefix


def response_logps(model: DecoderModel, batch: SequenceBatch) -> tuple[Tensor, Tensor]:
    """Return (summed log-probs [B] in nats, response token counts [B]) of the target tokens of ``batch``.

    ``batch.seqs`` is [B, T] (prompt + response, padded), ``batch.target_mask`` [B, T] is True on response
    tokens. Log-softmax runs in float32 at least (float64 for a float64 model). Only response positions reach the output
    projection, so peak memory grows with the response length, not with the prompt.
    """
    inputs, targets = as_auto_regressive_input(batch)
    assert targets.target_mask is not None

    hidden, _ = model.decode(inputs.seqs, inputs.padding_mask)  # [B, T-1, D]

    mask = targets.target_mask  # [B, T-1], padding is never a target
    picked = hidden[mask]  # [N, D], N = response tokens in the batch

    logits = model.project(picked.unsqueeze(0), None).logits.squeeze(0)  # [N, V]

    token_logps = _log_softmax(logits)
    token_logps = token_logps.gather(-1, targets.seqs[mask].unsqueeze(-1)).squeeze(-1)  # [N]

    per_position = torch.zeros(mask.shape, dtype=token_logps.dtype, device=token_logps.device)
    per_position = per_position.masked_scatter(mask, token_logps)

    return per_position.sum(dim=-1), mask.sum(dim=-1).to(token_logps.dtype)


def _log_softmax(logits: Tensor) -> Tensor:
    """Log-softmax over the vocabulary in float32 at least: bf16 log-probs summed over hundreds of tokens drift."""
    return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


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
            return pair_logps(self, batch.chosen, batch.rejected, shared_prefix=batch.shared_prefix)
        return original(batch)

    decoder.forward = types.MethodType(forward, decoder)  # type: ignore[method-assign]
    decoder._fspo_response_forward = True  # type: ignore[attr-defined]


def pair_logps(
    model: DecoderModel, chosen: SequenceBatch, rejected: SequenceBatch, *, shared_prefix: bool
) -> tuple[Tensor, Tensor]:
    """Summed response log-probs and token counts of chosen (first B) and rejected (last B) responses, [2B] each."""
    if shared_prefix:
        return shared_prefix_logps(model, chosen, rejected)
    return response_logps(model, concat_pairs(chosen, rejected))


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


# ---- shared prefix: one sequence [prompt, chosen, rejected] per pair ----------------------------------------
#
# The prompt is run once per pair instead of twice. Rejected tokens attend to the prompt and to themselves but
# not to chosen, and their rotary positions restart right after the prompt, so every log-prob equals the paired
# path's. The first rejected token is predicted, like the first chosen one, from the last prompt position.


class SharedPrefixMask(CustomAttentionMask):
    """The shared-prefix attention of a packed batch: row spans (P, Rc, Rr) and [B, L] rotary positions.

    The layout travels with the mask because the mask is an argument of every decoder layer: activation
    checkpointing recomputes a layer from its arguments during backward, long after the forward returned.
    ``materialize()`` gives the equivalent [B, 1, L, L] boolean mask (True = may attend) for attention
    implementations other than the split one below.
    """

    def __init__(self, spans: list[tuple[int, int, int]], width: int, positions: Tensor) -> None:
        self.spans, self.width, self.positions = spans, width, positions
        self._dense: Tensor | None = None

    def materialize(self) -> Tensor:
        if self._dense is None:
            self._dense = dense_shared_prefix_mask(self.spans, self.width, self.positions.device)
        return self._dense


def dense_shared_prefix_mask(spans: Sequence[tuple[int, int, int]], width: int, device: torch.device) -> Tensor:
    """[B, 1, L, L] bool: causal over [prompt, chosen, rejected], except that rejected does not see chosen.

    Padded query rows see themselves only (their outputs are never read), so no row is fully masked.
    """
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


class _SplitSharedPrefixSDPA(Module):
    """Shared-prefix attention as two causal-kernel calls per row instead of one masked [L, L] attention.

    [prompt, chosen] is a plain causal sequence (the fast ``is_causal`` kernel); the rejected queries attend to
    [prompt keys, rejected keys] under a small [Rr, P + Rr] mask. The work is that of the paired path minus the
    second prompt, and no [L, L] mask is ever built. Other masks go to the wrapped SDPA.
    """

    def __init__(self, inner: Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, seqs: Tensor, keys: Tensor, key_padding_mask: object, values: Tensor, *,
                attn_mask: object = None, needs_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        if not isinstance(attn_mask, SharedPrefixMask) or needs_weights or key_padding_mask is not None:
            return self.inner(seqs, keys, key_padding_mask, values, attn_mask=attn_mask, needs_weights=needs_weights)
        from torch.nn.functional import scaled_dot_product_attention as sdpa

        rows = []
        width = seqs.size(2)
        for i, (p, nc, nr) in enumerate(attn_mask.spans):
            q, k, v = seqs[i : i + 1], keys[i : i + 1], values[i : i + 1]
            a = p + nc
            parts = [sdpa(q[:, :, :a], k[:, :, :a], v[:, :, :a], is_causal=True)]
            if nr:
                rect = torch.ones((nr, p + nr), dtype=torch.bool, device=seqs.device)
                rect[:, p:] = torch.ones((nr, nr), dtype=torch.bool, device=seqs.device).tril_()
                kr = torch.cat([k[:, :, :p], k[:, :, a : a + nr]], dim=2)
                vr = torch.cat([v[:, :, :p], v[:, :, a : a + nr]], dim=2)
                parts.append(sdpa(q[:, :, a : a + nr], kr, vr, attn_mask=rect))
            if a + nr < width:
                parts.append(q.new_zeros(q.shape[:2] + (width - a - nr, v.size(-1))))
            rows.append(torch.cat(parts, dim=2))
        return torch.cat(rows, dim=0), None


@final
class _SharedPrefixState:
    """The mask of the shared-prefix forward in progress, for the decoder's mask factory (None otherwise)."""

    def __init__(self) -> None:
        self.pending: object | None = None


class _PositionedRotaryEncoder(Module):
    """The wrapped rotary encoder, at explicit per-token positions while an attention runs a shared-prefix mask."""

    def __init__(self, rotary: Module) -> None:
        super().__init__()
        self.rotary = rotary
        self.encoding_dim = rotary.encoding_dim
        self.max_seq_len = rotary.max_seq_len
        self.positions: Tensor | None = None  # set by the attention's pre-hook for the duration of its forward

    def forward(self, seqs: Tensor, padding_mask: object, *, state_bag: object = None) -> Tensor:
        positions = self.positions
        if positions is None or state_bag is not None:
            return self.rotary(seqs, padding_mask, state_bag=state_bag)
        # seqs: [B, H, L, E]; the table: [max_seq_len, E/2] complex.
        freqs = torch.view_as_complex(self.rotary.freqs)[positions].unsqueeze(1)  # [B, 1, L, E/2]
        complex_seqs = torch.view_as_complex(seqs.float().unflatten(-1, (-1, 2)))
        return torch.view_as_real(complex_seqs * freqs).flatten(-2).type_as(seqs)


class _SharedPrefixMaskFactory:
    """Returns the pending shared-prefix mask during a shared-prefix forward, else defers to the original factory."""

    def __init__(self, original: object, state: _SharedPrefixState) -> None:
        self.original = original
        self._state = state

    def __call__(self, seqs: Tensor, keys: Tensor, *, training: bool = True, state_bag: object = None) -> object:
        if self._state.pending is not None:
            return self._state.pending
        return self.original(seqs, keys, training=training, state_bag=state_bag)  # type: ignore[operator]


def _shared_prefix_state(model: DecoderModel) -> _SharedPrefixState:
    """Install (once) the mask factory, position-aware rotary encoders and attention hooks; return the state."""
    from fairseq2.nn import RotaryEncoder
    from fairseq2.nn.transformer import MultiheadAttention, TransformerDecoder

    state = getattr(model, "_fspo_shared_prefix", None)
    if state is not None:
        return state
    state = _SharedPrefixState()
    decoders = [m for m in model.modules() if isinstance(m, TransformerDecoder)]
    if len(decoders) != 1 or decoders[0].self_attn_mask_factory is None:
        raise TypeError("The shared-prefix forward needs a fairseq2 transformer decoder with a causal mask factory.")
    decoders[0].self_attn_mask_factory = _SharedPrefixMaskFactory(decoders[0].self_attn_mask_factory, state)

    wrappers: dict[int, _PositionedRotaryEncoder] = {}

    def before(module: Module, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        mask = kwargs.get("attn_mask")
        module.pos_encoder.positions = mask.positions if isinstance(mask, SharedPrefixMask) else None  # type: ignore[union-attr]

    def after(module: Module, args: object, kwargs: object, output: object) -> None:
        module.pos_encoder.positions = None  # type: ignore[union-attr]

    for module in list(model.modules()):
        if isinstance(module, MultiheadAttention) and isinstance(getattr(module, "pos_encoder", None), RotaryEncoder):
            rotary = module.pos_encoder
            module.pos_encoder = wrappers.setdefault(id(rotary), _PositionedRotaryEncoder(rotary))
            module.register_forward_pre_hook(before, with_kwargs=True)
            module.register_forward_hook(after, with_kwargs=True, always_call=True)
            module.sdpa = _SplitSharedPrefixSDPA(module.sdpa)
    if not wrappers:
        raise TypeError("The shared-prefix forward needs rotary position encoders in the self-attention layers.")
    model._fspo_shared_prefix = state  # type: ignore[attr-defined]
    return state


@final
class SharedPrefixLayout:
    """Where prompt, chosen and rejected tokens of every pair go in the packed [B, L] batch."""

    def __init__(self, chosen: SequenceBatch, rejected: SequenceBatch) -> None:
        if chosen.target_mask is None or rejected.target_mask is None:
            raise ValueError("Preference batches must carry target masks.")
        device = chosen.seqs.device
        rows, positions, allowed = [], [], []
        hidden_idx: list[int] = []  # flat index (row * L + position) of the hidden state predicting a target
        targets: list[int] = []
        owner: list[int] = []  # 0..B-1 chosen of pair b, B..2B-1 rejected of pair b

        def spans(batch: SequenceBatch, i: int) -> tuple[int, int]:
            mask = batch.target_mask[i]  # type: ignore[index]
            length = int(batch.padding_mask.seq_lens[i]) if batch.padding_mask is not None else batch.seqs.size(1)
            first = int(mask.nonzero()[0]) if bool(mask.any()) else length
            return first, length

        size = chosen.seqs.size(0)
        width = 0
        for i in range(size):
            p, lc = spans(chosen, i)
            p_r, lr = spans(rejected, i)
            prompt = chosen.seqs[i, :p]
            if p_r != p or not torch.equal(rejected.seqs[i, :p], prompt):
                raise ValueError(f"Pair {i} of the batch has different prompts for chosen and rejected.")
            c, r = chosen.seqs[i, p:lc], rejected.seqs[i, p:lr]
            rows.append(torch.cat([prompt, c, r]))
            width = max(width, len(rows[-1]))
            positions.append(torch.cat([torch.arange(p + len(c)), torch.arange(p, p + len(r))]))
            allowed.append((p, len(c), len(r)))
        self.size, self.width = size, width

        seqs = torch.zeros((size, width), dtype=chosen.seqs.dtype, device=device)
        pos = torch.zeros((size, width), dtype=torch.int64, device=device)
        for i, (row, row_pos, (p, nc, nr)) in enumerate(zip(rows, positions, allowed)):
            n = len(row)
            seqs[i, :n] = row
            pos[i, :n] = row_pos.to(device)
            base = i * width
            hidden_idx += [base + p - 1 + j for j in range(nc)]
            targets += row[p : p + nc].tolist()
            owner += [i] * nc
            hidden_idx += [base + (p - 1 if j == 0 else p + nc + j - 1) for j in range(nr)]
            targets += row[p + nc : n].tolist()
            owner += [size + i] * nr
        self.seqs, self.positions, self.spans = seqs, pos, allowed
        self.hidden_idx = torch.tensor(hidden_idx, dtype=torch.int64, device=device)
        self.targets = torch.tensor(targets, dtype=torch.int64, device=device)
        self.owner = torch.tensor(owner, dtype=torch.int64, device=device)


def shared_prefix_logps(model: DecoderModel, chosen: SequenceBatch, rejected: SequenceBatch) -> tuple[Tensor, Tensor]:
    """Like :func:`response_logps` on :func:`concat_pairs` (chosen rows first, then rejected): ([2B], [2B]).

    One forward over [prompt, chosen, rejected] per pair, instead of two over [prompt, response].
    """
    layout = SharedPrefixLayout(chosen, rejected)
    state = _shared_prefix_state(model)
    state.pending = SharedPrefixMask(layout.spans, layout.width, layout.positions)
    try:
        hidden, _ = model.decode(layout.seqs, None)  # padding is in the mask
    finally:
        state.pending = None
    picked = hidden.flatten(0, 1)[layout.hidden_idx]  # [N, D]
    logits = model.project(picked.unsqueeze(0), None).logits.squeeze(0)  # [N, V]
    token_logps = _log_softmax(logits).gather(-1, layout.targets.unsqueeze(-1)).squeeze(-1)
    sums = torch.zeros(2 * layout.size, dtype=token_logps.dtype, device=token_logps.device)
    sums = sums.index_add(0, layout.owner, token_logps)
    counts = torch.bincount(layout.owner, minlength=2 * layout.size).to(token_logps.dtype)
    return sums, counts
