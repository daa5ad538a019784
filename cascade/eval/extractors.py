"""Pluggable feature extractors: the networks whose feature space FID, IS, P/R and KID live in.

Every extractor is a :class:`FeatureExtractor`: it has a `name`, a `feature_dim`, a
`weights_hash` (first 16 hex digits of the SHA-256 of its weights) and a `preprocessing`
line describing its exact resize, and maps images (uint8 in [0, 255] or float in [-1, 1],
NCHW) to features. The name and hash key cached reference statistics and appear in every
report, so numbers from different feature spaces are never mixed up.

Available (:func:`build_extractor`):

``inception``
    The FID Inception-v3 with TF1 bilinear resize to 299: the protocol of the original FID
    code (Heusel et al. 2017), pytorch-fid and torch-fidelity. Needs the weights file.
``clean``
    The same network behind clean-fid's resize (Parmar et al. 2022, "On Aliased Resizing
    and Surprising Subtleties in GAN Evaluation"): PIL bicubic to 299 on float images.
``random-inception``
    The same architecture with fixed, seeded random weights: needs no download, for demos
    and CI. NOT comparable to any published FID (see :class:`RandomInceptionExtractor`).
``dinov2``
    DINOv2 ViT-L/14 through timm (Stein et al. 2023, "Exposing flaws of generative model
    evaluation metrics and their unfair treatment of diffusion models"): Fréchet distance
    in this space tracks human judgement better. Needs a local weights file.
"""

from __future__ import annotations

import abc
import itertools
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..files.hashing import file_sha256
from .images import pil_bicubic_resize, uint8_batch
from .inception import FEATURE_DIM, INPUT_SIZE, FIDInceptionV3
from .weights import WEIGHTS_HASH_LENGTH, find_inception_weights, state_dict_sha256

EXTRACTOR_NAMES = ("inception", "clean", "random-inception", "dinov2")


