"""Per-stage evaluation of a super-resolution stage.

Two questions for an SR stage fed with real low-res inputs:

- Does it produce realistic high-res images? FID of its outputs against the real high-res
  set (:class:`cascade.eval.metrics.GenerativeMetrics` with real = the high-res set).
- Does it respect its input? Low-res consistency: downsample the output back to the input
  size with the same anti-aliased operator that made the inputs, and measure PSNR against
  the input (:class:`LowResConsistencyPSNR`). A stage that ignores its conditioning, or a
  noise-augmentation level that is too high, shows up here as a low PSNR even when FID is
  good (Saharia et al. 2022, SR3; Ho et al. 2022, Cascaded Diffusion Models).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from .images import to_unit_float


def antialiased_downsample(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic downsampling with an anti-aliasing filter (``F.interpolate(antialias=True)``)."""
    return F.interpolate(images.float(), size=size, mode="bicubic", align_corners=False, antialias=True)


def psnr(prediction: torch.Tensor, target: torch.Tensor, max_psnr: float = 100.0) -> torch.Tensor:
    """Per-image PSNR in dB of images with values in [0, 1]: 10 log10(1 / MSE), capped at `max_psnr`."""
    mse = (prediction - target).pow(2).flatten(1).mean(dim=1)
    return (10 * torch.log10(1 / mse.clamp_min(10 ** (-max_psnr / 10)))).clamp(max=max_psnr)


class LowResConsistencyPSNR(Metric):
    """Mean PSNR (dB) between downsampled SR outputs and their low-res inputs.

    ``update(sr_images, lowres_images)``: both uint8 in [0, 255] or float in [-1, 1], NCHW;
    the SR output is downsampled to the low-res size by `downsample` (default: anti-aliased
    bicubic, :func:`antialiased_downsample`; pass the operator the data pipeline used to make
    the inputs) and clamped to [0, 1] before the comparison. States are sums, synced across
    DDP ranks.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, downsample: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor] = antialiased_downsample,
                 **kwargs: object):
        super().__init__(**kwargs)
        self.downsample = downsample
        self.add_state("psnr_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, sr_images: torch.Tensor, lowres_images: torch.Tensor) -> None:
        if sr_images.shape[0] != lowres_images.shape[0]:
            raise ValueError(f"{sr_images.shape[0]} SR outputs for {lowres_images.shape[0]} low-res inputs")
        lowres = to_unit_float(lowres_images).to(self.device)
        reduced = self.downsample(to_unit_float(sr_images).to(self.device), tuple(lowres.shape[-2:])).clamp(0, 1)
        values = psnr(reduced, lowres)
        self.psnr_sum += values.double().sum()
        self.count += values.shape[0]

    def compute(self) -> torch.Tensor:
        return self.psnr_sum / self.count
