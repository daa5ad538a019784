"""Lightning stages of the cascade: the shared `DiffusionStage`, `BaseStage` and `SuperResStage`,
their callbacks (`EMA`, `PostHocEMA`, `SampleGrid`, `TrainingSpeed`, `ProgressLines`, `StepProgressBar`,
`ThreadGrant`, `SaveOnInterrupt`), FSDP2 sharding (`FSDP2Strategy`), and loading trained stages for inference.

    from cascade.stages import load_stage
    base = load_stage("runs/base/export")              # an export directory or a .ckpt file
    condition = base.make_condition(prompts=["a red circle"])
    images = base.generate(condition, settings=base.sampling.updated(guidance=3.0))
"""

from .base_stage import BaseStage
from .callbacks import ProgressLines, SampleGrid, StepProgressBar, ThreadGrant, TrainingSpeed
from .checkpointing import AtomicCheckpointIO, SaveOnInterrupt, TrainingInterrupted
from .conditioning import Condition, TextEncoderConfig
from .config import LayoutPretrainingConfig, SamplingSettings, ScheduleConfig, StageConfigError, ValidationConfig
from .diffusion_stage import DiffusionStage, NonFiniteLossError
from .ema import EMA
from .export import export_stage, load_checkpoint, load_exported, load_stage
from .optim import OptimizerConfig
from .posthoc_ema import PostHocEMA
from .sharding import FSDP2Strategy
from .super_res import BlurConfig, SuperResStage

__all__ = [
    "EMA",
    "AtomicCheckpointIO",
    "BaseStage",
    "BlurConfig",
    "Condition",
    "DiffusionStage",
    "FSDP2Strategy",
    "NonFiniteLossError",
    "OptimizerConfig",
    "PostHocEMA",
    "ProgressLines",
    "SampleGrid",
    "SamplingSettings",
    "SaveOnInterrupt",
    "ScheduleConfig",
    "StageConfigError",
    "StepProgressBar",
    "ThreadGrant",
    "SuperResStage",
    "TextEncoderConfig",
    "TrainingInterrupted",
    "TrainingSpeed",
    "ValidationConfig",
    "LayoutPretrainingConfig",
    "export_stage",
    "load_checkpoint",
    "load_exported",
    "load_stage",
]
