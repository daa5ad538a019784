"""Convolutional building blocks of the UNet: normalisation, residual block, resampling.

After ADM (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis", sec. 3):
residual blocks with GroupNorm whose output is modulated by a scale and shift predicted from
the conditioning vector (adaptive group normalisation, "AdaGN"), optional BigGAN-style
up/downsampling inside the block, and a zero-initialised last convolution so every block
starts as the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def zero_init(module: nn.Module) -> nn.Module:
    """Set every parameter of `module` to zero and return it (ADM's `zero_module`)."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype (bf16 / fp16 autocast safe)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def upsample_nearest(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def downsample_average(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, kernel_size=2, stride=2)


class Downsample(nn.Module):
    """Halve the resolution with a 3x3 stride-2 convolution (ADM `Downsample`, conv_resample)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour upsampling then a 3x3 convolution (ADM)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(upsample_nearest(x))


class ResBlock(nn.Module):
    """ADM residual block with scale-shift conditioning.

        h = conv(SiLU(GN(x)));  h = GN(h) * (1 + scale) + shift;  h = conv0(dropout(SiLU(h)))
        out = skip(x) + h,      (scale, shift) = Linear(SiLU(emb))

    `resample` = "up" / "down" resizes both paths inside the block (BigGAN, Brock et al. 2019,
    as ADM's `resblock_updown`). conv0 is zero-initialised, so the block starts as skip(x).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        embedding_channels: int,
        norm_groups: int,
        dropout: float = 0.0,
        resample: str | None = None,
    ):
        super().__init__()
        if resample not in (None, "up", "down"):
            raise ValueError(f"resample must be None, 'up' or 'down', got {resample!r}")
        self.resample = {None: None, "up": upsample_nearest, "down": downsample_average}[resample]
        self.norm_in = GroupNorm32(norm_groups, in_channels)
        self.conv_in = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.scale_shift = nn.Linear(embedding_channels, 2 * out_channels)
        self.norm_out = GroupNorm32(norm_groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv_out = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm_in(x))
        if self.resample is not None:
            h, x = self.resample(h), self.resample(x)
        h = self.conv_in(h)
        scale, shift = self.scale_shift(F.silu(embedding))[:, :, None, None].chunk(2, dim=1)
        h = self.norm_out(h) * (1 + scale) + shift
        h = self.conv_out(self.dropout(F.silu(h)))
        return self.skip(x) + h
