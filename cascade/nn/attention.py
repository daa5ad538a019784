"""Multi-head attention over image tokens, text tokens, or both.

One block covers the three uses in the cascade:
- self-attention among the pixels of a feature map (ADM, Dhariwal & Nichol 2021);
- self-attention whose keys/values also hold the text tokens (GLIDE, Nichol et al. 2021,
  "GLIDE: Towards Photorealistic Image Generation and Editing with Text-Guided Diffusion
  Models", sec. 2.3);
- cross-attention from pixels to the text tokens only (Imagen, Saharia et al. 2022).

It runs on `torch.nn.functional.scaled_dot_product_attention`, so GPUs use the flash /
memory-efficient kernels. Text padding is excluded through a boolean key mask of shape
(B, 1, 1, L_keys) that broadcasts over heads and queries; the caller guarantees that every
row has at least one valid key (`TextConditioning` always supplies a learned null token).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .resblock import GroupNorm32, zero_init


class AttentionBlock(nn.Module):
    """Residual multi-head attention: x + out(attention(GN(x) -> queries, keys/values)).

    Args:
        channels: width of the feature map (and of queries, keys and values).
        num_heads: heads; channels must be divisible by it.
        norm_groups: GroupNorm groups for the queries' normalisation.
        attend_to_image: keys/values include the feature map's own pixels (self-attention).
        context_channels: width of the text tokens to attend to (0 = no text).
        qk_norm: RMS-normalise each head's queries and keys (learned gain per channel) before
            their dot product (QK-norm: Dehghani et al. 2023; Esser et al. 2024).
    The output projection is zero-initialised, so the block starts as the identity (ADM).
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        norm_groups: int,
        attend_to_image: bool = True,
        context_channels: int = 0,
        qk_norm: bool = False,
    ):
        super().__init__()
        if not attend_to_image and context_channels <= 0:
            raise ValueError("an AttentionBlock needs image keys, text keys, or both")
        self.num_heads = num_heads
        self.norm = GroupNorm32(norm_groups, channels)
        self.to_query = nn.Linear(channels, channels)
        self.to_image_kv = nn.Linear(channels, 2 * channels) if attend_to_image else None
        self.to_context_kv = nn.Linear(context_channels, 2 * channels) if context_channels > 0 else None
        self.to_out = zero_init(nn.Linear(channels, channels))
        head_channels = channels // num_heads
        self.query_norm = nn.RMSNorm(head_channels, eps=1e-6) if qk_norm else None
        self.key_norm = nn.RMSNorm(head_channels, eps=1e-6) if qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B,C,H,W); context (B,L,D) and context_mask (B,L) bool (True = real token)."""
        batch, channels, height, width = x.shape
        # (B, C, H, W) -> (B, HW, C); a view when x is channels_last.
        pixels = self.norm(x).flatten(2).transpose(1, 2)
        query = self.to_query(pixels)

        keys, values, masks = [], [], []
        if self.to_image_kv is not None:
            key, value = self.to_image_kv(pixels).chunk(2, dim=-1)
            keys.append(key)
            values.append(value)
            masks.append(torch.ones(batch, pixels.shape[1], dtype=torch.bool, device=x.device))
        if self.to_context_kv is not None:
            if context is None or context_mask is None:
                raise ValueError("this attention block reads text: pass context and context_mask")
            key, value = self.to_context_kv(context.to(pixels.dtype)).chunk(2, dim=-1)
            keys.append(key)
            values.append(value)
            masks.append(context_mask)

        query = self._split_heads(query)
        key = self._split_heads(torch.cat(keys, dim=1))
        value = self._split_heads(torch.cat(values, dim=1))
        if self.query_norm is not None:
            query, key = self.query_norm(query), self.key_norm(key)
        attn_mask = None
        if self.to_context_kv is not None:
            attn_mask = torch.cat(masks, dim=1)[:, None, None, :]  # (B, 1, 1, L_keys)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask)
        out = self.to_out(out.transpose(1, 2).reshape(batch, height * width, channels))
        return x + out.transpose(1, 2).reshape(batch, channels, height, width)

    def _split_heads(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, C) -> (B, heads, L, C // heads)."""
        batch, length, channels = tokens.shape
        return tokens.reshape(batch, length, self.num_heads, channels // self.num_heads).transpose(1, 2)
