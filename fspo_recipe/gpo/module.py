"""The GPO module: a transformer over context points [embedding; preference] and target points [embedding; 0].

No positional encoding (the points are a set). Context points attend to every context point; a target point attends
to every context point and to itself only, so targets are predicted independently of one another and the
prediction does not depend on the order of the context points.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn


@dataclass
class GpoConfig:
    input_dim: int
    """Width of the embeddings (the frozen model's hidden size)."""

    model_dim: int = 128
    """Width of the transformer."""

    num_layers: int = 4
    """Transformer layers."""

    num_heads: int = 4
    """Attention heads."""

    ffn_dim: int = 256
    """Inner width of the feed-forward blocks."""

    dropout: float = 0.0
    """Dropout in the transformer layers."""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def gpo_mask(num_context: int, num_target: int, device: torch.device | None = None) -> Tensor:
    """[L, L] boolean attention mask over L = context + target points, True where attention is blocked (PyTorch's
    convention): context rows see context columns only; target rows see context columns and their own column."""
    size = num_context + num_target
    blocked = torch.ones((size, size), dtype=torch.bool, device=device)
    blocked[:, :num_context] = False
    idx = torch.arange(num_context, size, device=device)
    blocked[idx, idx] = False
    return blocked


class GpoModule(nn.Module):
    """Predicts a preference score per target point from a set of context points.

    ``forward(context [B, C, D], context_y [B, C], targets [B, T, D], context_pad [B, C] | None,
    target_pad [B, T] | None) -> scores [B, T]``; padded points (True in the pad masks) are never attended to.
    """

    def __init__(self, config: GpoConfig) -> None:
        super().__init__()
        self.config = config
        self.input = nn.Linear(config.input_dim + 1, config.model_dim)
        layer = nn.TransformerEncoderLayer(config.model_dim, config.num_heads, config.ffn_dim, config.dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.model_dim)
        self.head = nn.Linear(config.model_dim, 1)

    def forward(self, context: Tensor, context_y: Tensor, targets: Tensor, context_pad: Tensor | None = None,
                target_pad: Tensor | None = None) -> Tensor:
        size, num_context, _ = context.shape
        num_target = targets.size(1)
        points = torch.cat([torch.cat([context, context_y[..., None].to(context.dtype)], -1),
                            torch.cat([targets, targets.new_zeros(targets.shape[:2] + (1,))], -1)], dim=1)
        mask = gpo_mask(num_context, num_target, context.device)
        pad = torch.zeros((size, num_context + num_target), dtype=torch.bool, device=context.device)
        if context_pad is not None:
            pad[:, :num_context] = context_pad
        if target_pad is not None:
            pad[:, num_context:] = target_pad
        # A float mask (−inf where blocked) combining both: a padded context point is hidden from every row; a row
        # left with nothing to see (a padded target with no context) still sees itself, so no row is all −inf.
        blocked = mask[None] | pad[:, None, :]
        eye = torch.eye(num_context + num_target, dtype=torch.bool, device=context.device)[None]
        blocked = blocked & ~eye
        bias = torch.zeros(blocked.shape, dtype=points.dtype, device=points.device).masked_fill(blocked, float("-inf"))
        bias = bias.repeat_interleave(self.config.num_heads, dim=0)
        hidden = self.encoder(self.input(points), mask=bias)
        return self.head(self.norm(hidden[:, num_context:])).squeeze(-1)