class FeatureExtractor(nn.Module, abc.ABC):
    """Base class: images -> (N, feature_dim) float32 features, and optionally logits for IS.

    Subclasses set the four attributes below and implement :meth:`features_and_logits`;
    calling the module returns the features.
    Parameters never require gradients and the module stays in eval mode.
    """

    name: str
    feature_dim: int
    weights_hash: str
    preprocessing: str

    @abc.abstractmethod
    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return ``(features, logits)`` for uint8 [0, 255] or float [-1, 1] NCHW images;
        `logits` is None for extractors without a classifier."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(images)[0]

    @property
    def provides_logits(self) -> bool:
        return False

    @property
    def device(self) -> torch.device:
        tensor = next(itertools.chain(self.parameters(), self.buffers()), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    def train(self, mode: bool = True) -> FeatureExtractor:
        return super().train(False)

    def describe(self) -> dict[str, object]:
        """The protocol entries a report prints: name, weights hash, feature size, resize."""
        return {
            "extractor": self.name,
            "weights_hash": self.weights_hash,
            "feature_dim": self.feature_dim,
            "preprocessing": self.preprocessing,
        }


class InceptionExtractor(FeatureExtractor):
    """FID Inception-v3, TF1-exact bilinear resize to 299 (torch-fidelity / pytorch-fid protocol).

    Features are the 2048-d pool3 activations (FID, Heusel et al. 2017; KID, Bińkowski et al.
    2018; precision/recall, Kynkäänniemi et al. 2019); logits are the 1008 unbiased logits
    (IS, Salimans et al. 2016). Agrees with ``torch_fidelity.calculate_metrics`` given the same
    weights file (tested to 1e-3 relative).
    """

    name = "inception"
    feature_dim = FEATURE_DIM
    preprocessing = "uint8 -> TF1 bilinear resize to 299x299 (torch-fidelity / pytorch-fid protocol)"

    def __init__(self, network: FIDInceptionV3, weights_hash: str):
        super().__init__()
        self.network = network
        self.weights_hash = weights_hash

    @classmethod
    def from_weights(cls, weights: str | os.PathLike[str] | None = None) -> InceptionExtractor:
        """Load from `weights`, or ``$CASCADE_INCEPTION_WEIGHTS``, or the torch hub cache."""
        path = find_inception_weights(weights)
        return cls(FIDInceptionV3.from_weights_file(path), file_sha256(path, WEIGHTS_HASH_LENGTH))

    @property
    def provides_logits(self) -> bool:
        return True

    def _network_input(self, images: torch.Tensor) -> torch.Tensor:
        return uint8_batch(images).to(self.device)

    @torch.no_grad()
    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, logits = self.network(self._network_input(images))
        return features.float(), logits.float()


class CleanInceptionExtractor(InceptionExtractor):
    """FID Inception-v3 behind clean-fid's resize (Parmar et al. 2022): PIL bicubic to 299.

    The resize runs on the CPU, per channel on float images, then the network runs without
    its own resize. Same network and weights file as ``inception``; only the resize differs,
    and Parmar et al. show that this resize changes FID noticeably, so the two protocols'
    numbers must not be mixed.
    """

    name = "clean"
    preprocessing = "uint8 -> PIL bicubic resize of float channels to 299x299, clip [0, 255] (clean-fid 'clean' mode)"

    @torch.no_grad()
    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        resized = pil_bicubic_resize(uint8_batch(images), INPUT_SIZE).to(self.device)
        features, logits = self.network(resized, resize_to=None)
        return features.float(), logits.float()


class RandomInceptionExtractor(InceptionExtractor):
    """Offline stand-in: the FID Inception-v3 architecture with fixed random weights.

    **Numbers in this feature space are not comparable to published FIDs**, nor to FIDs
    computed with any other extractor; they are only comparable with each other (same seed,
    same resize), e.g. guidance on vs off in the demo, which must run with no downloaded
    weights. Why random weights still measure something: a random convolutional network is
    a fixed, injective-ish nonlinear embedding that keeps local image statistics (colour,
    edges, texture at several scales); Rahimi & Recht (2007) showed random features
    approximate kernel embeddings, and Naeem et al. (2020, "Reliable Fidelity and Diversity
    Metrics for Generative Models", Sec. 5) found randomly initialised embeddings usable for
    precision/recall-type metrics where no suitable pretrained network exists. Using the
    Inception architecture keeps the code path, resize and feature size identical to the
    real protocol; only the weights (and the missing ImageNet semantics) differ.

    The weights are drawn deterministically from `seed` (:meth:`FIDInceptionV3.with_random_weights`);
    `input_size` < 299 (at least 75) trades fidelity to the real protocol for speed on CPU.
    """

    def __init__(self, seed: int = 0, input_size: int = INPUT_SIZE):
        network = FIDInceptionV3.with_random_weights(seed)
        super().__init__(network, state_dict_sha256(network.state_dict()))
        if input_size < 75:
            raise ValueError("Inception-v3 needs inputs of at least 75x75")
        self.seed = seed
        self.input_size = input_size
        self.name = f"random-inception-seed{seed}" + ("" if input_size == INPUT_SIZE else f"-{input_size}px")
        self.preprocessing = (
            f"uint8 -> TF1 bilinear resize to {input_size}x{input_size}; RANDOM weights (seed {seed}): "
            "not comparable to published FIDs"
        )

    @torch.no_grad()
    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, logits = self.network(self._network_input(images), resize_to=self.input_size)
        return features.float(), logits.float()


class DinoV2Extractor(FeatureExtractor):
    """DINOv2 ViT (Oquab et al. 2023) class-token features via timm, from a local weights file.

    Stein et al. (2023) recommend Fréchet distance in DINOv2 ViT-L/14 space ("FD_DINOv2")
    because it ranks models closer to human judgement than Inception. Preprocessing as in
    their dgm-eval code: bicubic resize to 224x224, ImageNet mean/std normalisation. The
    weights file may be timm's (``model.safetensors`` / ``pytorch_model.bin``) or any state
    dict timm's DINOv2 checkpoint filter accepts; position embeddings are resampled to 224.
    """

    name = "dinov2"
    input_size = 224

    def __init__(self, weights: str | os.PathLike[str], model_name: str = "vit_large_patch14_dinov2"):
        super().__init__()
        import timm

        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"DINOv2 weights file not found: {path}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state_dict = load_file(str(path))
        else:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        self.model = timm.create_model(
            model_name,
            pretrained=True,
            pretrained_cfg_overlay={"state_dict": state_dict, "source": "", "hf_hub_id": None, "url": None},
            num_classes=0,
            img_size=self.input_size,
        )
        self.model.requires_grad_(False).eval()
        self.feature_dim = int(self.model.num_features)
        self.weights_hash = file_sha256(path, WEIGHTS_HASH_LENGTH)
        self.name = f"dinov2-{model_name}"
        self.preprocessing = "uint8 -> bicubic resize (antialiased) to 224x224, ImageNet mean/std (Stein et al. 2023)"
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255, persistent=False)

    @torch.no_grad()
    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        x = uint8_batch(images).to(self.device).float()
        x = F.interpolate(x, size=(self.input_size,) * 2, mode="bicubic", align_corners=False, antialias=True)
        x = (x.clamp(0, 255) - self.mean) / self.std
        return self.model(x).float(), None


def build_extractor(
    name: str,
    *,
    inception_weights: str | os.PathLike[str] | None = None,
    dinov2_weights: str | os.PathLike[str] | None = None,
    dinov2_model: str = "vit_large_patch14_dinov2",
    random_seed: int = 0,
    random_input_size: int = INPUT_SIZE,
    device: str | torch.device | None = None,
) -> FeatureExtractor:
    """Build an extractor by name (one of :data:`EXTRACTOR_NAMES`) on `device` (default: CUDA if present).

    Raises :class:`eval.weights.InceptionWeightsNotFound` for ``inception``/``clean`` when the
    weights file is missing; nothing is ever downloaded.
    """
    if name == "inception":
        extractor: FeatureExtractor = InceptionExtractor.from_weights(inception_weights)
    elif name == "clean":
        path = find_inception_weights(inception_weights)
        extractor = CleanInceptionExtractor(FIDInceptionV3.from_weights_file(path), file_sha256(path, WEIGHTS_HASH_LENGTH))
    elif name == "random-inception":
        extractor = RandomInceptionExtractor(seed=random_seed, input_size=random_input_size)
    elif name == "dinov2":
        if dinov2_weights is None:
            raise ValueError("the dinov2 extractor needs a local weights file (--dinov2-weights PATH)")
        extractor = DinoV2Extractor(dinov2_weights, model_name=dinov2_model)
    else:
        raise ValueError(f"unknown extractor {name!r}; choose from {', '.join(EXTRACTOR_NAMES)}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return extractor.to(device)
