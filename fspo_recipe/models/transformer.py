"""Transformer decoder classes that implement :class:`~fspo_recipe.models.packing.PackedDecoder`.

They are subclasses of fairseq2's own, built by a family's factory (see :mod:`fspo_recipe.models.llama` and
:mod:`fspo_recipe.models.qwen3`): the same parameters and state-dict keys, the same behaviour for every ordinary
call (training forward, scoring, incremental decoding), plus the packed path. Nothing is patched on a live model.

    FspoDecoderModel.forward(PairLogpsRequest)   -> response log-probs (the entry point DDP/FSDP wrap)
      decode_packed(seqs, spans)                  -> frontend, FspoTransformerDecoder(..., spans=spans)
        each decoder layer, called with spans as its self-attention mask
          PackedMultiheadAttention: packed_qkv (q, k, v; rotary tables of spans.positions, made once per
          forward); packed_attention(...)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn.functional import scaled_dot_product_attention as sdpa

from fairseq2.models.transformer_decoder import TransformerDecoderModel
from fairseq2.nn import PositionEncoder, RotaryEncoder
from fairseq2.nn.transformer import StandardMultiheadAttention, StandardTransformerDecoder

from fspo_recipe.models.packing import PackedDecoder, PackedSpans, PairLogpsRequest, packed_pair_logps, rotary_tables


class FspoDecoderModel(TransformerDecoderModel, PackedDecoder):
    """fairseq2's decoder model whose ``forward`` also answers a :class:`PairLogpsRequest` (response log-probs of
    preference pairs, logits only at response positions); every other input goes to fairseq2's ``forward``."""

    def forward(self, batch: Any) -> Any:  # type: ignore[override]
        if isinstance(batch, PairLogpsRequest):
            return packed_pair_logps(self, batch)
        return super().forward(batch)

    def decode_packed(self, seqs: Tensor, spans: PackedSpans) -> Tensor:
        seqs, _ = self.decoder_frontend(seqs, None)
        hidden, _ = self.decoder(seqs, None, spans=spans)
        return hidden  # type: ignore[no-any-return]


class FspoTransformerDecoder(StandardTransformerDecoder):
    """fairseq2's decoder stack that, given ``spans``, runs every layer with them as the self-attention mask.

    Through ``forward`` (not a separate method) so that a stack wrapped by FSDP gathers its parameters.
    """

    def forward(  # type: ignore[override]
        self,
        seqs: Tensor,
        padding_mask: Any,
        encoder_output: Tensor | None = None,
        encoder_padding_mask: Any = None,
        *,
        state_bag: Any = None,
        spans: PackedSpans | None = None,
    ) -> tuple[Tensor, Any]:
        if spans is None:
            return super().forward(seqs, padding_mask, encoder_output, encoder_padding_mask, state_bag=state_bag)
        if self.training and self.layer_drop_p > 0.0:
            raise NotImplementedError("LayerDrop is not supported with packed preference pairs.")
        for layer in self.layers:
            seqs, _ = layer(seqs, None, spans)
        if self.layer_norm is not None:
            seqs = self.layer_norm(seqs)
        if self.dropout is not None:
            seqs = self.dropout(seqs)
        return seqs, None


