"""Log-probs of target tokens under a model's output projection, from hidden states: the one place logits are made
for response tokens (packed rows, the reference scorer, evaluation), chunked past :data:`LOGITS_CHUNK_ELEMENTS`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import Module

from fairseq2.nn import Linear, TiedProjection


def float_log_softmax(logits: Tensor) -> Tensor:
    """Log-softmax over the vocabulary in float32 at least: bf16 log-probs summed over hundreds of tokens drift."""
    return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


LOGITS_CHUNK_ELEMENTS = 1 << 25
"""Most logits (response tokens x vocabulary) projected at once: 32M, 128 MB in float32. Larger sets go through
:class:`ChunkedTokenLogps` in chunks of rows (a 128k vocabulary: 256 tokens per chunk)."""


def _projection_weight(model: Module) -> Tensor | None:
    """The [V, D] weight of a bias-free linear (or tied) output projection, else None (another projection: the
    logits are computed through ``project``, unchunked)."""
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
        return float_log_softmax(logits).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    rows = max(1, chunk_elements // weight.size(0))
    return ChunkedTokenLogps.apply(hidden, weight, targets, rows)  # type: ignore[no-any-return]
