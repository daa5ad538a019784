"""The FID Inception-v3 network (the TensorFlow 2015-12-05 graph used by every published FID).

FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local
Nash Equilibrium") and IS (Salimans et al. 2016, "Improved Techniques for Training GANs")
are only comparable across papers when computed with this exact network: the TF graph
differs from torchvision's Inception-v3 (average pools that ignore padding, a max pool in the
last block, 1008 classes, TF1 bilinear resize). The building blocks are taken from
torch-fidelity, so the module names and the state-dict format are exactly those of its
weights file (`weights-inception-2015-12-05-6726825d.pth`, the same tensors pytorch-fid
ships); the weights are loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn
from torch_fidelity.feature_extractor_inceptionv3 import (
    BasicConv2d,
    InceptionA,
    InceptionB,
    InceptionC,
    InceptionD,
    InceptionE_1,
    InceptionE_2,
)
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008


class FIDInceptionV3(nn.Module):
    """Inception-v3 as in the TF FID graph: 2048-d pool features and 1008 logits.

    `forward` takes images with values in [0, 255], NCHW, any size, and by default resizes
    them to 299x299 by TF1-exact bilinear interpolation (the protocol of the original TF
    code, pytorch-fid and torch-fidelity); the clean-fid protocol (Parmar et al. 2022)
    resizes with PIL beforehand and passes ``resize_to=None``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.MaxPool_1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.MaxPool_2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE_1(1280)
        self.Mixed_7c = InceptionE_2(2048)
        self.AvgPool = nn.AdaptiveAvgPool2d(output_size=(1, 1))
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_weights_file(cls, path: str | os.PathLike[str]) -> FIDInceptionV3:
        """Load the converted TF weights (torch-fidelity's state-dict format) from a local file."""
        network = cls()
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        network.load_state_dict(state_dict)
        return network

    @classmethod
    def with_random_weights(cls, seed: int = 0) -> FIDInceptionV3:
        """The same architecture with fixed random weights drawn from `seed`.

        Weights come from NumPy's legacy ``RandomState`` (its stream is frozen by NumPy's
        compatibility policy, NEP 19), so every machine and version builds identical
        tensors. Convolutions get He-normal weights (He et al. 2015) and batch norms the
        identity (running mean 0, variance 1, scale 1, shift 0), so activations keep their
        scale through the 90-odd layers; the classifier gets N(0, 1/2048) weights.
        """
        network = cls()
        rng = np.random.RandomState(seed)
        state_dict = network.state_dict()  # tensors share storage with the module: filled in place
        for name in sorted(state_dict):
            tensor = state_dict[name]
            if name.endswith("conv.weight") or name == "fc.weight":
                fan_in = int(np.prod(tensor.shape[1:]))
                gain = 2.0 if name.endswith("conv.weight") else 1.0
                values = rng.standard_normal(tuple(tensor.shape)) * np.sqrt(gain / fan_in)
                tensor.copy_(torch.from_numpy(values))
            elif name.endswith("running_var") or name.endswith("bn.weight"):
                tensor.fill_(1.0)
            elif tensor.is_floating_point():
                tensor.zero_()
        return network

    def forward(self, images: torch.Tensor, resize_to: int | None = INPUT_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(features, logits)``: the (N, 2048) pool features and (N, 1008) logits.

        `images` are float (or uint8) NCHW with values in [0, 255]. ``resize_to`` is the size of
        the TF1-exact bilinear resize applied first; None feeds the images as they are.
        The logits are ``features @ fc.weight.T`` without the bias, as in the original IS
        code and torch-fidelity's ``logits_unbiased``.
        """
        x = images.float()
        if resize_to is not None:
            x = interpolate_bilinear_2d_like_tensorflow1x(x, size=(resize_to, resize_to), align_corners=False)
        x = (x - 128) / 128
        x = self.Conv2d_1a_3x3(x)
        x = self.Conv2d_2a_3x3(x)
        x = self.Conv2d_2b_3x3(x)
        x = self.MaxPool_1(x)
        x = self.Conv2d_3b_1x1(x)
        x = self.Conv2d_4a_3x3(x)
        x = self.MaxPool_2(x)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        features = torch.flatten(self.AvgPool(x), 1)
        logits = features.mm(self.fc.weight.T)
        return features, logits