class PackedMultiheadAttention(StandardMultiheadAttention):
    """fairseq2's multi-head attention with a packed path: when its mask is a :class:`PackedSpans`, the rotary
    encoding is applied at the spans' positions and the attention follows the spans (:func:`packed_attention`).

    Per-head steps before the rotary encoding (Qwen3's QK-norm) belong in the q and k projections
    (:class:`fspo_recipe.models.qwen3.HeadNormLinear`), where every path runs them. The position encoder is checked
    against the width of the heads the projections make: fairseq2 0.4.6 checks it against model_dim / num_heads even
    when the projections are given, which refuses heads of a width of their own (Qwen3-4B: 2560 / 32 = 80, heads
    of 128).
    """

    def __init__(self, model_dim: int, num_heads: int, *, pos_encoder: PositionEncoder | None = None,
                 **kwargs: Any) -> None:
        super().__init__(model_dim, num_heads, pos_encoder=None, **kwargs)
        if pos_encoder is not None:
            head_dim = self.q_proj.output_dim // num_heads
            if pos_encoder.encoding_dim != head_dim:
                raise ValueError(f"The position encoder is {pos_encoder.encoding_dim} wide, the heads {head_dim}.")
            self.pos_encoder = pos_encoder

    def forward(  # type: ignore[override]
        self,
        seqs: Tensor,
        padding_mask: Any,
        keys: Tensor,
        key_padding_mask: Any,
        values: Tensor,
        *,
        attn_mask: Any = None,
        state_bag: Any = None,
    ) -> Tensor:
        if not isinstance(attn_mask, PackedSpans):
            return super().forward(seqs, padding_mask, keys, key_padding_mask, values, attn_mask=attn_mask,
                                   state_bag=state_bag)
        if self.pos_encoder is not None and not isinstance(self.pos_encoder, RotaryEncoder):
            raise NotImplementedError(f"Packed rows need a rotary position encoder, not {self.pos_encoder}.")
        rotary = None if self.pos_encoder is None else attn_mask.rotary(self.pos_encoder.freqs, seqs.dtype)
        project = self._compiled_qkv or self.packed_qkv
        q, k, v = project(seqs, rotary)  # [B, H, L, E], [B, H_kv, L, E] x 2
        attn = packed_attention(q, k, v, attn_mask)  # [B, H, L, E]
        attn = attn.transpose(1, 2).flatten(2, 3)
        return self.output_proj(attn)  # type: ignore[no-any-return]

    _compiled_qkv: Any = None
    """:meth:`packed_qkv` compiled (:meth:`compile_qkv`), or None."""

    def compile_qkv(self, *, backend: str = "inductor", dynamic: bool | None = None) -> bool:
        """Compile :meth:`packed_qkv` with ``torch.compile`` (once); return whether it was compiled now."""
        if self._compiled_qkv is not None:
            return False
        self._compiled_qkv = torch.compile(self.packed_qkv, backend=backend, dynamic=dynamic)
        return True

    def packed_qkv(self, seqs: Tensor, rotary: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor, Tensor]:
        """Projections (with their per-head norms, if any) and rotary encoding of the packed path: q [B, H, L, E], k and v
        [B, H_kv, L, E]. ``rotary``: the (cos, sin) tables of the rows' positions (:meth:`PackedSpans.rotary`).
        Free of graph breaks, so :func:`compile_layer_blocks` compiles it into few fused kernels."""
        q = self.q_proj(seqs).unflatten(-1, (self.num_heads, -1))
        k = self.k_proj(seqs).unflatten(-1, (self.num_key_value_heads, -1))
        v = self.v_proj(seqs).unflatten(-1, (self.num_key_value_heads, -1))
        if rotary is not None:
            q, k = rotate_pairs(q, *rotary), rotate_pairs(k, *rotary)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def rotate_pairs(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary encoding of ``x`` [B, L, H, E] with fairseq2's pair layout: channels (2i, 2i+1) rotated by the angle
    whose (cos, sin) [B, L, 1, E/2] are given (Hugging Face checkpoints are permuted into this layout when
    converted). Real arithmetic in ``x``'s dtype: no complex float32 round trip (fairseq2 multiplies complex
    numbers in float32); within bf16 rounding of fairseq2's result (tests/test_architecture.py)."""
    pairs = x.unflatten(-1, (-1, 2))  # [B, L, H, E/2, 2]
    x0, x1 = pairs[..., 0], pairs[..., 1]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


def rotate(x: Tensor, freqs: Tensor, positions: Tensor) -> Tensor:
    """Rotary encoding of ``x`` [B, L, H, E] at ``positions`` [B, L] (:func:`rotary_tables`, :func:`rotate_pairs`)."""
    return rotate_pairs(x, *rotary_tables(freqs, positions, x.dtype))


