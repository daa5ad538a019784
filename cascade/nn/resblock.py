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
    """2x nearest-neighbour upsampling (the values of F.interpolate(mode="nearest"), written as
    a broadcast + reshape, which is ~3x faster on CPU). Keeps channels_last inputs channels_last."""
    batch, channels, height, width = x.shape
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        nhwc = x.permute(0, 2, 3, 1)[:, :, None, :, None, :].expand(batch, height, 2, width, 2, channels)
        return nhwc.reshape(batch, 2 * height, 2 * width, channels).permute(0, 3, 1, 2)
    return x[:, :, :, None, :, None].expand(batch, channels, height, 2, width, 2).reshape(
        batch, channels, 2 * height, 2 * width
    )


def _phase_taps(weight: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Along kernel axis `dim`, the 2-tap kernels that a 3-tap kernel (w0, w1, w2) becomes after
    2x nearest upsampling: even outputs read input (i-1, i) with (w0, w1+w2), odd outputs read
    (i, i+1) with (w0+w1, w2)."""
    w0, w1, w2 = weight.unbind(dim)
    return torch.stack([w0, w1 + w2], dim), torch.stack([w0 + w1, w2], dim)


def upsample_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """conv3x3(upsample_nearest(x)) (stride 1, padding 1) computed at the input resolution.

    After 2x nearest upsampling, each output pixel of a 3x3 convolution reads only a 2x2 block
    of input pixels, so each of the four output phases (row parity, column parity) is a 2x2
    convolution of x whose taps are sums of the 3x3 taps (the sub-pixel convolution view of
    Shi et al. 2016, "Real-Time Single Image and Video Super-Resolution Using an Efficient
    Sub-Pixel Convolutional Neural Network"). One 2x2 convolution with padding 1 produces all
    four phases on an (H+1)x(W+1) grid; phase (py, px) is that grid shifted by (py, px), and
    fills the output pixels (2i + py, 2j + px). 4/9 of the multiply-adds, and the upsampled
    input is never stored. Equal to the direct form up to float rounding; the output keeps
    x's memory format.
    """
    batch, _, height, width = x.shape
    out_channels = weight.shape[0]
    phase_kernels = [k for rows in _phase_taps(weight, 2) for k in _phase_taps(rows, 3)]  # (py, px) order
    phases = F.conv2d(
        x, torch.cat(phase_kernels), None if bias is None else bias.repeat(4), padding=1
    )  # (B, 4 * C_out, H + 1, W + 1), channels ordered (py, px, c)
    grid = phases.view(batch, 2, 2, out_channels, height + 1, width + 1)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    out = torch.empty(
        (batch, out_channels, 2 * height, 2 * width),
        dtype=phases.dtype,
        device=phases.device,
        memory_format=torch.channels_last if channels_last else torch.contiguous_format,
    )
    # Plain slice assignments (not one strided view of the grid: torch.compile may lay out the
    # convolution's output differently, and gave wrong gradients through such a view).
    for py in (0, 1):
        for px in (0, 1):
            out[:, :, py::2, px::2] = grid[:, py, px, :, py : py + height, px : px + width]
    return out


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
    """Double the resolution: nearest-neighbour upsampling then a 3x3 convolution (ADM),
    computed in sub-pixel form (`upsample_conv3x3`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_conv3x3(x, self.conv.weight, self.conv.bias)


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
        self.resample = resample
        self.norm_in = GroupNorm32(norm_groups, in_channels)
        self.conv_in = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.scale_shift = nn.Linear(embedding_channels, 2 * out_channels)
        self.norm_out = GroupNorm32(norm_groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv_out = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm_in(x))
        if self.resample == "up":  # conv_in(upsample(h)) in sub-pixel form
            h, x = upsample_conv3x3(h, self.conv_in.weight, self.conv_in.bias), upsample_nearest(x)
        else:
            if self.resample == "down":
                h, x = downsample_average(h), downsample_average(x)
            h = self.conv_in(h)
        scale, shift = self.scale_shift(F.silu(embedding))[:, :, None, None].chunk(2, dim=1)
        h = self.norm_out(h) * (1 + scale) + shift
        h = self.conv_out(self.dropout(F.silu(h)))
        return self.skip(x) + h
