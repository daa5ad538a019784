"""`cascade sr-check`: is a super-resolution stage better than upsampling its own input?

On real renders of held-out captions (`cascade.eval.heldout`), for a trained SR stage:

1. its x0 estimate from the full-size image noised to log-SNR lambda, for several lambda, against
   the plain upsampling of the clean low-res input (the stage's `upsample`): where the x0
   estimate is worse, the sampler's steps at that noise level add error that later steps must
   remove, and what they leave shows as grain;
2. the images it samples from the real low-res input with given settings: the mean squared error
   to the real full-size render, and the high-frequency energy (the squared difference from a
   Gaussian blur of 1 pixel) relative to the real render's (1 = as much fine detail as the data;
   above 1: grain).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from ..data import synthetic
from ..data.degrade import downsample
from ..diffusion import alpha_from_log_snr, predicted_x0, sigma_from_log_snr
from ..eval.heldout import heldout_caption_set
from ..stages import Condition, SamplingSettings, SuperResStage
from . import SHARD_RESOLUTION

LOG_SNRS = (10.0, 8.0, 6.0, 4.0, 2.0, 0.0, -2.0)


def real_pairs(stage: SuperResStage, captions: int) -> tuple[list[dict], torch.Tensor, torch.Tensor]:
    """Scenes and their real renders at the stage's output and input sizes, in [-1, 1] (B, 3, H, W),
    downsampled from the shards' resolution as the loader does."""
    scenes = heldout_caption_set(captions)

    def tensor(image: Image.Image, size: int) -> torch.Tensor:
        pixels = np.asarray(downsample(image, (size, size)), dtype=np.float32)
        return torch.from_numpy(pixels / 127.5 - 1.0).permute(2, 0, 1)

    high, low = [], []
    for scene in scenes:
        pixels, _ = synthetic.render_sample(scene["index"], SHARD_RESOLUTION, seed=scene["seed"], split="heldout")
        image = Image.fromarray(pixels)
        high.append(tensor(image, stage.image_size))
        low.append(tensor(image, stage.lowres_size))
    return scenes, torch.stack(high), torch.stack(low)


def scene_condition(stage: SuperResStage, scenes: list[dict]) -> Condition:
    """The stage's condition for the scenes: their captions for a text stage, else none."""
    if stage.conditioning == "text":
        return stage.make_condition(prompts=[scene["caption"] for scene in scenes])
    return stage.make_condition()


@torch.no_grad()
def x0_errors(stage: SuperResStage, scenes: list[dict], x0: torch.Tensor, lowres: torch.Tensor,
              log_snrs: Sequence[float] = LOG_SNRS, seed: int = 0) -> list[dict[str, float]]:
    """Per log-SNR: the mean squared error of the stage's x0 estimate, of the noisy image itself
    (x_t / alpha) and of the upsampled clean low-res input, all against the real x0."""
    stage.eval()
    condition = scene_condition(stage, scenes)
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(scenes))]
    inputs = stage.sampling_inputs(lowres, 0.0, generators)
    upsampled_error = float(((stage.upsample_lowres(lowres) - x0) ** 2).mean())
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    rows = []
    for log_snr in log_snrs:
        value = torch.tensor(float(log_snr))
        t = stage.schedule.t_from_log_snr(torch.full((len(scenes),), float(log_snr), dtype=torch.float64)).float()
        alpha, sigma = alpha_from_log_snr(value), sigma_from_log_snr(value)
        x_t = alpha * x0 + sigma * noise
        estimate = predicted_x0(stage(x_t, t, condition, **inputs).float(), x_t, t, stage.schedule, stage.target)
        rows.append({"log_snr": float(log_snr), "sigma_edm": float(sigma / alpha),
                     "model": float(((estimate - x0) ** 2).mean()),
                     "noisy input": float(((x_t / alpha - x0) ** 2).mean()),
                     "upsampled low-res": upsampled_error})
    return rows


def high_frequency_energy(images: torch.Tensor) -> np.ndarray:
    """Per image: mean squared difference from its Gaussian blur of 1 pixel (images in [-1, 1])."""
    pixels = images.float().permute(0, 2, 3, 1).numpy()
    return np.array([((p - ndimage.gaussian_filter(p, (1, 1, 0))) ** 2).mean() for p in pixels])


@torch.no_grad()
def sampling_errors(stage: SuperResStage, scenes: list[dict], x0: torch.Tensor, lowres: torch.Tensor,
                    settings: Sequence[SamplingSettings], seed: int = 0) -> list[dict[str, Any]]:
    """Per setting: images sampled from the real low-res input, their MSE to the real renders and
    their high-frequency energy relative to the real renders' (median over images)."""
    condition = scene_condition(stage, scenes)
    real = high_frequency_energy(x0)
    rows = []
    for setting in settings:
        generators = [torch.Generator().manual_seed(seed + i) for i in range(len(scenes))]
        images = stage.generate(condition, lowres=lowres, settings=setting, generator=generators)
        rows.append({**setting.to_dict(), "mse": float(((images - x0) ** 2).mean()),
                     "high-frequency ratio": float(np.median(high_frequency_energy(images) / real))})
    return rows
