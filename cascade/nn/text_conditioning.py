"""From frozen text-encoder tokens to what the UNet consumes: a pooled vector and attention context.

Imagen (Saharia et al. 2022, sec. 2.1 and appendix) conditions on a frozen T5 encoder in two
ways, both here: a pooled embedding (masked mean over real tokens, LayerNorm, projection) added
to the conditioning vector, and the token sequence (LayerNorm, projection) that attention layers
attend to.

Classifier-free guidance (Ho & Salimans 2022) needs an unconditional model: rows flagged in
`null` get a learned null condition instead of their text. The context always starts with one
learned null token: for a null row it is the only valid key (its text tokens are masked out),
for a conditional row it sits beside the real tokens. So attention never sees a fully masked
row, even for an empty caption, and every parameter takes part in every forward pass whatever
the mix of null and conditional rows (the rows are mixed with torch.where, not Python branches).
"""

from __future__ import annotations

import torch
from torch import nn


class TextConditioning(nn.Module):
    """Project (B, L, text_dim) tokens to a pooled (B, embedding) vector and a (B, 1+L, context) context.

    Args:
        text_dim: width of the encoder's token embeddings.
        embedding_channels: width of the UNet conditioning vector (the pooled output).
        context_channels: width of the context tokens for attention; 0 when no attention layer
            reads text (then only the pooled vector is produced, and no unused parameters exist).
        positions: a learned embedding of the token index added to the context tokens for the
            first `positions` tokens (0 = none; `UNetConfig.text_positions`).
    """

    def __init__(self, text_dim: int, embedding_channels: int, context_channels: int, positions: int = 0):
        super().__init__()
        self.text_dim = text_dim
        self.norm = nn.LayerNorm(text_dim)
        self.to_pooled = nn.Linear(text_dim, embedding_channels)
        self.null_pooled = nn.Parameter(torch.randn(embedding_channels) * 0.02)
        if context_channels > 0:
            self.to_context = nn.Linear(text_dim, context_channels)
            self.null_token = nn.Parameter(torch.randn(1, context_channels) * 0.02)
        else:
            self.to_context = None
            self.null_token = None
        self.positions = nn.Parameter(torch.randn(positions, context_channels) * 0.02) if positions > 0 else None

    def forward(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        null: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """tokens (B,L,D) float, mask (B,L) bool, null (B,) bool -> (pooled, context, context_mask).

        Padded positions (mask False) and the text of null rows never reach the outputs: they are
        zeroed before any arithmetic (so even NaN padding is harmless) and masked out of the
        mean and of attention.
        """
        valid = mask & ~null[:, None]
        tokens = torch.where(valid[..., None], tokens.to(self.norm.weight.dtype), 0.0)
        normed = self.norm(tokens)

        weights = valid.to(normed.dtype)[..., None]
        mean = (normed * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        projected_mean = self.to_pooled(mean)
        pooled = torch.where(null[:, None], self.null_pooled.to(projected_mean.dtype), projected_mean)

        if self.to_context is None:
            return pooled, None, None
        projected = self.to_context(normed)
        if self.positions is not None:
            if projected.shape[1] > self.positions.shape[0]:
                raise ValueError(f"{projected.shape[1]} text tokens but unet.text_positions is {self.positions.shape[0]}; "
                                 "set it to at least the text encoder's max_length")
            projected = projected + self.positions[: projected.shape[1]].to(projected.dtype)
        null_token = self.null_token.to(projected.dtype).expand(projected.shape[0], -1, -1)
        context = torch.cat([null_token, projected], dim=1)
        context_mask = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)
        return pooled, context, context_mask
