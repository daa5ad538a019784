"""`SuperResStage`: a diffusion model of the high-res image given the low-res one.

The low-res image is upsampled to the output size and concatenated to x_t by the UNet. Two
augmentations of that conditioning input make the stage robust to the artefacts of the stage
before it in the cascade:

- noise-conditioning augmentation (Ho et al. 2022, "Cascaded Diffusion Models", sec. 3.3;
  Saharia et al. 2022, Imagen, sec. 2.5): in training the upsampled low-res image is noised
  with the stage's own schedule to a level s ~ U[0, aug_max_level],
  x_s = alpha_s lowres + sigma_s eps, and the network is told s (`aug_cond`); at sampling s is
  a setting (`sampling.aug_level`, default 0);
- Gaussian blur of the low-res image (CDM's blurring augmentation), optional.

Stages that train on random crops (256 -> 1024 on 256 crops) sample at full size: the
UNet is fully convolutional, and `generate` sizes its output from the low-res input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..diffusion import Generators, q_sample
from ..diffusion.grids import grid_t_min
from ..diffusion.samplers import randn
from ..nn import UNetConfig

from .config import SamplingSettings, StageConfigError, as_dataclass
from .diffusion_stage import DiffusionStage

UPSAMPLE_MODES = ("bilinear", "bicubic")


@dataclass(frozen=True)
class BlurConfig:
    """Blur augmentation of the low-res input during training (CDM, Ho et al. 2022).

    With `probability` per sample, the low-res image (at its own size) is blurred by a Gaussian
    of standard deviation sigma ~ U[sigma_min, sigma_max] low-res pixels, kernel `kernel_size`.
    probability 0 turns it off.
    """

    probability: float = 0.0
    sigma_min: float = 0.4
    sigma_max: float = 0.6
    kernel_size: int = 3


class SuperResStage(DiffusionStage):
    """Super-resolution lowres_size -> image_size with noise-conditioning augmentation.

    Args (besides `DiffusionStage`'s):
        image_size: the output side (e.g. 256); training batches may hold crops of it.
        lowres_size: the low-res input side; must divide image_size.
        upsample: how the low-res input is resized to the output size: "bicubic" (default,
            clamped to [-1, 1]) or "bilinear" (both with align_corners=False).
        aug_max_level: training augmentation levels s ~ U[0, aug_max_level], in schedule time.
        aug_level: the older place of the default augmentation level at sampling, now
            `sampling.aug_level`; still read (checkpoints, exports and configs written before)
            and moved there. Giving both with different values is an error.
        blur: the optional blur augmentation (`BlurConfig`).
        conditioning: "none" (default), "text" (Imagen conditions SR stages on text too) or "class".
        sampling: as `DiffusionStage`'s; its `aug_level` is the default augmentation level at
            sampling (`generate`, sample grids, a `Cascade` built from the stage's own settings).
    """

    def __init__(
        self,
        unet: UNetConfig,
        image_size: int = 256,
        lowres_size: int = 64,
        upsample: str = "bicubic",
        aug_max_level: float = 0.5,
        aug_level: float | None = None,
        blur: BlurConfig = BlurConfig(),
        conditioning: str = "none",
        sampling: SamplingSettings | dict[str, Any] = SamplingSettings(),
        **kwargs: Any,
    ):
        unet = as_dataclass(unet, UNetConfig, "unet")
        blur = as_dataclass(blur, BlurConfig, "blur")
        problems = _super_res_problems(unet, image_size, lowres_size, upsample, aug_max_level, aug_level, blur)
        if problems:
            raise StageConfigError(problems)
        sampling = SamplingSettings.from_dict(sampling)
        if aug_level is not None:
            if sampling.aug_level not in (0.0, aug_level):
                message = f"{aug_level} differs from sampling.aug_level {sampling.aug_level}; give only sampling.aug_level"
                raise StageConfigError([("aug_level", message)])
            sampling = sampling.updated(aug_level=aug_level)
        super().__init__(unet=unet, image_size=image_size, conditioning=conditioning, sampling=sampling, **kwargs)
        del self.hparams["aug_level"]  # stored once, as sampling.aug_level
        self.lowres_size = lowres_size
        self.scale_factor = image_size // lowres_size
        self.upsample = upsample
        self.aug_max_level = aug_max_level
        self.blur = blur

    # ------------------------------------------------------------------ low-res input
    def upsample_lowres(self, lowres: torch.Tensor) -> torch.Tensor:
        """The low-res image (B,3,h,w) resized by `scale_factor` to (B,3,h*f,w*f), in [-1, 1]."""
        up = F.interpolate(lowres.float(), scale_factor=self.scale_factor, mode=self.upsample, align_corners=False)
        return up.clamp(-1.0, 1.0)

    def augment_lowres(
        self, upsampled: torch.Tensor, level: torch.Tensor, generator: Generators
    ) -> dict[str, torch.Tensor]:
        """Noise-conditioning augmentation: the forward process of the stage's own schedule applied
        to the upsampled low-res image, x_s = alpha_s lowres + sigma_s eps at levels s (B,)
        (`q_sample`), eps drawn from `generator` (one for the batch, one per row, or None)."""
        noise = randn(tuple(upsampled.shape), generator, device=upsampled.device, dtype=upsampled.dtype)
        return {"lowres": q_sample(upsampled, level, self.schedule, noise), "aug_cond": self.noise_cond_input(level)}

    def image_inputs(self, batch: dict, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        image, lowres = batch["image"], batch["lowres"]
        expected = (lowres.shape[-2] * self.scale_factor, lowres.shape[-1] * self.scale_factor)
        if tuple(image.shape[-2:]) != expected:
            raise ValueError(
                f"batch 'image' is {tuple(image.shape[-2:])} but 'lowres' {tuple(lowres.shape[-2:])} x scale "
                f"factor {self.scale_factor} is {expected}: the data and the stage disagree on the sizes"
            )
        batch_size = image.shape[0]
        if self.blur.probability > 0:
            lowres = blur_randomly(lowres, self.blur, generator)
        if generator is None:
            level = torch.rand(batch_size, device=image.device) * self.aug_max_level
        else:
            level = torch.rand(batch_size, generator=generator, device=generator.device).to(image.device)
            level = level * self.aug_max_level
        return self.augment_lowres(self.upsample_lowres(lowres), level, generator)

    def sampling_inputs(
        self, lowres: torch.Tensor | None, aug_level: float | None, generator: Generators = None
    ) -> dict[str, torch.Tensor]:
        if lowres is None:
            raise ValueError("a super-resolution stage needs `lowres` (B,3,h,w) to sample")
        level_value = self.sampling.aug_level if aug_level is None else float(aug_level)
        if not 0.0 <= level_value <= 1.0:
            raise ValueError(f"aug_level must be in [0, 1], got {level_value}")
        upsampled = self.upsample_lowres(lowres.to(self.device))
        level = torch.full((lowres.shape[0],), level_value, device=self.device)
        return self.augment_lowres(upsampled, level, generator)

    def sampling_start(self, shape, lowres, settings, x_T, generator):
        """With `settings.start_log_snr` lambda_s: t_start = t(lambda_s) and
        x_{t_start} = alpha_s up(lowres) + sigma_s eps (SDEdit, Meng et al. 2022, eq. 2, from the
        plainly upsampled low-res image; eps is x_T, or drawn from `generator`); else pure noise."""
        if settings.start_log_snr is None:
            return 1.0, x_T
        start = torch.tensor([float(settings.start_log_snr)], dtype=torch.float64)
        try:
            t_start = float(self.schedule.t_from_log_snr(start))
        except ValueError as error:
            raise StageConfigError([("sampling.start_log_snr", str(error))]) from None
        if t_start <= grid_t_min(self.schedule):
            raise StageConfigError([("sampling.start_log_snr", f"{settings.start_log_snr} leaves no noise to remove "
                                     f"(t = {t_start:.3g})")])
        noise = x_T if x_T is not None else randn(tuple(shape), generator, device=self.device)
        t = torch.full((shape[0],), t_start, device=self.device)
        return t_start, q_sample(self.upsample_lowres(lowres.to(self.device)), t, self.schedule, noise.to(self.device))

    def output_shape(self, batch_size: int, lowres: torch.Tensor | None) -> tuple[int, int, int, int]:
        """Full size from the low-res input: (B, C, h * scale_factor, w * scale_factor)."""
        height, width = lowres.shape[-2:]
        return (batch_size, self.unet.config.out_channels, height * self.scale_factor, width * self.scale_factor)


def _super_res_problems(
    unet: UNetConfig,
    image_size: int,
    lowres_size: int,
    upsample: str,
    aug_max_level: float,
    aug_level: float | None,
    blur: BlurConfig,
) -> list[tuple[str, str]]:
    problems = []
    if lowres_size < 1 or image_size % lowres_size or image_size == lowres_size:
        problems.append(
            ("lowres_size", f"{lowres_size} must be smaller than image_size {image_size} and divide it")
        )
    if upsample not in UPSAMPLE_MODES:
        problems.append(("upsample", f"must be one of {UPSAMPLE_MODES}, got {upsample!r}"))
    if not 0.0 <= aug_max_level <= 1.0:
        problems.append(("aug_max_level", f"must be in [0, 1], got {aug_max_level}"))
    if aug_level is not None and not 0.0 <= aug_level <= 1.0:
        problems.append(("aug_level", f"must be in [0, 1], got {aug_level}"))
    if unet.lowres_channels != unet.in_channels:
        problems.append(("unet.lowres_channels", f"must be {unet.in_channels} for a super-resolution stage"))
    if not unet.use_aug_cond:
        problems.append(("unet.use_aug_cond", "must be true: the stage tells the network its augmentation level"))
    if not 0.0 <= blur.probability <= 1.0:
        problems.append(("blur.probability", f"must be in [0, 1], got {blur.probability}"))
    if not 0.0 < blur.sigma_min <= blur.sigma_max:
        problems.append(("blur.sigma_min", f"need 0 < sigma_min <= sigma_max, got {blur.sigma_min}, {blur.sigma_max}"))
    if blur.kernel_size < 1 or blur.kernel_size % 2 == 0:
        problems.append(("blur.kernel_size", f"must be a positive odd number, got {blur.kernel_size}"))
    return problems


def blur_randomly(images: torch.Tensor, config: BlurConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Blur each image with probability `config.probability` by a Gaussian with its own sigma."""
    batch, channels, height, width = images.shape
    device = images.device if generator is None else generator.device
    chosen = torch.rand(batch, generator=generator, device=device) < config.probability
    spread = torch.rand(batch, generator=generator, device=device)
    sigma = config.sigma_min + (config.sigma_max - config.sigma_min) * spread
    chosen, sigma = chosen.to(images.device), sigma.to(images.device)
    offsets = torch.arange(config.kernel_size, device=images.device, dtype=torch.float32) - config.kernel_size // 2
    kernel_1d = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2)
    kernel_1d = kernel_1d / kernel_1d.sum(dim=1, keepdim=True)
    kernel_2d = kernel_1d[:, :, None] * kernel_1d[:, None, :]
    weight = kernel_2d.repeat_interleave(channels, dim=0)[:, None].to(images.dtype)
    pad = config.kernel_size // 2
    padded = F.pad(images.reshape(1, batch * channels, height, width), (pad, pad, pad, pad), mode="reflect")
    blurred = F.conv2d(padded, weight, groups=batch * channels).reshape(images.shape)
    return torch.where(chosen[:, None, None, None], blurred, images)
