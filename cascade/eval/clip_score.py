"""CLIP score (Hessel et al. 2021, "CLIPScore: A Reference-free Evaluation Metric for Image Captioning").

Image-text alignment of generated images with their prompts: 100 * max(cos(E_image,
E_text), 0) averaged over images, the convention of torchmetrics and of text-to-image papers
(Saharia et al. 2022 report it for Imagen). The CLIP model is a Hugging Face ``CLIPModel``
loaded from a local folder with ``local_files_only=True``: nothing is downloaded. Scores
from different CLIP models are not comparable; the report states the model folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torchmetrics import Metric

from .images import uint8_batch


class CLIPScore(Metric):
    """Mean CLIP score of (image, prompt) pairs; ``update(images, prompts)``.

    `images` uint8 in [0, 255] or float in [-1, 1], NCHW. Like the feature extractors, the
    CLIP model is moved with the metric but kept out of its ``state_dict``.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, model_dir: str | os.PathLike[str], **kwargs: object):
        super().__init__(**kwargs)
        from transformers import CLIPModel, CLIPProcessor

        model_dir = Path(model_dir).expanduser()
        if not model_dir.is_dir():
            raise FileNotFoundError(f"CLIP model folder not found: {model_dir} (a local save_pretrained folder)")
        model = CLIPModel.from_pretrained(str(model_dir), local_files_only=True).eval().requires_grad_(False)
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "processor", CLIPProcessor.from_pretrained(str(model_dir), local_files_only=True))
        self.model_dir = str(model_dir)
        self.add_state("score_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def _apply(self, fn, exclude_state=""):  # noqa: ANN001, ANN202 - torchmetrics' signature
        this = super()._apply(fn, exclude_state)
        self.model.to(self.device)
        return this

    @torch.no_grad()
    def update(self, images: torch.Tensor, prompts: list[str]) -> None:
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images for {len(prompts)} prompts")
        arrays = list(uint8_batch(images).permute(0, 2, 3, 1).cpu().numpy())
        inputs = self.processor(text=list(prompts), images=arrays, return_tensors="pt", padding=True, truncation=True)
        outputs = self.model(**{key: value.to(self.device) for key, value in inputs.items()})
        image_embeds = torch.nn.functional.normalize(outputs.image_embeds.double(), dim=-1)
        text_embeds = torch.nn.functional.normalize(outputs.text_embeds.double(), dim=-1)
        scores = (100 * (image_embeds * text_embeds).sum(dim=-1)).clamp_min(0)
        self.score_sum += scores.sum()
        self.count += scores.shape[0]

    def compute(self) -> torch.Tensor:
        return self.score_sum / self.count