def compile_layer_blocks(model: torch.nn.Module, *, backend: str = "inductor", dynamic: bool | None = None) -> int:
    """Compile, in place, the parts of every decoder layer that compile without graph breaks: its layer norms, its
    feed-forward block and the packed attention's projections with their per-head norms and rotary encoding
    (:meth:`PackedMultiheadAttention.packed_qkv`); the attention itself stays eager (fused SDPA kernels). Works
    through DDP, FSDP and activation-checkpoint wrappers (the modules are found by type, and ``Module.compile``
    keeps parameter names and state-dict keys). Returns how many pieces were compiled.

    Shapes change from batch to batch (packed widths), so after the first recompilation dynamo compiles
    shape-generic kernels (``dynamic=None``)."""
    from fairseq2.nn import LayerNorm
    from fairseq2.nn.transformer import FeedForwardNetwork

    count = 0
    inside_qkv = {id(m) for a in model.modules() if isinstance(a, PackedMultiheadAttention) for m in a.modules()}
    for module in model.modules():
        if isinstance(module, (LayerNorm, FeedForwardNetwork)) and id(module) not in inside_qkv:
            module.compile(backend=backend, dynamic=dynamic)
            count += 1
        elif isinstance(module, PackedMultiheadAttention) and module.compile_qkv(backend=backend, dynamic=dynamic):
            count += 1
    return count


def packed_attention(q: Tensor, k: Tensor, v: Tensor, spans: PackedSpans) -> Tensor:
    """Attention over packed rows: q [B, H, L, E], k and v [B, H_kv, L, E] -> [B, H, L, E_v].

    Two kernel calls for the whole batch, whatever its rows (no loop over rows, no copy of keys or values, grouped
    key/value heads never repeated in memory):

    1. a causal kernel over every row's first A = max(P + Rc) positions: exact for each row's prompt and first
       response (padding and second responses lie after them, where no earlier token looks);
    2. the second responses' queries (gathered into [B, H, Rmax, E]) against each row's keys under a
       [B, 1, Rmax, L] mask (an additive bias made once per forward): the row's prompt, and its second response
       causally; never the first response.

    The second-response outputs then replace the causal kernel's outputs at their positions. Outputs at padded
    positions are never read. Plain rows (the paired layout) need the causal call only.
    """
    width = q.size(2)
    first = spans.first_width
    out = _sdpa(q[:, :, :first], k[:, :, :first], v[:, :, :first], None)
    if spans.plain:
        return out if first == width else torch.nn.functional.pad(out, (0, 0, 0, width - first))
    index, valid, _ = spans.second_layout()  # [B, R], [B, R]
    size, heads, _, dim = q.shape
    gather = index[:, None, :, None].expand(size, heads, -1, dim)
    second = _sdpa(q.gather(2, gather), k, v, spans.second_bias(q.dtype))  # [B, H, R, E_v]
    second = second * valid[:, None, :, None].to(second.dtype)  # padded query slots: zero, and no gradient
    # One scratch column (index L) takes the padded slots; it is cut off after the scatter.
    out = torch.nn.functional.pad(out, (0, 0, 0, width + 1 - first))
    scatter_index = torch.where(valid, index, torch.full_like(index, width))
    out = out.scatter(2, scatter_index[:, None, :, None].expand(size, heads, -1, second.size(-1)), second)
    return out[:, :, :width]


def dense_attention(q: Tensor, k: Tensor, v: Tensor, spans: PackedSpans) -> Tensor:
    """The same attention as :func:`packed_attention` through the materialized [B, 1, L, L] mask (for tests: slow,
    quadratic memory)."""
    if (groups := q.size(1) // k.size(1)) > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return sdpa(q, k, v, attn_mask=spans.materialize())


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """PyTorch's fused attention, causal without a mask. Grouped key/value heads are read in place on CUDA
    (``enable_gqa``); on CPU, torch 2.6's flash kernel does not take them and its fallback is slower than repeating
    the heads (measured: causal 16 x 480 tokens, 4 heads over 2, forward + backward: 244 ms with ``enable_gqa``,
    111 ms repeated), so they are repeated there."""
    if (groups := q.size(1) // k.size(1)) > 1 and q.device.type != "cuda":
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    gqa = q.size(1) != k.size(1)
    if mask is None:
        return sdpa(q, k, v, is_causal=True, enable_gqa=gqa)
    return sdpa(q, k, v, attn_mask=mask, enable_gqa=gqa)


