"""`DiffusionStage`: the Lightning module shared by every stage of the cascade.

One UNet, one noise schedule, one prediction target. Training: t ~ U(0, 1) per sample,
x_t = alpha_t x0 + sigma_t eps, weighted MSE on the target (eps | v | x0; uniform,
min-SNR-gamma (Hang et al. 2023) or sigmoid (Kingma & Gao 2023) weighting), with
classifier-free-guidance dropout of the condition (Ho & Salimans 2022). Validation: the loss in
equal t-buckets at fixed seeds. Sampling: `make_denoiser` gives one guided denoising function
(conditional and null rows in one batched forward pass, or a weaker guide model's conditional
prediction (autoguidance, Karras et al. 2024); guidance only inside a log-SNR interval if set
(Kynkaenniemi et al. 2024); optional dynamic thresholding of Saharia et al. 2022) and `generate`
runs a `cascade.diffusion` sampler with it.

`BaseStage` and `SuperResStage` add only what differs (image sizes, the low-res input and its
noise-conditioning augmentation).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.utilities import GradClipAlgorithmType, rank_zero_info
from lightning.pytorch.utilities.parsing import collect_init_args
from torch.distributed.tensor import DTensor
from tqdm.auto import tqdm

from ..diffusion import (
    SIGMOID_BIAS,
    TARGETS,
    WEIGHTINGS,
    Denoiser,
    Generators,
    NoiseSchedule,
    cfg_combine,
    diffusion_loss,
    dynamic_threshold as apply_dynamic_threshold,
    in_guidance_interval,
    predicted_x0,
    q_sample,
    sample,
    static_threshold,
)
from ..nn import UNet, UNetConfig, compile_static
from ..nn.unet import layout_loss

from .conditioning import CONDITIONINGS, Condition, FrozenTextEncoder, TextEncoderConfig, cfg_dropout_mask
from .config import (
    LayoutPretrainingConfig,
    SamplingSettings,
    ScheduleConfig,
    StageConfigError,
    ValidationConfig,
    as_dataclass,
    to_plain,
)
from .optim import MUON_UNDER_FSDP, OptimizerConfig, build_lr_scheduler, build_optimizer, check_optimizer_config
from .sharding import FSDP2Strategy

NOISE_CONDS = ("t1000", "log_snr")
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# mixed into a row's seed for its layout choice's own generator (`with_layout_choices`)
_LAYOUT_CHOICE_SEED = 0x1A7007


def collect_stage_init_args(frame) -> dict[str, Any]:
    """The arguments of every `__init__` in the chain that reached `frame` (leaf class wins)."""
    init_args: dict[str, Any] = {}
    for frame_args in collect_init_args(frame, [], classes=(DiffusionStage,)):
        init_args.update(frame_args)
    return init_args


class NonFiniteLossError(RuntimeError):
    """Training stopped after too many consecutive steps with a NaN/inf loss or gradient."""


class DiffusionStage(pl.LightningModule):
    """A diffusion model over images in [-1, 1] (one stage of the cascade).

    Args:
        unet: the `cascade.nn.UNetConfig` of the denoiser.
        image_size: side of the generated images (SR: of the full-size output).

    The constructor arguments are saved as plain hyper-parameters (`stage_config()`), so a
    checkpoint or an export rebuilds the stage without pickled objects.
        schedule: the noise schedule (`ScheduleConfig`: name and parameters).
        target: what the UNet predicts: "eps", "v" (Salimans & Ho 2022) or "x0".
        loss_weighting: "uniform", "min_snr" (Hang et al. 2023) with `min_snr_gamma`, or "sigmoid"
            (Kingma & Gao 2023; Hoogeboom et al. 2024, SiD2) with `sigmoid_bias`: the weight
            sigmoid(b - lambda) (-d lambda/dt) on the eps-MSE, carried to the target
            (`cascade.diffusion.loss_weight`).
        sigmoid_bias: b of the sigmoid weighting; default -3 (SiD2, `cascade.diffusion.SIGMOID_BIAS`).
        noise_cond: what the UNet receives as its noise level: "t1000" (1000 t, as ADM) or
            "log_snr" (lambda(t), Kingma et al. 2021). The SR augmentation level uses the same.
        conditioning: "class", "text" or "none".
        text_encoder: the frozen encoder of a text-conditional stage (`TextEncoderConfig`).
        p_uncond: probability that a training row's condition is replaced by the null condition.
        optimizer: AdamW and learning-rate schedule (`OptimizerConfig`).
        validation: t-bucketed validation loss (`ValidationConfig`).
        sampling: the stage's own sampling settings (`SamplingSettings`): what `generate`, the
            logged sample grids and a `Cascade` use unless told otherwise. A mapping may use the
            older key `guidance_scale` (checkpoints and exports written before it was `guidance`).
        compile_unet: torch.compile the UNet for training and sampling: null (off) or a
            torch.compile mode ("default", "reduce-overhead", "max-autotune"). Compiled in place
            with static shapes (`cascade.nn.compile_static`), so checkpoints and exports keep
            the same keys; the first steps, and the first call at each new shape, pay the
            compile time (the TrainingSpeed callback shows it).
        max_consecutive_nonfinite: stop training (with a checkpoint) after this many optimiser
            steps in a row whose loss or gradient is NaN/inf; such steps are skipped. Checked
            every `trainer.log_every_n_steps` steps, where the loggers read the device anyway.
        layout_loss_weight: weight of the layout loss added to the training loss: the mean squared
            error between `UNet.layout_prediction` (what the caption's layout map paints at r x r)
            and the target image averaged to r x r (`unet.text_layout_head`; 0 = none, as before).
            Its rows are those of the denoising loss, null rows included (their target is the
            unconditional mean image).
        layout_pretraining: fit the layout path alone on the first training images before the
            denoiser's first step (`LayoutPretrainingConfig`; steps 0 = no, as before).
        layout_choice_below: with `unet.text_layout_choices` > 1, the log-SNR below which the
            denoiser reads its row's chosen layout map; at and above it, the one map as it is
            (`UNet.forward`'s `layout_shared`): where the objects go is decided at the highest noise
            levels, which shape goes with which colour later, and the chosen maps' scaled channels
            cost the latter (docs/benchmarks.md, "A layout drawn, not averaged"). None: the chosen
            map at every level.
    """

    def __init__(
        self,
        unet: UNetConfig,
        image_size: int = 64,
        schedule: ScheduleConfig = ScheduleConfig(),
        target: str = "v",
        loss_weighting: str = "uniform",
        min_snr_gamma: float = 5.0,
        sigmoid_bias: float = SIGMOID_BIAS,
        noise_cond: str = "t1000",
        conditioning: str = "class",
        text_encoder: TextEncoderConfig | None = None,
        p_uncond: float = 0.1,
        optimizer: OptimizerConfig = OptimizerConfig(),
        validation: ValidationConfig = ValidationConfig(),
        sampling: SamplingSettings | dict[str, Any] = SamplingSettings(),
        compile_unet: str | None = None,
        max_consecutive_nonfinite: int = 5,
        layout_loss_weight: float = 0.0,
        layout_pretraining: LayoutPretrainingConfig = LayoutPretrainingConfig(),
        layout_choice_below: float | None = None,
    ):
        super().__init__()
        # Not sent to the loggers: the saved config.yaml has them, and names may clash with the data's.
        self.save_hyperparameters(to_plain(collect_stage_init_args(inspect.currentframe())), logger=False)
        self.sampling = SamplingSettings.from_dict(sampling)
        self.hparams["sampling"] = self.sampling.to_dict()  # stored under today's key names
        unet = as_dataclass(unet, UNetConfig, "unet")
        self.schedule_config = as_dataclass(schedule, ScheduleConfig, "schedule")
        self.optimizer_config = as_dataclass(optimizer, OptimizerConfig, "optimizer")
        self.validation_config = as_dataclass(validation, ValidationConfig, "validation")
        text_encoder = None if text_encoder is None else as_dataclass(text_encoder, TextEncoderConfig, "text_encoder")
        self.image_size = image_size
        self.target = target
        self.loss_weighting = loss_weighting
        self.min_snr_gamma = min_snr_gamma
        self.sigmoid_bias = sigmoid_bias
        self.noise_cond = noise_cond
        self.conditioning = conditioning
        self.p_uncond = p_uncond
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        self.layout_loss_weight = layout_loss_weight
        self.layout_pretraining = as_dataclass(layout_pretraining, LayoutPretrainingConfig, "layout_pretraining")
        self.layout_choice_below = layout_choice_below
        self.compile_unet = compile_unet
        self._check_settings(unet, text_encoder)
        self.schedule = NoiseSchedule.from_config(self.schedule_config.name, **self.schedule_config.params)
        self.unet = UNet(unet)
        self._text = FrozenTextEncoder(text_encoder) if text_encoder is not None else None
        # [total, in a row, longest run since the last check] of skipped steps, on the device:
        # counted without a host sync, read at logging intervals.
        self._nonfinite = torch.zeros(3, dtype=torch.long)
        if compile_unet is not None:
            compile_static(self.unet, compile_unet)

    # ------------------------------------------------------------------ configuration
    def _check_settings(self, unet: UNetConfig, text_encoder: TextEncoderConfig | None) -> None:
        problems = []
        if self.image_size < 1:
            problems.append(("image_size", f"must be >= 1, got {self.image_size}"))
        if self.target not in TARGETS:
            problems.append(("target", f"must be one of {TARGETS}, got {self.target!r}"))
        if self.loss_weighting not in WEIGHTINGS:
            problems.append(("loss_weighting", f"must be one of {WEIGHTINGS}, got {self.loss_weighting!r}"))
        if self.loss_weighting == "min_snr" and not self.min_snr_gamma > 0:
            problems.append(("min_snr_gamma", f"must be > 0, got {self.min_snr_gamma}"))
        bias = self.sigmoid_bias
        if not (isinstance(bias, (int, float)) and not isinstance(bias, bool) and math.isfinite(bias)):
            problems.append(("sigmoid_bias", f"must be a finite number, got {bias!r}"))
        if self.noise_cond not in NOISE_CONDS:
            problems.append(("noise_cond", f"must be one of {NOISE_CONDS}, got {self.noise_cond!r}"))
        if self.conditioning not in CONDITIONINGS:
            problems.append(("conditioning", f"must be one of {CONDITIONINGS}, got {self.conditioning!r}"))
        if self.conditioning == "class" and unet.num_classes <= 0:
            problems.append(("unet.num_classes", "must be > 0 for conditioning: class"))
        if self.conditioning == "text":
            if unet.text_dim <= 0:
                problems.append(("unet.text_dim", "must be > 0 for conditioning: text"))
            if text_encoder is None:
                problems.append(("text_encoder", "is required for conditioning: text"))
            elif text_encoder.layer is not None and (isinstance(text_encoder.layer, bool)
                                                     or not isinstance(text_encoder.layer, int) or text_encoder.layer < 0):
                problems.append(("text_encoder.layer", f"must be null or an int >= 0, got {text_encoder.layer!r}"))
        if not 0.0 <= self.p_uncond <= 1.0:
            problems.append(("p_uncond", f"must be in [0, 1], got {self.p_uncond}"))
        if self.compile_unet not in COMPILE_MODES:
            problems.append(("compile_unet", f"must be one of {COMPILE_MODES}, got {self.compile_unet!r}"))
        weight = self.layout_loss_weight
        if not (isinstance(weight, (int, float)) and not isinstance(weight, bool) and math.isfinite(weight) and weight >= 0):
            problems.append(("layout_loss_weight", f"must be a finite number >= 0, got {weight!r}"))
        elif weight > 0 and not unet.text_layout_head:
            problems.append(("layout_loss_weight", "needs unet.text_layout_head: true (the layout map's image)"))
        elif weight == 0 and unet.text_layout_head:
            problems.append(("unet.text_layout_head", "needs layout_loss_weight > 0 (else its head gets no gradient)"))
        pre = self.layout_pretraining
        for key in ("steps", "batch_size", "images", "seed"):
            value, least = getattr(pre, key), 0 if key in ("steps", "seed") else 1
            if key == "seed" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                problems.append((f"layout_pretraining.{key}", f"must be an int >= {least}, got {value!r}"))
        if not (isinstance(pre.lr, (int, float)) and not isinstance(pre.lr, bool) and math.isfinite(pre.lr) and pre.lr > 0):
            problems.append(("layout_pretraining.lr", f"must be a finite number > 0, got {pre.lr!r}"))
        if isinstance(pre.steps, int) and pre.steps > 0 and not unet.text_layout_head:
            problems.append(("layout_pretraining.steps", "needs unet.text_layout_head: true (the layout path to fit)"))
        below = self.layout_choice_below
        if below is not None:
            if isinstance(below, bool) or not isinstance(below, (int, float)) or not math.isfinite(below):
                problems.append(("layout_choice_below", f"must be a finite log-SNR or null, got {below!r}"))
            elif unet.text_layout_choices < 2:
                problems.append(("layout_choice_below", "needs unet.text_layout_choices > 1"))
        if self.max_consecutive_nonfinite < 1:
            problems.append(("max_consecutive_nonfinite", f"must be >= 1, got {self.max_consecutive_nonfinite}"))
        try:
            NoiseSchedule.from_config(self.schedule_config.name, **self.schedule_config.params)
        except (TypeError, ValueError) as error:
            problems.append(("schedule", str(error)))
        if self.validation_config.num_t_buckets < 1:
            problems.append(("validation.num_t_buckets", "must be >= 1"))
        problems += check_optimizer_config(self.optimizer_config)
        if problems:
            raise StageConfigError(problems)

    def stage_config(self) -> dict[str, Any]:
        """{"class_path", "init_args"}: everything needed to rebuild this stage, as plain data."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": to_plain(dict(self.hparams))}

    # ------------------------------------------------------------------ conditions
    @property
    def text_encoder(self) -> FrozenTextEncoder | None:
        """The frozen text encoder (None unless conditioning is "text"); not part of state_dict."""
        return self._text

    def make_condition(
        self,
        class_labels: torch.Tensor | list[int] | None = None,
        prompts: list[str] | None = None,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> Condition:
        """The `Condition` for this stage from class ids, prompts (encoded with the stage's text
        encoder) or precomputed text encodings. Unconditional stages take nothing."""
        if self.conditioning == "none":
            return Condition()
        if self.conditioning == "class":
            if class_labels is None:
                raise ValueError("this stage is class-conditional: pass class_labels")
            return Condition(class_labels=torch.as_tensor(class_labels, dtype=torch.long, device=self.device))
        if text_tokens is None:
            if prompts is None:
                raise ValueError("this stage is text-conditional: pass prompts or text_tokens")
            text_tokens, text_mask = self._text.encode(list(prompts), self.device)
        text_mask = None if text_mask is None else text_mask.to(self.device)
        return Condition(text_tokens=text_tokens.to(self.device), text_mask=text_mask)

    def condition_from_batch(self, batch: dict) -> Condition:
        """The batch's condition: `class_label`, precomputed `text_tokens`/`text_mask`, or `caption`."""
        if self.conditioning == "class":
            if "class_label" not in batch:
                raise KeyError("conditioning is 'class' but the batch has no 'class_label' (shards without 'cls')")
            return self.make_condition(class_labels=batch["class_label"])
        if self.conditioning == "text":
            if "text_tokens" in batch:
                return self.make_condition(text_tokens=batch["text_tokens"], text_mask=batch.get("text_mask"))
            if "caption" not in batch:
                raise KeyError("conditioning is 'text' but the batch has neither 'text_tokens' nor 'caption'")
            return self.make_condition(prompts=batch["caption"])
        return Condition()

    # ------------------------------------------------------------------ the network call
    def noise_cond_input(self, t: torch.Tensor) -> torch.Tensor:
        """The UNet's noise-level input for times t (B,): 1000 t or lambda(t)."""
        if self.noise_cond == "log_snr":
            return self.schedule.log_snr_unchecked(t)
        return 1000.0 * t

    def image_inputs(self, batch: dict, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """Extra UNet inputs derived from a training/validation batch (SR: lowres, aug_cond)."""
        return {}

    def sampling_inputs(
        self, lowres: torch.Tensor | None, aug_level: float | None, generator: Generators = None
    ) -> dict[str, torch.Tensor]:
        """Extra UNet inputs at sampling time (SR: the upsampled low-res image noised to aug_level)."""
        if lowres is not None:
            raise ValueError(f"{type(self).__name__} takes no low-res input")
        return {}

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, condition: Condition, **image_inputs) -> torch.Tensor:
        """The raw network output (eps, v or x0 according to `target`) at times t (B,)."""
        return self.unet(x_t, self.noise_cond_input(t), **condition.unet_kwargs(), **image_inputs,
                         **self._layout_shared(t, condition))

    def _layout_shared(self, t: torch.Tensor, condition: Condition) -> dict[str, torch.Tensor]:
        """`layout_shared` for the UNet: the rows at or above `layout_choice_below` (none without it)."""
        if self.layout_choice_below is None or condition.text_tokens is None:
            return {}
        return {"layout_shared": self.schedule.log_snr_unchecked(t) >= self.layout_choice_below}

    # ------------------------------------------------------------------ training
    def per_sample_loss(
        self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, condition: Condition, image_inputs: dict
    ) -> torch.Tensor:
        """The weighted denoising loss (B,) of x0 noised to t with `noise`."""
        x_t = q_sample(x0, t, self.schedule, noise)
        return self.weighted_loss(self(x_t, t, condition, **image_inputs), x0, noise, t)

    def weighted_loss(self, prediction: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The stage's weighted denoising loss (B,) of the network's `prediction` at times t."""
        return diffusion_loss(
            prediction, x0, noise, t, self.schedule, self.target, self.loss_weighting, self.min_snr_gamma,
            self.sigmoid_bias,
        )

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x0 = batch["image"]
        batch_size = x0.shape[0]
        condition = self.condition_from_batch(batch)
        if not condition.is_empty:
            condition = condition.with_null(cfg_dropout_mask(batch_size, self.p_uncond, x0.device))
        image_inputs = self.image_inputs(batch, generator=None)
        t = torch.rand(batch_size, device=x0.device)
        noise = torch.randn_like(x0)
        if self.layout_loss_weight > 0:
            # one pass of the text path for both the denoiser and the layout image (`UNet.layout_prediction`);
            # with K layout choices the denoiser is fed the one nearest this image's layout
            x_t = q_sample(x0, t, self.schedule, noise)
            target = F.adaptive_avg_pool2d(x0.float(), self.unet.config.text_layout_resolution)
            prediction, painted = self.unet(x_t, self.noise_cond_input(t), **condition.unet_kwargs(), **image_inputs,
                                            return_layout=True, layout_target=target, **self._layout_shared(t, condition))
            loss = self.weighted_loss(prediction, x0, noise, t).mean()
            layout_fit = layout_loss(painted, target)
            self.log("train/layout_loss", layout_fit, batch_size=batch_size)
            loss = loss + self.layout_loss_weight * layout_fit
        else:
            loss = self.per_sample_loss(x0, t, noise, condition, image_inputs).mean()
        # Not prog_bar=True: Lightning reads every progress-bar value to the host after every
        # batch (a sync per step); StepProgressBar shows this value on the logging steps.
        self.log("train/loss", loss, batch_size=batch_size)
        if "skipped" in batch and (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            # each rank's cumulative counts, summed over ranks; synced only on the steps the loggers record
            counts = {f"data/{key}": batch[key].max().float() for key in ("skipped", "shard_errors") if key in batch}
            self.log_dict(counts, reduce_fx="sum", sync_dist=True, batch_size=batch_size)
        return loss

    @property
    def nonfinite_steps_total(self) -> int:
        """Optimiser steps skipped for a NaN/inf loss or gradient so far (reads the device)."""
        return int(self._nonfinite[0])

    @property
    def nonfinite_steps_in_a_row(self) -> int:
        """Skipped steps since the last good one (reads the device)."""
        return int(self._nonfinite[1])

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip the update when the loss or a gradient is NaN/inf, without a host sync.

        Gradients are already all-reduced here, so under DDP every rank sees the same norm and
        takes the same decision; under FSDP2 (`FSDP2Strategy`) each rank holds a shard of the
        reduced gradients, and the norm of the DTensors is that of all shards together. The decision stays on the device: the fused AdamW kernel reads
        `found_inf` (the hook torch's GradScaler uses) and leaves every parameter, moment and
        its step count untouched when it is 1; the LR schedule still advances.
        """
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return
        grad_norm = torch.nn.utils.get_total_norm(grads)
        if isinstance(grad_norm, DTensor):  # FSDP2: the norm of all ranks' shards, replicated
            grad_norm = grad_norm.full_tensor()
        skipped = (~torch.isfinite(grad_norm)).long()
        optimizer.found_inf = skipped.float()
        total, in_a_row, longest = self._nonfinite.to(grad_norm.device).unbind()
        in_a_row = (in_a_row + 1) * skipped
        self._nonfinite = torch.stack([total + skipped, in_a_row, torch.maximum(longest, in_a_row)])
        self.log("train/grad_norm", grad_norm)
        self.log("train/nonfinite_steps", self._nonfinite[0].float())

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip as Lightning does (`trainer.gradient_clip_val`, by norm unless
        `gradient_clip_algorithm: value`), also under `precision: bf16-mixed`: there Lightning's
        `MixedPrecision.clip_gradients` refuses any optimiser that unscales gradients itself (the
        fused AdamW: "does not allow for gradient clipping because it performs unscaling of
        gradients internally"), though bf16 autocast has no loss scaler and nothing to unscale.
        With DTensor gradients (FSDP2) `clip_grad_norm_` takes the norm over all ranks' shards."""
        plugin = self.trainer.precision_plugin
        if not gradient_clip_val or getattr(plugin, "scaler", True) is not None:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        algorithm = GradClipAlgorithmType(gradient_clip_algorithm or GradClipAlgorithmType.NORM)
        Precision.clip_gradients(plugin, optimizer, gradient_clip_val, algorithm)

    def configure_model(self) -> None:
        """Under `cascade.stages.FSDP2Strategy`, shard the UNet (one FSDP2 unit per `UNetBlock`);
        under any other strategy nothing. Lightning calls it before the strategy wraps the
        module, possibly more than once (the sharding is done once)."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        if isinstance(strategy, FSDP2Strategy):
            strategy.shard(self)

    def on_fit_start(self) -> None:
        """Fit the layout path before the first step (`layout_pretraining`); not on a resume."""
        if self.layout_pretraining.steps and self.trainer.global_step == 0:
            if isinstance(self.trainer.strategy, FSDP2Strategy):
                raise StageConfigError([("layout_pretraining.steps", "is not supported under FSDP2Strategy")])
            if self.trainer.datamodule is None:
                raise StageConfigError([("layout_pretraining.steps", "needs a datamodule (its train_dataloader)")])
            started = time.perf_counter()
            loss = self.pretrain_layout(self.trainer.datamodule.train_dataloader())
            rank_zero_info(f"layout pre-training: {self.layout_pretraining.steps} steps of {self.layout_pretraining.batch_size}, "
                           f"last layout loss {loss:.4f}, {time.perf_counter() - started:.0f} s")

    def pretrain_layout(self, batches: Iterable[dict]) -> float:
        """Fit `unet.text_conditioning`, `unet.text_layout` and `unet.layout_head` alone by Adam on the
        layout loss over the first `layout_pretraining.images` images of `batches`; returns the last
        step's loss. The rest of the UNet is untouched; gradients are cleared afterwards."""
        config = self.layout_pretraining
        resolution = self.unet.config.text_layout_resolution
        tokens, masks, targets = [], [], []
        with torch.no_grad():
            for batch in batches:
                condition = self.condition_from_batch(batch)
                mask = condition.text_mask if condition.text_mask is not None \
                    else torch.ones(condition.text_tokens.shape[:2], dtype=torch.bool, device=condition.text_tokens.device)
                length = max(1, int(mask.sum(dim=1).max()))  # real tokens are a prefix; the padding is dropped
                tokens.append(condition.text_tokens[:, :length].to("cpu", torch.float16))
                masks.append(mask[:, :length].cpu())
                targets.append(F.adaptive_avg_pool2d(batch["image"].float(), resolution).cpu())
                if sum(len(t) for t in targets) >= config.images:
                    break
        if not targets:
            raise ValueError("layout_pretraining: the training data loader gave no batch")
        longest = max(t.shape[1] for t in tokens)
        tokens_all = torch.cat([F.pad(t, (0, 0, 0, longest - t.shape[1])) for t in tokens])[: config.images]
        masks_all = torch.cat([F.pad(m, (0, longest - m.shape[1])) for m in masks])[: config.images]
        targets_all = torch.cat(targets)[: config.images]
        parameters = [p for module in (self.unet.text_conditioning, self.unet.text_layout, self.unet.layout_head,
                                       self.unet.layout_choice) if module is not None for p in module.parameters()]
        optimizer = torch.optim.Adam(parameters, lr=config.lr)
        generator = torch.Generator().manual_seed(torch.initial_seed() if config.seed is None else config.seed)
        loss = torch.zeros(())
        for _ in range(config.steps):
            rows = torch.randint(0, len(targets_all), (config.batch_size,), generator=generator)
            target = targets_all[rows].to(self.device)
            noisy = {}
            if self.unet.config.text_layout_reads_x_t:
                # x_t averaged to r x r, drawn as such: alpha_t x0 + sigma_t eps averaged over the f x f
                # pixels of a cell is alpha_t avg(x0) + (sigma_t / f) eps' with eps' ~ N(0, 1) (iid eps)
                t = torch.rand(config.batch_size, generator=generator).to(self.device)
                eps = torch.randn(target.shape, generator=generator).to(self.device) / (self.image_size / resolution)
                noisy = {"x_t": q_sample(target, t, self.schedule, eps), "noise_cond": self.noise_cond_input(t)}
            prediction = self.unet.layout_prediction(tokens_all[rows].to(self.device, torch.float32),
                                                     masks_all[rows].to(self.device), **noisy)
            loss = layout_loss(prediction, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for parameter in parameters:
                torch.distributed.broadcast(parameter.data, src=0)
        return float(loss.detach())

    def on_train_start(self) -> None:
        # A resumed optimiser takes its settings from the checkpoint; one written before the
        # optimiser was fused would turn fusing (and with it `found_inf`) off.
        for optimizer in self.trainer.optimizers:
            for group in optimizer.param_groups:
                group.update(fused=True, foreach=None)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.global_step % self.trainer.log_every_n_steps:
            return
        longest = int(self._nonfinite[2])
        self._nonfinite[2] = self._nonfinite[1]
        if longest < self.max_consecutive_nonfinite:
            return
        path = Path(self._checkpoint_dir()) / "nonfinite-stop.ckpt"
        self.trainer.save_checkpoint(path)
        raise NonFiniteLossError(
            f"{self.nonfinite_steps_in_a_row} consecutive optimiser steps had a NaN/inf loss or gradient "
            f"(step {self.global_step}, {self.nonfinite_steps_total} in total); stopped training. "
            f"The last good weights are saved in {path}. Lower the learning rate, check the data, "
            f"or raise model.init_args.max_consecutive_nonfinite."
        )

    def _checkpoint_dir(self) -> str:
        callback = self.trainer.checkpoint_callback
        if callback is not None and getattr(callback, "dirpath", None):
            return callback.dirpath
        return self.trainer.default_root_dir

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["cascade_stage"] = self.stage_config()
        total, in_a_row, _ = self._nonfinite.tolist()
        checkpoint["cascade_nonfinite"] = {"total": total, "in_a_row": in_a_row}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        counts = checkpoint.get("cascade_nonfinite", {})
        in_a_row = int(counts.get("in_a_row", 0))
        self._nonfinite = torch.tensor([int(counts.get("total", 0)), in_a_row, in_a_row])

    def configure_optimizers(self):
        config = self.optimizer_config
        total_steps = config.total_steps
        if total_steps is None and self.trainer.max_steps > 0:
            total_steps = self.trainer.max_steps
        if config.algorithm == "muon" and isinstance(self.trainer.strategy, FSDP2Strategy):
            # (`cascade fit` refuses this before training; a Trainer built in Python gets here)
            raise StageConfigError([("optimizer.algorithm", MUON_UNDER_FSDP)])
        # Fused AdamW (CPU and CUDA) for all or, under Muon, the first and last layers: `found_inf`
        # skips a step on the device.
        optimizer = build_optimizer(self.unet, config)
        scheduler = build_lr_scheduler(optimizer, config, total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """The loss of every image at one t in each of `num_t_buckets` equal slices of [0, 1].

        t, the noise (and the SR augmentation) come from a CPU generator seeded by
        (validation.seed, batch index, bucket), so runs on the same data are comparable.
        """
        x0 = batch["image"]
        batch_size = x0.shape[0]
        condition = self.condition_from_batch(batch)
        buckets = self.validation_config.num_t_buckets
        losses = []
        for bucket in range(buckets):
            generator = torch.Generator().manual_seed(
                self.validation_config.seed * 1_000_003 + batch_idx * buckets + bucket
            )
            t = (bucket + torch.rand(batch_size, generator=generator)) / buckets
            noise = torch.randn(x0.shape, generator=generator)
            image_inputs = self.image_inputs(batch, generator=generator)
            loss = self.per_sample_loss(
                x0, t.to(x0.device), noise.to(x0.device, x0.dtype), condition, image_inputs
            ).mean()
            losses.append(loss)
            low, high = bucket / buckets, (bucket + 1) / buckets
            self.log(f"val/loss_t{low:.1f}-{high:.1f}", loss, sync_dist=True, batch_size=batch_size)
        self.log("val/loss", torch.stack(losses).mean(), prog_bar=True, sync_dist=True, batch_size=batch_size)

    # ------------------------------------------------------------------ sampling
    def guide_mismatch(self, guide: DiffusionStage) -> str | None:
        """What keeps `guide` from guiding this stage (autoguidance needs a model of the same
        stage: it sees the same x_t, condition and low-res input), or None when it can. Compared:
        the stage kind, image size, conditioning, text encoder, class count, schedule and noise
        input (the guide is called at the same t with the same inputs) and, for super-resolution
        stages, the low-res size and upsampling. The network size and the target may differ."""
        def described(stage: DiffusionStage) -> dict[str, Any]:
            text = stage.text_encoder.config if stage.text_encoder is not None else None
            return {
                "stage kind": type(stage).__name__,
                "image_size": stage.image_size,
                "lowres_size": getattr(stage, "lowres_size", None),
                "upsample": getattr(stage, "upsample", None),
                "conditioning": stage.conditioning,
                "text_encoder": text,
                "unet.num_classes": stage.unet.config.num_classes if stage.conditioning == "class" else None,
                "schedule": (stage.schedule.name, stage.schedule.params),
                "noise_cond": stage.noise_cond,
            }

        mine, theirs = described(self), described(guide)
        differences = [f"{key} {theirs[key]!r} (this stage: {mine[key]!r})" for key in mine if mine[key] != theirs[key]]
        return None if not differences else "the guide differs from the stage it guides in " + ", ".join(differences)

    def check_guide(self, guide: DiffusionStage) -> None:
        """StageConfigError naming `sampling.guide` unless `guide` can guide this stage (`guide_mismatch`)."""
        mismatch = self.guide_mismatch(guide)
        if mismatch is not None:
            raise StageConfigError([("sampling.guide", mismatch)])

    def make_denoiser(
        self,
        condition: Condition,
        guidance: float = 1.0,
        lowres: torch.Tensor | None = None,
        aug_level: float | None = None,
        dynamic_threshold: float | None = None,
        generator: Generators = None,
        guidance_interval: tuple[float, float] | None = None,
        guide: DiffusionStage | None = None,
        negative: Condition | None = None,
    ) -> Denoiser:
        """One guided denoising function `denoise(x_t, t) -> x0_hat` for the samplers.

        Classifier-free guidance (Ho & Salimans 2022): x0 = uncond + scale (cond - uncond), with
        the conditional and the null rows in ONE forward pass of 2B rows; scale 1 runs only the
        conditional rows, scale 0 only the null rows. With a `guide` (autoguidance, Karras et al.
        2024, eq. 2: a weaker model of the same stage, `check_guide`), the guide's conditional
        prediction takes the place of the unconditional one: x0 = guide + scale (main - guide),
        one pass of each network (scale 0: the guide only); SR guides receive the same noised
        low-res input. `guidance_interval` [lambda_lo, lambda_hi] (log-SNR, Kynkaenniemi et al.
        2024; `SamplingSettings.guidance_interval`) guides only the rows whose lambda(t) lies in
        it; a step with none inside is the plain conditional prediction, one pass of B rows.
        A `negative` condition (negative prompts; B rows, its `null` marking rows without one)
        takes the unconditional prediction's place row by row: x0 = neg + scale (cond - neg), the
        same one pass of 2B rows (`Condition.with_negative_rows`); it cannot be combined with a
        `guide`, which takes that place too.
        x0_hat is then clipped to [-1, 1] (static thresholding) or, with a `dynamic_threshold`
        percentile, dynamically thresholded (Saharia et al. 2022, sec. 2.3). SR stages take
        `lowres` (B,3,h,w) at its own size and the augmentation level `aug_level` in [0, 1] it is
        noised to (Ho et al. 2022, CDM; None = the stage's `sampling.aug_level`), with noise from
        `generator` (one, or one per row). The returned function uses the stage's current weights
        (the EMA weights when the stage was loaded from a checkpoint or an export) and runs
        without gradients. A stage of several layout choices draws each row's (`with_layout_choices`).
        """
        condition = self.with_layout_choices(condition, generator)
        if guide is not None:
            self.check_guide(guide)
            if negative is not None:
                raise ValueError("a negative condition and an autoguidance guide both take the unconditional "
                                 "prediction's place: give one of them")
        image_inputs = self.sampling_inputs(lowres, aug_level, generator)
        guided = guidance != 1.0 and (guide is not None or not condition.is_empty)
        if guided and guide is None:
            # what takes the unconditional prediction's place: the null condition, or each row's negative
            uncond = negative if negative is not None else \
                condition.with_null(torch.ones(condition.batch_size, dtype=torch.bool, device=self.device))
            if guidance != 0.0:
                doubled_condition = condition.with_negative_rows(uncond)
                doubled_inputs = {name: torch.cat([value, value]) for name, value in image_inputs.items()}

        def conditional_x0(model: DiffusionStage, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            out = model(x_t, t, condition, **image_inputs)
            return predicted_x0(out.float(), x_t.float(), t, model.schedule, model.target)

        def guided_x0(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if guide is not None:
                guide_x0 = conditional_x0(guide, x_t, t)
                return guide_x0 if guidance == 0.0 else cfg_combine(conditional_x0(self, x_t, t), guide_x0, guidance)
            if guidance == 0.0:
                out = self(x_t, t, uncond, **image_inputs)
                return predicted_x0(out.float(), x_t.float(), t, self.schedule, self.target)
            x_in, t_in = torch.cat([x_t, x_t]), torch.cat([t, t])
            out = self(x_in, t_in, doubled_condition, **doubled_inputs)
            cond_x0, uncond_x0 = predicted_x0(out.float(), x_in.float(), t_in, self.schedule, self.target).chunk(2)
            return cfg_combine(cond_x0, uncond_x0, guidance)

        @torch.no_grad()
        def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if not guided:
                x0 = conditional_x0(self, x_t, t)
            elif guidance_interval is None:
                x0 = guided_x0(x_t, t)
            else:
                inside = in_guidance_interval(self.schedule.log_snr_unchecked(t), guidance_interval)
                if bool(inside.all()):
                    x0 = guided_x0(x_t, t)
                elif not bool(inside.any()):
                    x0 = conditional_x0(self, x_t, t)
                else:
                    x0 = torch.where(inside[:, None, None, None], guided_x0(x_t, t), conditional_x0(self, x_t, t))
            if dynamic_threshold is not None:
                return apply_dynamic_threshold(x0, dynamic_threshold)
            return static_threshold(x0)

        return denoise

    @torch.no_grad()
    def with_layout_choices(self, condition: Condition, generator: Generators = None) -> Condition:
        """`condition` with each row's layout choice drawn from the choice classifier's probabilities
        (`UNetConfig.text_layout_choices` > 1): a caption takes each of its layouts as often as the
        training images did. A row's draw comes from a generator seeded by its own generator's seed
        (one, or one per row; None: torch's global one), so the starting noise and every other draw
        are what they were. Unchanged for a condition without text or with its choices, and for a
        stage of one layout."""
        if self.unet.layout_choice is None or condition.text_tokens is None or condition.layout_choice is not None:
            return condition
        logits = self.unet.layout_prediction(condition.text_tokens, condition.text_mask, condition.null).logits
        probabilities = logits.float().softmax(dim=-1).cpu()

        def own(seeded: torch.Generator | None) -> torch.Generator | None:
            return None if seeded is None else torch.Generator().manual_seed(seeded.initial_seed() ^ _LAYOUT_CHOICE_SEED)

        if isinstance(generator, (list, tuple)):
            if len(generator) != len(probabilities):
                raise ValueError(f"got {len(generator)} generators for {len(probabilities)} rows")
            choices = torch.cat([torch.multinomial(row[None], 1, generator=own(seeded))[:, 0]
                                 for row, seeded in zip(probabilities, generator)])
        else:
            choices = torch.multinomial(probabilities, 1, generator=own(generator))[:, 0]
        return dataclasses.replace(condition, layout_choice=choices.to(condition.text_tokens.device))

    def sampling_start(
        self,
        shape: tuple[int, ...],
        lowres: torch.Tensor | None,
        settings: SamplingSettings,
        x_T: torch.Tensor | None,
        generator: Generators,
    ) -> tuple[float, torch.Tensor | None]:
        """Where the reverse process starts: (t_start, x_{t_start}); a base stage starts from pure
        noise at t = 1 (x_T, or None to let the sampler draw it). SR stages may start later."""
        return 1.0, x_T

    def output_shape(self, batch_size: int, lowres: torch.Tensor | None) -> tuple[int, int, int, int]:
        """(B, C, H, W) of generated images: `image_size` square (SR stages: lowres size x factor)."""
        return (batch_size, self.unet.config.out_channels, self.image_size, self.image_size)

    @torch.no_grad()
    def generate(
        self,
        condition: Condition | None = None,
        num_samples: int | None = None,
        lowres: torch.Tensor | None = None,
        settings: SamplingSettings | None = None,
        generator: Generators = None,
        x_T: torch.Tensor | None = None,
        progress: bool = False,
        guide: DiffusionStage | None = None,
        negative: Condition | None = None,
    ) -> torch.Tensor:
        """Sample images (clamped to [-1, 1]) with the stage's current weights (see `make_denoiser`).

        The batch size comes from `condition` (or `lowres`, or `num_samples` for an unconditional
        base). `settings` (None: the stage's own `sampling`) are used as given: a None
        dynamic_threshold means static clipping. `generator` (on this stage's device; or a list
        of one generator per row, so each image depends only on its own seed) seeds the starting
        noise, any sampler noise and the SR augmentation noise. `progress` shows a progress bar
        of the sampler's steps (tqdm, cleared when done). `guide`: the loaded model that
        `settings.guide` names (autoguidance; a `Cascade` loads it), required when that is set.
        `negative`: each row's negative condition in place of the unconditional one (`make_denoiser`).
        """
        condition = condition if condition is not None else Condition()
        settings = self.sampling if settings is None else settings
        if settings.guide is not None and guide is None:
            message = (f"is {settings.guide!r}: pass the loaded guide (generate(..., guide=load_stage(path))) "
                       "or sample through a Cascade")
            raise StageConfigError([("sampling.guide", message)])
        batch_size = condition.batch_size or (lowres.shape[0] if lowres is not None else num_samples)
        if batch_size is None:
            raise ValueError("generate needs a condition, a lowres batch or num_samples")
        denoise = self.make_denoiser(
            condition.to(self.device),
            guidance=settings.guidance,
            lowres=None if lowres is None else lowres.to(self.device),
            aug_level=settings.aug_level,
            dynamic_threshold=settings.dynamic_threshold,
            generator=generator,
            guidance_interval=settings.guidance_interval,
            guide=guide,
            negative=None if negative is None else negative.to(self.device),
        )
        shape = self.output_shape(batch_size, lowres)
        t_start, x_T = self.sampling_start(shape, lowres, settings, x_T, generator)
        was_training = [(module, module.training) for module in (self, guide) if module is not None]
        for module, _ in was_training:
            module.eval()
        try:
            with tqdm(total=settings.steps, desc=f"sampling ({settings.sampler})", leave=False,
                      disable=not progress) as bar:
                images = sample(
                    denoise,
                    self.schedule,
                    shape,
                    sampler=settings.sampler,
                    steps=settings.steps,
                    generator=generator,
                    x_T=x_T,
                    grid=settings.time_grid,
                    callback=lambda done, total: bar.update(1),
                    device=self.device,
                    t_start=t_start,
                )
        finally:
            for module, training in was_training:
                module.train(training)
        return images.clamp(-1.0, 1.0)
