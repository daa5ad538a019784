"""What the benchmarks feed a stage: the stage itself (built from a config), speed settings, and
synthetic batches and conditions of the right shapes.

Text-conditional stages get random text-encoder tokens of the configured length, exactly what
a batch with precomputed embeddings carries, so no encoder weights are needed and no caption is
encoded inside a timed step (encodings are computed once per prompt and cached in real use).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..nn import compile_static
from ..stages.conditioning import Condition
from ..stages.diffusion_stage import DiffusionStage
from ..stages.export import build_stage, read_stage_config
from ..stages.super_res import SuperResStage

DEFAULT_TEXT_LENGTH = 32


@dataclass(frozen=True)
class SpeedSettings:
    """How the network runs: `precision` "fp32" or "bf16" (autocast), channels_last memory format,
    and torch.compile of the UNet (`compile_mode` None = off, else a torch.compile mode such as
    "default" or "max-autotune")."""

    precision: str = "fp32"
    channels_last: bool = False
    compile_mode: str | None = None

    @classmethod
    def for_device(cls, device: torch.device, precision: str = "auto", channels_last: bool | None = None,
                   compile_mode: str | None = None) -> "SpeedSettings":
        """Resolve "auto" choices: bf16 and channels_last on CUDA, fp32 and contiguous on CPU."""
        if precision == "auto":
            precision = "bf16" if device.type == "cuda" else "fp32"
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
        if channels_last is None:
            channels_last = device.type == "cuda"
        return cls(precision, channels_last, compile_mode)

    def autocast(self, device: torch.device):
        """The autocast context of this precision (a no-op context for fp32)."""
        if self.precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def apply_memory_format(self, module: torch.nn.Module) -> torch.nn.Module:
        """Convert the module's 4-D weights to channels_last when asked (in place)."""
        if self.channels_last:
            module.to(memory_format=torch.channels_last)
        return module

    def apply_compile(self, module: torch.nn.Module) -> torch.nn.Module:
        """torch.compile the module in place when asked (its state_dict keys do not change)."""
        if self.compile_mode is not None:
            compile_static(module, self.compile_mode)
        return module

    def image(self, tensor: torch.Tensor) -> torch.Tensor:
        """An NCHW input in the module's memory format."""
        return tensor.contiguous(memory_format=torch.channels_last) if self.channels_last else tensor

    def describe(self) -> dict:
        return {"precision": self.precision, "channels_last": self.channels_last, "compile": self.compile_mode}


def load_stage(path: str | Path, device: torch.device, seed: int = 0) -> DiffusionStage:
    """A freshly initialised stage (random weights, seeded) from a stage YAML, on `device`.
    Built directly there: initialising a 600M-parameter UNet on the host takes seconds that a
    time-budgeted benchmark (`cascade bench gpu`) would rather spend measuring."""
    torch.manual_seed(seed)
    with torch.device(device):
        return build_stage(read_stage_config(path)).to(device)


def text_length(stage: DiffusionStage) -> int:
    """Tokens per caption of a text-conditional stage (its encoder's max_length)."""
    encoder = stage.text_encoder
    return encoder.config.max_length if encoder is not None else DEFAULT_TEXT_LENGTH


def random_condition(stage: DiffusionStage, batch_size: int, generator: torch.Generator) -> Condition:
    """A condition of the stage's kind with random content: class ids, or text tokens whose
    lengths vary over the batch (a quarter to all of the positions are real tokens)."""
    device = stage.device
    if stage.conditioning == "class":
        labels = torch.randint(0, stage.unet.config.num_classes, (batch_size,), generator=generator)
        return stage.make_condition(class_labels=labels.to(device))
    if stage.conditioning == "text":
        length = text_length(stage)
        tokens = torch.randn(batch_size, length, stage.unet.config.text_dim, generator=generator)
        real = torch.randint(max(1, length // 4), length + 1, (batch_size, 1), generator=generator)
        mask = torch.arange(length)[None, :] < real
        return stage.make_condition(text_tokens=tokens.to(device), text_mask=mask.to(device))
    return Condition()


def training_batch(
    stage: DiffusionStage, batch_size: int, resolution: int | None, settings: SpeedSettings, seed: int = 0
) -> dict:
    """A training batch as the data module delivers it: `image` (and `lowres` for SR stages) in
    [-1, 1], plus `class_label` or precomputed `text_tokens` / `text_mask`. `resolution` is the
    training size (SR stages may train on crops); None takes the stage's image_size."""
    generator = torch.Generator().manual_seed(seed)
    size = resolution or stage.image_size
    image = torch.rand(batch_size, 3, size, size, generator=generator) * 2 - 1
    batch = {"image": settings.image(image.to(stage.device))}
    if isinstance(stage, SuperResStage):
        if size % stage.scale_factor:
            raise ValueError(f"resolution {size} is not a multiple of the stage's scale factor {stage.scale_factor}")
        low = size // stage.scale_factor
        batch["lowres"] = torch.nn.functional.interpolate(image, size=(low, low), mode="area").to(stage.device)
    condition = random_condition(stage, batch_size, generator)
    if condition.class_labels is not None:
        batch["class_label"] = condition.class_labels
    if condition.text_tokens is not None:
        batch["text_tokens"], batch["text_mask"] = condition.text_tokens, condition.text_mask
    return batch


@contextlib.contextmanager
def without_trainer_warnings():
    """Silence Lightning's "self.log() without a Trainer" warning: the benchmarks call the stage's
    training hooks directly, outside a Trainer, where logging is a no-op."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")
        yield
