"""Embeddings of scalar conditions (diffusion noise level, SR augmentation level).

A scalar per example (1000*t or log-SNR for the noise level; the augmentation level s for
super-resolution) becomes a feature vector, then an MLP maps it to the conditioning width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_features(values: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Transformer-style sinusoidal features of `values` (B,) -> (B, dim), computed in fp32.

    Frequencies are geometric from 1 down to 1/max_period, as in ADM's `timestep_embedding`
    (Dhariwal & Nichol 2021) and Vaswani et al. 2017.
    """
    half = dim // 2
    frequencies = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=values.device) / half
    )
    angles = values.float()[:, None] * frequencies[None]
    features = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        features = F.pad(features, (0, 1))
    return features


class FourierFeatures(nn.Module):
    """Fixed random Fourier features sin/cos(2*pi*f*x), f ~ N(0, scale^2) (Tancik et al. 2020).

    As used for the noise level in score-SDE (Song et al. 2021). The frequencies are a
    persistent buffer, so a checkpoint restores exactly the features the model was trained on.
    """

    def __init__(self, dim: int, scale: float):
        super().__init__()
        self.register_buffer("frequencies", torch.randn(dim // 2) * scale)
        self.dim = dim

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        angles = 2 * math.pi * values.float()[:, None] * self.frequencies.float()[None]
        features = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
        if self.dim % 2:
            features = F.pad(features, (0, 1))
        return features


class ScalarEmbedding(nn.Module):
    """A per-example scalar -> features -> Linear, SiLU, Linear (ADM's `time_embed`)."""

    def __init__(self, feature_dim: int, out_dim: int, kind: str = "sinusoidal", fourier_scale: float = 16.0):
        super().__init__()
        self.feature_dim = feature_dim
        self.fourier = FourierFeatures(feature_dim, fourier_scale) if kind == "fourier" else None
        self.mlp = nn.Sequential(nn.Linear(feature_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        if self.fourier is not None:
            features = self.fourier(values)
        else:
            features = sinusoidal_features(values, self.feature_dim)
        return self.mlp(features.to(self.mlp[0].weight.dtype))
