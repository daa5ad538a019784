"""`BaseStage`: the first stage of the cascade, images from noise given a class id or a caption."""

from __future__ import annotations

from ..nn import UNetConfig

from .config import StageConfigError, as_dataclass
from .diffusion_stage import DiffusionStage


class BaseStage(DiffusionStage):
    """A class- or text-conditional image_size x image_size diffusion model (64x64 in CDM and
    Imagen: Ho et al. 2022, Saharia et al. 2022). `conditioning` picks "class" (ImageNet-style
    labels, `unet.num_classes` > 0) or "text" (a frozen text encoder, `unet.text_dim` > 0).
    Every other argument is `DiffusionStage`'s.
    """

    def __init__(self, unet: UNetConfig, image_size: int = 64, conditioning: str = "class", **kwargs):
        unet = as_dataclass(unet, UNetConfig, "unet")
        problems = []
        if unet.lowres_channels:
            problems.append(("unet.lowres_channels", "must be 0 for a base stage (it has no low-res input)"))
        if unet.use_aug_cond:
            problems.append(("unet.use_aug_cond", "must be false for a base stage (no augmentation level)"))
        if problems:
            raise StageConfigError(problems)
        super().__init__(unet=unet, image_size=image_size, conditioning=conditioning, **kwargs)
