"""`cascade ablation`: the recipe of the demo's base stage, one change at a time, with error bars.

Each row is one recipe; every row is scored on the same held-out captions (distinct captions,
stratified by object count and relation: `cascade.eval.heldout`) with the dataset's detector and
with FID / precision / recall in the offline feature space, for every training seed. The table
gives the mean over training seeds and its standard error; a row differs from the reference row
(the baseline, or the row `--reference` names) when the mean of the paired (same seed)
differences is more than two standard errors from zero.

Rows that change only how the base samples (time grid, sampler, guidance weight and interval,
autoguidance, post-hoc EMA) reuse the trained networks of the recipe they change. Every training
has the same compute on the same data and seeds: the same steps at the same batch, or, for a
training at another batch (`TRAINING_BATCH`), the same images in proportionally more steps, or,
for a network whose step costs more (`TRAINING_STEP_COST`, measured), proportionally fewer steps.
Sampling cost is matched in network evaluations per image (NFE); the guidance interval saves
evaluations, and the table says how many.

The base is scored at its own resolution (32 px; the detector scores real 32-px renders of these
captions 0.97 exact, see the table's "real renders" row), which isolates what the recipe changes;
the demo scores the whole cascade at 128 px.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from ..data.image_io import open_image
from ..data.synthetic import rebound_caption
from ..data.transforms import to_tensor
from ..diffusion import DEFAULT_GRIDS, in_guidance_interval, q_sample, sample, x0_from_prediction
from ..eval.alignment import placement, score
from ..eval.evaluate import evaluate_samples
from ..eval.extractors import build_extractor
from ..eval.features import reference_statistics
from ..eval.heldout import (
    BALANCED,
    ScoredImage,
    images_per_caption,
    score_folder,
    stratified_alignment,
    stratum_of,
)
from ..files.atomic import write_text
from ..files.sample_folder import merge_metadata
from ..pipeline import Cascade
from ..pipeline.to_folder import FolderJob, sample_folder
from ..stages.config import SamplingSettings
from ..stages.posthoc_ema import SNAPSHOT_DIR, reconstruct
from . import CONFIG_DIR, DemoPlan, heldout_scenes, write_datasets
from .evaluation import FEATURE_INPUT_SIZE, first_images
from .training import StageRun, train_concurrently

CHECKS = ("colour", "shape", "count", "relation", "exact")


@dataclass(frozen=True)
class Row:
    """One recipe: which trained runs (`training`), which weights (`weights`: "ema" is the
    checkpoint's EMA; "phema:0.1" a post-hoc EMA of sigma_rel 0.1), how the base samples, and
    an optional guide ("phema:0.05@0.25": the post-hoc EMA of sigma_rel 0.05 at a quarter of
    training, a weaker version of the same network), and whether each caption is guided away from
    its `rebound_caption` (a negative prompt) instead of the unconditional prediction. `key` names
    the row's sample folder (`samples/<key>/seed<N>`), so adding or reordering rows resumes the others."""

    name: str
    key: str
    training: str = "min_snr"
    weights: str = "ema"
    sampling: dict[str, Any] = field(default_factory=dict)
    guide: str | None = None
    rebound_negatives: bool = False


@dataclass(frozen=True)
class AblationPlan:
    seeds: tuple[int, ...] = (0, 1, 2)
    train_steps: int = 800
    train_images: int = 6000
    captions: int = 256
    samples_per_caption: int = 1
    # every stratum, a fifth of the balanced score, rests on at least this many images: the small
    # strata (1, 4 and 2 held-out captions) draw more seeds of their captions (`images_per_caption`)
    images_per_stratum: int = 16
    batch_size: int = 16
    snapshots: int = 8  # post-hoc EMA snapshots per run (train_steps must be a multiple)
    # the layout pre-training's steps of the rows that have one (None: each row's own; a smoke test's few,
    # over its train_images)
    layout_pretraining_steps: int | None = None
    sample_batch: int = 64
    # where the trainings and the sampling run: "cpu", or "gpu" (each `cascade fit` on one CUDA device,
    # `lanes` of them at once; sampling and the word-order rates on that device too)
    accelerator: str = "cpu"
    lanes: int = 2
    loader_workers: int | None = None  # DataLoader workers per training (None: the config's)

    @property
    def device(self) -> str:
        """The torch device the sampling runs on."""
        return "cuda" if self.accelerator == "gpu" else "cpu"

    @property
    def dataset_plan(self) -> DemoPlan:
        return DemoPlan(train_images=self.train_images, val_images=128, heldout_captions=self.captions,
                        samples_per_caption=self.samples_per_caption, sweep_captions=1)


FAST_ABLATION = AblationPlan(seeds=(0, 1), train_steps=16, train_images=128, captions=10, images_per_stratum=2,
                             snapshots=4, sample_batch=16, layout_pretraining_steps=4)

# The trainings: the baseline (the demo base's recipe before this ablation: min-SNR-5 weighting at a
# peak learning rate of 1e-3, set here in full, so the rows stay what they were whatever the demo's
# config now says) and each change to it. The sigmoid weighting w(lambda) = sigmoid(b - lambda) at
# three biases: SiD2's b = -3, and b = 0 and 2, which keep the weight flat up to higher log-SNR (the
# levels where a 32-px shape's edges are decided). The baseline at twice its peak learning rate: the
# demo's base underfits its own training captions (they score like held-out ones, docs/benchmarks.md),
# so a faster optimiser is a candidate too. Later flags override earlier ones.
BASELINE_TRAINING: tuple[str, ...] = ("--model.init_args.loss_weighting", "min_snr",
                                      "--model.init_args.min_snr_gamma", "5.0",
                                      "--model.init_args.optimizer.lr", "1.0e-3",
                                      # no layout path (the demo's base has one since the ninth session)
                                      "--model.init_args.unet.text_layout_resolution", "0",
                                      "--model.init_args.unet.text_layout_head", "false",
                                      "--model.init_args.layout_loss_weight", "0",
                                      "--model.init_args.layout_pretraining.steps", "0")
_SIGMOID = ("--model.init_args.loss_weighting", "sigmoid")
_SIGMOID_B0 = (*_SIGMOID, "--model.init_args.sigmoid_bias", "0")
_LR_2E3 = ("--model.init_args.optimizer.lr", "2.0e-3")
_COORD = ("--model.init_args.unet.coordinate_channels", "true")
# Trainings of the demo's recipe given a multiple of every other row's compute on purpose (their
# rows say so): how far training longer moves each score, the yardstick for the same-compute rows.
_YARDSTICKS: dict[str, int] = {f"sigmoid_b0+lr2e-3+steps{factor}x": factor for factor in (2, 4)}
# Changes to the 2x yardstick, read against it (training `sigmoid_b0+lr2e-3+<change>+steps2x`):
# (what the row's name says, the flags). From 2x the steps the base puts the two objects of "A left
# of B" on the right axis but picks which one goes first at chance, at every length up to 8x
# (docs/benchmarks.md). Each change is a hypothesis for that:
# - coord: the axis is a relative layout, which convolutions learn anywhere; which side holds the
#   subject is an absolute place, which they see only through the zero padding (No: side 0.41);
# - layer3: MiniLM's layer 3 instead of its last (6): which side an object's token belongs on is
#   linear in both, but more salient in layer 3 (a strongly regularised probe: 0.72 vs 0.57-0.64)
#   (side unchanged, 0.43; axis lost, 0.61; colour +0.08);
# - positions: a learned embedding of each text token's index in the attention context
#   (`unet.text_positions`): "first" and "second" become plain directions of the context, and the
#   relation word reaches every pixel through the pooled text, so a query can pick the first or the
#   second object by the relation (No: side 0.47);
# - refiner: the index embedding and two trainable transformer layers over the context
#   (`unet.text_refiner_layers`, HunyuanVideo's token refiner): a colour token can read its index and
#   the relation word and become "the object on the left" before a pixel looks for it, so a pixel's
#   query needs only its own place, not the relation too;
# - coord+refiner: the refiner's roles for the keys and the coordinates for the queries together
#   (each alone leaves one of the two to the network: where a pixel is, which token is its object);
# - coord+refiner+pooled: and the refined tokens' mean in the conditioning vector
#   (`unet.text_refiner_pooled`), which every residual block reads: "blue goes left" as a global
#   feature, which a block can multiply by the x coordinate without any attention;
# - vmse: the plain v-MSE instead of the sigmoid weighting. Which object goes where is decided at
#   the highest noise levels (t >= 0.9: the objects' colours are still readable in x_t at t = 0.8),
#   where sigmoid(b - lambda) on eps weighs an x0 error by sigmoid(lambda - b) e^b (-d lambda/dt):
#   about a tenth of its weight at lambda = 0, against about half of it under the plain v-MSE
#   (x0 weight 1 + SNR).
# - layout8+loss: a text layout map at 8 px trained to paint the image at 8 px (see `_DEMO_CHANGES`).
_REFINER = ("--model.init_args.unet.text_positions", "32", "--model.init_args.unet.text_refiner_layers", "2")
_LAYOUT8_LOSS = ("a text layout map at 8 px trained to paint the image at 8 px",
                 ("--model.init_args.unet.text_layout_resolution", "8", "--model.init_args.unet.text_layout_head", "true",
                  "--model.init_args.layout_loss_weight", "1.0"))
_YARDSTICK_CHANGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "coord": ("coordinate channels", _COORD),
    "layer3": ("text from MiniLM's layer 3 of 6", ("--model.init_args.text_encoder.layer", "3")),
    "positions": ("learned text-token index embedding", ("--model.init_args.unet.text_positions", "32")),
    "refiner": ("text-token index embedding and a 2-layer token refiner", _REFINER),
    "coord+refiner": ("coordinate channels, text-token index embedding and a 2-layer token refiner", (*_COORD, *_REFINER)),
    "coord+refiner+pooled": ("coordinate channels, text-token index embedding, a 2-layer token refiner, refined pooled text",
                             (*_COORD, *_REFINER, "--model.init_args.unet.text_refiner_pooled", "true")),
    "vmse": ("the plain v-MSE instead of the sigmoid weighting", ("--model.init_args.loss_weighting", "uniform")),
    "layout8+loss": _LAYOUT8_LOSS,
}
# Changes to the demo's recipe at its own budget, read against it (`--reference sigmoid_b0+lr2e-3`):
# - layout8 / layout16: a map of what the caption puts where, from learned per-cell queries that attend
#   to the text before any pixel is seen, added where the UNet's features reach 8 / 16 px
#   (`unet.text_layout_resolution`, `cascade.nn.text_conditioning.TextLayout`). The UNet's own
#   cross-attention queries come from x_t, noise where the layout is decided; a regressor of this form
#   (per-cell queries, one cross-attention layer over MiniLM's tokens, MSE to the 8-px render) puts
#   the subject of a relation on its side on 1.00 of held-out captions after 2,000 steps of batch 64.
# - layout8+loss: the 8-px map with a head that paints it, trained towards the image averaged to
#   8 px (`layout_loss_weight`): the denoising loss alone leaves the map blind to the side (layout8:
#   side 0.43, word order 0.51, one seed), the regressor above learns it from that target alone.
_DEMO_CHANGES: dict[str, tuple[str, tuple[str, ...]]] = {
    **{f"layout{r}": (f"a text layout map at {r} px", ("--model.init_args.unet.text_layout_resolution", str(r)))
       for r in (8, 16)},
    "layout8+loss": _LAYOUT8_LOSS,
    # - layout8+loss+pre: and the layout path fitted alone before the first step (`layout_pretraining`:
    #   2,000 steps of 64 captions over the first 5,000 training images, the probe's budget); inside the
    #   denoiser's training at batch 16 it does not learn the side within 2,240 steps (layout8+loss+steps2x)
    "layout8+loss+pre": ("a text layout map at 8 px trained to paint the image at 8 px, fitted alone first",
                         (*_LAYOUT8_LOSS[1], "--model.init_args.layout_pretraining.steps", "2000")),
    # - layout8+loss+pre3k: the same, fitted for 3,000 steps: at 2,000 one seed of three had not turned
    #   (its layout loss 0.056 against 0.041 / 0.044; side 0.46, the others 0.99)
    "layout8+loss+pre3k": ("a text layout map at 8 px trained to paint the image at 8 px, fitted alone first for 3,000 steps",
                           (*_LAYOUT8_LOSS[1], "--model.init_args.layout_pretraining.steps", "3000")),
}
# Changes to the demo's recipe as it is since the ninth session (the layout path fitted first), read
# against it (`--reference sigmoid_b0+lr2e-3+layout8+loss+pre3k`):
# - xattn32: cross-attention to the text at 32 px too, where the base draws a shape's corners (it reads
#   which shape goes with which colour only weakly: binding 0.64-0.69 at mid noise levels against word
#   order 0.94), with 16-channel heads (a 16-channel level has no 32-channel head; 16-channel heads
#   alone changed nothing at 1,200 steps). Refuted at 3 seeds: nothing beyond two standard errors (shape
#   -0.04 +- 0.03, binding +0.01 +- 0.01; docs/benchmarks.md, "Which shape goes with which colour")
# - qknorm: each head's queries and keys RMS-normalised (`unet.qk_norm`): a pixel of the purple object
#   must pick the shape token bound to "purple" by the direction of its key; without the norm a key's
#   length (a frequent word's, say) weighs as much, and at lr 2e-3 the logits can grow faster than the
#   directions sort out. Refuted at 3 seeds: shape -0.04 +- 0.02*, exact -0.03 +- 0.02, binding rate
#   +0.02 +- 0.01* (docs/benchmarks.md, "QK-norm for binding?")
# - muon: Muon for the weights of the hidden layers (`optimizer.algorithm: muon`, AdamW's lr and update
#   RMS; AdamW for the first and last layers and the rest): compute is the one lever that moved shape
#   (2x / 4x / 8x the steps: 0.53 / 0.64 / 0.72), and an orthogonalised update trains a network in
#   fewer steps elsewhere (Jordan et al. 2024; Liu et al. 2025); is that compute here? At 3 seeds: count
#   +0.08 +- 0.02*, relation 0.11 -> 0.16, word order +0.04*, binding +0.03*, shape +0.03 +- 0.04, FID +0.6 +- 0.4
#   (docs/benchmarks.md, "Muon")
# - muon+lr4e-3: and twice the peak learning rate (an orthogonalised step's size does not grow with the
#   gradient's, so Muon is usually run hotter than AdamW). At 3 seeds: shape +0.10 +- 0.03*, count +0.06 +- 0.01*,
#   relation +0.08 +- 0.02*, exact +0.07 +- 0.02*, FID +0.0 +- 0.7: the demo's base since
# - muon+lr8e-3: is the optimum higher still? No: count +0.04 +- 0.01*, the rest inside two standard errors,
#   and one seed of three loses colour, side, word order and binding (0.86 / 0.83 / 0.84 / 0.66)
_LAYOUT_RECIPE_CHANGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "xattn32": ("cross-attention at 32 px too (16-channel heads)",
                ("--model.init_args.unet.cross_attention_resolutions", "[32, 16, 8]",
                 "--model.init_args.unet.head_channels", "16")),
    "qknorm": ("QK-norm in every attention block", ("--model.init_args.unet.qk_norm", "true")),
    "muon": ("Muon for the hidden layers' weights", ("--model.init_args.optimizer.algorithm", "muon")),
    **{f"muon+lr{lr}": (f"Muon for the hidden layers' weights, lr {lr}",
                        ("--model.init_args.optimizer.algorithm", "muon", "--model.init_args.optimizer.lr", lr))
       for lr in ("4e-3", "8e-3")},
}
# the demo's base recipe since the fifteenth session (its `configs/demo/base.yaml`)
_MUON_RECIPE = "sigmoid_b0+lr2e-3+layout8+loss+pre3k+muon+lr4e-3"
# The demo's recipe (the layout path fitted first) given 16 and 64 times every other row's compute, at
# batch 256 (the same layout pre-training, then about 24 and 97 times the reference's denoiser images in
# 1.5 and 6 times its steps): how far compute alone moves each score, past the CPU's 2x-8x yardsticks.
# For a GPU (`--accelerator gpu`), where a step of 256 images of this 32-px network costs about what a
# step of 16 does (the step is bound by kernel launches).
_SCALE_YARDSTICKS: dict[str, int] = {f"sigmoid_b0+lr2e-3+layout8+loss+pre3k+b256x{factor}": factor
                                     for factor in (16, 64)}
# The demo's Muon recipe given 1.4 times the compute: its layout pre-training is a fixed cost, so that is
# 1.6 times its denoiser steps, what the demo's base gains from 1,000 to 1,600 steps (the demo runs in
# 10 of its 15 minutes on the 2-core Intel Xeon VM): is the base still compute-bound under Muon?
_MUON_YARDSTICKS: dict[str, float] = {f"{_MUON_RECIPE}+compute1.4x": 1.4}
# ... and with four layout choices (`unet.text_layout_choices`): "two X" / "three X" without a relation
# leave 2 / 4 layouts open, and one layout map fitted by squared error paints their union, which the
# base then draws (count 0.50-0.69 on those captions against 0.97-1.00 where a relation fixes the
# layout; docs/benchmarks.md, "Count fails where the caption leaves the layout open"). Four maps fitted
# by relaxed winner-takes-all, one drawn per seed from the choice classifier: a base that commits to a
# layout? Not at this length (docs/benchmarks.md, "A layout drawn, not averaged"): the denoiser fed the chosen
# map commits (count on "two X" / "three X" +0.11-0.15) but draws the shapes of two-object relation captions
# worse: all channels scaled, count +0.04 +- 0.02*, relation -0.10 +- 0.03*; half of them (the code's), count
# +0.03 +- 0.05, relation -0.06 +- 0.05; FID -0.4* both. The same compute: a step costs the same
# (`cascade bench train` of configs/demo/base.yaml with and without `unet.text_layout_choices: 4`, batch 16,
# 1 thread: 13.015 against 13.011 GFLOPs, 248 against 252 ms), the layout pre-training more
# (`CHOICES4_PRETRAINING_COST`).
_CHOICES = ("--model.init_args.unet.text_layout_choices", "4")
# ... and "+below-2": the chosen map read only below log-SNR -2 (`layout_choice_below`), where the count is
# decided (guidance only above -2.13 gave guidance 1's counts), the one map above it, where the shapes are drawn.
# Refuted at 3 seeds: count -0.01 +- 0.03, relation -0.04 +- 0.05, binding -0.03 +- 0.01* (nothing committed)
# ... and "gates4": four choices that move the one map between cells (`unet.text_layout_choice_form: gates`,
# a gate per cell of mean 1 scaling the cell's whole vector) instead of scaling half its channels in every
# cell: a drawn layout that changes where, not what. The layout pre-training costs what the scales' does or
# less (1,000 steps of 64, 1 thread, alternating: 45.1 / 44.5 s against 47.9 / 45.3 s), charged the same.
# At 3 seeds (docs/benchmarks.md, "Gated layout choices"): count +0.09 +- 0.02*, exact +0.08 +- 0.03*,
# relation -0.05 +- 0.04, colour -0.02 +- 0.01*, side 1.00; every "two X" / "three X" image has its count.
# The demo's base since.
_CHOICE_FLAGS: dict[str, tuple[str, ...]] = {"choices4": _CHOICES,
                                             "choices4+below-2": (*_CHOICES, "--model.init_args.layout_choice_below", "-2.0"),
                                             "gates4": (*_CHOICES, "--model.init_args.unet.text_layout_choice_form", "gates")}
# each training: the one it changes, and its flags on top
_CHOICE_TRAININGS: dict[str, tuple[str, tuple[str, ...]]] = {f"{training}+{key}": (training, flags)
                                                             for training in _MUON_YARDSTICKS
                                                             for key, flags in _CHOICE_FLAGS.items()}
# the layout pre-training's 3,000 steps of 64 with four choices (the reading aside): 73.6 s against 55.0 s
# (`BaseStage.pretrain_layout` on 5,000 rendered training images, 1 thread, one after the other; Intel
# Xeon, avx512_bf16); the 18.6 s more in steps of the demo's base (260 ms at 1 thread, batch 16)
CHOICES4_PRETRAINING_COST = round(18.6 / 0.260)
# The layout map refined by x_t (averaged to 8 x 8) and the noise level (`UNetConfig.text_layout_reads_x_t`):
# fitted by squared error it paints E[layout | caption, x_t], the union of the open layouts only while x_t
# is noise, then the layout the sample has begun. A step costs 1.01x (10 steps of batch 16 with the layout
# loss, forward, backward and AdamW, bare UNet of configs/demo/base.yaml, 6 alternating runs, 1 thread:
# median ratios 1.04 and 0.98 in two runs); the layout pre-training's 1,000 steps of 64 take 50.0 and
# 51.5 s against 41.7 and 44.1 s (1 thread, one after the other; Intel Xeon, avx512_bf16): 7.85 s more,
# 23.5 s for 3,000 steps, charged in steps of the base. Refuted at 3 seeds (docs/benchmarks.md, "A layout map
# that reads x_t"): count -0.03 +- 0.03, exact -0.06 +- 0.06, relation -0.09 +- 0.02*; the map at high noise,
# where the count is decided, is still the union, so nothing commits ("three X": four objects in 8 of 48
# images, from 12; "two X": three in 10, from 7). Its first form, x_t added to the layout queries with no
# loss on the caption's map, lost the caption's side (0.48, chance) and with it relation (0.08).
READS_X_T_STEP_COST = 1.01
READS_X_T_PRETRAINING_COST = round(23.5 / 0.260)
_READS_X_T_TRAININGS: dict[str, str] = {f"{training}+xt": training for training in _MUON_YARDSTICKS}
TRAINING_COMPUTE: dict[str, float] = {**_YARDSTICKS, **_SCALE_YARDSTICKS, **_MUON_YARDSTICKS,
                                       **{choice: _MUON_YARDSTICKS[training] for choice, (training, _) in _CHOICE_TRAININGS.items()},
                                       **{xt: _MUON_YARDSTICKS[training] for xt, training in _READS_X_T_TRAININGS.items()},
                                       **{f"sigmoid_b0+lr2e-3+{change}+steps2x": 2 for change in _YARDSTICK_CHANGES}}
TRAININGS: dict[str, tuple[str, ...]] = {
    "min_snr": BASELINE_TRAINING,
    "sigmoid": (*BASELINE_TRAINING, *_SIGMOID),
    "sigmoid_b0": (*BASELINE_TRAINING, *_SIGMOID_B0),
    "sigmoid_b2": (*BASELINE_TRAINING, *_SIGMOID, "--model.init_args.sigmoid_bias", "2"),
    "lr2e-3": (*BASELINE_TRAINING, *_LR_2E3),
    # the two training changes together (each alone gained exact inside two standard errors at 800
    # steps); the demo's base since (configs/demo/base.yaml)
    "sigmoid_b0+lr2e-3": (*BASELINE_TRAINING, *_SIGMOID_B0, *_LR_2E3),
    # ... and attention heads of 16 channels instead of 32 (2 heads at 16 px, 4 at 8 px: binding a
    # colour to its shape is one head's job per object; +7% step time at the demo's size)
    "sigmoid_b0+lr2e-3+heads16": (*BASELINE_TRAINING, *_SIGMOID_B0, *_LR_2E3,
                                  "--model.init_args.unet.head_channels", "16"),
    # absolute position for attention (`UNetConfig.coordinate_channels`): the demo base places the
    # two objects of "A left of B" no better than chance (docs/benchmarks.md)
    "coord": (*BASELINE_TRAINING, *_COORD),
    # the demo's recipe at twice its peak learning rate: lr 2e-3 beat 1e-3, so is 2e-3 still too slow?
    "sigmoid_b0+lr4e-3": (*BASELINE_TRAINING, *_SIGMOID_B0, "--model.init_args.optimizer.lr", "4.0e-3"),
    # the demo's recipe at half the batch and twice the steps (`TRAINING_BATCH`): the same images,
    # so the same FLOPs, in twice the optimiser steps; a step of 8 costs 0.58 of a step of 16 on
    # one CPU thread, so 2,400 of them take 1.16x the wall time of 1,200 of 16
    "sigmoid_b0+lr2e-3+b8": (*BASELINE_TRAINING, *_SIGMOID_B0, *_LR_2E3),
    # the demo's recipe with self-attention at 16 px too (the base has it at 8 px only, where the
    # objects are 2-px blobs): with two objects of different shapes the base draws both alike, so can
    # the objects' features agree on who is which where they are apart? 1.16x the step time
    # (`TRAINING_STEP_COST`), so fewer steps
    "sigmoid_b0+lr2e-3+attn16": (*BASELINE_TRAINING, *_SIGMOID_B0, *_LR_2E3,
                                 "--model.init_args.unet.attention_resolutions", "[16, 8]"),
    # the demo's recipe with Adam's beta2 at 0.99 (EDM2's; the baseline's 0.999 averages the squared
    # gradients over ~1,000 steps, most of this run): a second-moment estimate that keeps up
    "sigmoid_b0+lr2e-3+beta2": (*BASELINE_TRAINING, *_SIGMOID_B0, *_LR_2E3,
                                "--model.init_args.optimizer.betas", "[0.9, 0.99]"),
    # the demo's recipe trained two and four times as long (`TRAINING_COMPUTE`): not recipe changes but
    # the scale the others are read against, what 2x and 4x the compute buy (cosine schedule stretched)
    **{training: (*BASELINE_TRAINING, *_SIGMOID_B0, *_LR_2E3) for training in _YARDSTICKS},
    **{f"sigmoid_b0+lr2e-3+{change}+steps2x": (*BASELINE_TRAINING, *_SIGMOID_B0, *_LR_2E3, *flags)
       for change, (_, flags) in _YARDSTICK_CHANGES.items()},
    **{f"sigmoid_b0+lr2e-3+{change}": (*BASELINE_TRAINING, *_SIGMOID_B0, *_LR_2E3, *flags)
       for change, (_, flags) in _DEMO_CHANGES.items()},
    **{f"sigmoid_b0+lr2e-3+layout8+loss+pre3k+{change}": (*BASELINE_TRAINING, *_SIGMOID_B0, *_LR_2E3,
                                                          *_DEMO_CHANGES["layout8+loss+pre3k"][1], *flags)
       for change, (_, flags) in _LAYOUT_RECIPE_CHANGES.items()},
    **{training: (*BASELINE_TRAINING, *_SIGMOID_B0, *_LR_2E3, *_DEMO_CHANGES["layout8+loss+pre3k"][1])
       for training in _SCALE_YARDSTICKS},
    **dict.fromkeys(_MUON_YARDSTICKS, (*BASELINE_TRAINING, *_SIGMOID_B0, *_LR_2E3,
                                       *_DEMO_CHANGES["layout8+loss+pre3k"][1],
                                       *_LAYOUT_RECIPE_CHANGES["muon+lr4e-3"][1])),
}
TRAININGS.update({choice: (*TRAININGS[training], *flags) for choice, (training, flags) in _CHOICE_TRAININGS.items()})
TRAININGS.update({xt: (*TRAININGS[training], "--model.init_args.unet.text_layout_reads_x_t", "true")
                  for xt, training in _READS_X_T_TRAININGS.items()})
# Trainings at another batch than the plan's; they train plan.train_steps x plan.batch_size images
# like every other row, in proportionally more or fewer steps.
TRAINING_BATCH: dict[str, int] = {"sigmoid_b0+lr2e-3+b8": 8, **dict.fromkeys(_SCALE_YARDSTICKS, 256)}
# Trainings whose step costs more than the baseline's (measured: `cascade bench train` of the two
# configs one after the other, batch 16, 1 thread, median of 15 steps; AMD EPYC, avx512_bf16):
# they train for proportionally fewer steps, so that every row has the same compute.
# the 8-px layout map with its head and layout loss: median of 6 alternating runs of 15 steps (forward,
# backward, Adam) of the bare UNet with and without them, 1 thread, batch 16
LAYOUT_LOSS_COST = 214.2 / 200.0
# the layout pre-training (reading 5,000 training images, then 2,000 steps of 64) in steps of the demo's
# base: its wall time over the base's step time, both in one `cascade fit` log, 1 thread
LAYOUT_PRETRAINING_COST = 270  # 112 s at 2.25 steps per second of the layout base (x 1.071 for the plain one)
TRAINING_STEP_COST: dict[str, float] = {"sigmoid_b0+lr2e-3+attn16": 169 / 145.5,
                                         # a token refiner: median of 6 runs of 25 steps each, alternating with
                                         # the demo's base
                                         **{f"sigmoid_b0+lr2e-3+{change}+steps2x": 203.1 / 173.6
                                            for change, (_, flags) in _YARDSTICK_CHANGES.items()
                                            if "--model.init_args.unet.text_refiner_layers" in flags},
                                         # a text layout map: median of 6 alternating runs of 15 steps
                                         # (forward, backward, Adam) of the bare UNet, 1 thread, batch 16
                                         "sigmoid_b0+lr2e-3+layout8": 164.7 / 161.7,
                                         "sigmoid_b0+lr2e-3+layout16": 169.3 / 161.7,
                                         **dict.fromkeys(("sigmoid_b0+lr2e-3+layout8+loss",
                                                          "sigmoid_b0+lr2e-3+layout8+loss+pre",
                                                          "sigmoid_b0+lr2e-3+layout8+loss+pre3k",
                                                          "sigmoid_b0+lr2e-3+layout8+loss+steps2x"), LAYOUT_LOSS_COST),
                                         # cross-attention at 32 px: 651.5-660.7 vs 578.7-581.1 ms, 3 alternating
                                         # runs of 10 steps each of the demo's base config (layout path and
                                         # loss included), 1 thread, batch 16 (AMD EPYC, avx2 only)
                                         "sigmoid_b0+lr2e-3+layout8+loss+pre3k+xattn32": LAYOUT_LOSS_COST * 653.4 / 580.8,
                                         # QK-norm: medians of 6 alternating runs of 10 steps, 657.5 vs 624.5 ms (the
                                         # demo's base config, layout path included; 1 thread, batch 16, avx2 only)
                                         "sigmoid_b0+lr2e-3+layout8+loss+pre3k+qknorm": LAYOUT_LOSS_COST * 657.5 / 624.5,
                                         # Muon: 8 alternating blocks of 10 steps in one process (1 thread, batch 16,
                                         # the demo's base config): median of the blocks' ratios 1.156, ratio of the
                                         # medians 1.229; its step alone 55 ms against AdamW's 4 ms, on a 259 ms step
                                         # (Intel Xeon, avx512_bf16, no AMX)
                                         **dict.fromkeys((f"sigmoid_b0+lr2e-3+layout8+loss+pre3k+{change}"
                                                          for change in _LAYOUT_RECIPE_CHANGES if "muon" in change),
                                                         LAYOUT_LOSS_COST * 1.18),
                                         **dict.fromkeys(_MUON_YARDSTICKS, LAYOUT_LOSS_COST * 1.18),
                                         **dict.fromkeys(_CHOICE_TRAININGS, LAYOUT_LOSS_COST * 1.18),
                                         **dict.fromkeys(_READS_X_T_TRAININGS, LAYOUT_LOSS_COST * 1.18 * READS_X_T_STEP_COST),
                                         **dict.fromkeys(_SCALE_YARDSTICKS, LAYOUT_LOSS_COST)}
# Trainings that spend compute before their first step, in steps of the demo's base (taken off their
# steps): the layout pre-training, LAYOUT_PRETRAINING_COST.
TRAINING_FIXED_COST: dict[str, int] = {"sigmoid_b0+lr2e-3+layout8+loss+pre": LAYOUT_PRETRAINING_COST,
                                       # 3,000 steps: all of it taken as 1.5x (an upper bound: the reading is not),
                                       # for the demo's recipe and every row built on it
                                       **dict.fromkeys(("sigmoid_b0+lr2e-3+layout8+loss+pre3k",
                                                        *(f"sigmoid_b0+lr2e-3+layout8+loss+pre3k+{change}"
                                                          for change in _LAYOUT_RECIPE_CHANGES),
                                                        *_SCALE_YARDSTICKS, *_MUON_YARDSTICKS),
                                                       LAYOUT_PRETRAINING_COST * 3 // 2),
                                       **dict.fromkeys(_CHOICE_TRAININGS,
                                                       LAYOUT_PRETRAINING_COST * 3 // 2 + CHOICES4_PRETRAINING_COST),
                                       **dict.fromkeys(_READS_X_T_TRAININGS,
                                                       LAYOUT_PRETRAINING_COST * 3 // 2 + READS_X_T_PRETRAINING_COST)}
# The gated choices' training given 2,000 / 1,540 = 1.3x its denoiser steps, its layout pre-training unchanged:
# what the demo's base trains since the twenty-first session (2,000 steps where 1,540 are the same compute as
# the row above, in the time the SR lane's freed core saves it, `train_concurrently`). More compute: a
# yardstick of what the demo gains from it, not a recipe.
_DEMO_STEPS_TRAININGS: dict[str, str] = {f"{choice}+steps1.3x": choice for choice in _CHOICE_TRAININGS
                                         if choice.endswith("+gates4")}
TRAINING_MORE_STEPS: dict[str, float] = dict.fromkeys(_DEMO_STEPS_TRAININGS, 2000 / 1540)
for _table in (TRAININGS, TRAINING_COMPUTE, TRAINING_STEP_COST, TRAINING_FIXED_COST):  # the same flags and costs
    _table.update({longer: _table[choice] for longer, choice in _DEMO_STEPS_TRAININGS.items()})
BASE_SAMPLING = {"sampler": "dpmpp_2m", "steps": 20, "guidance": 3.0, "time_grid": "uniform_t"}


# Kynkaanniemi et al. 2024's interval for EDM2 at 512 px, sigma in (0.28, 2.9], in log-SNR
EDM2_INTERVAL = (-2.13, 2.55)


def _in_interval(weight: float) -> tuple[str, str, dict[str, Any]]:
    """(row key suffix, label, sampling change) of guidance `weight` applied only for log-SNR in
    `EDM2_INTERVAL` (the suffix "interval" alone at the base sampling's own weight)."""
    key = "interval" if weight == BASE_SAMPLING["guidance"] else f"cfg{weight:g}+interval"
    interval = list(EDM2_INTERVAL)
    return key, f"guidance {weight:g} for log-SNR in {interval} only", {"guidance": weight, "guidance_interval": interval}


def rows() -> list[Row]:
    """The ablation's rows: the baseline, each change alone, and all of them together."""
    grid = {**BASE_SAMPLING, "time_grid": "log_snr"}
    interval = {**BASE_SAMPLING, "guidance_interval": list(EDM2_INTERVAL)}
    demo = {**BASE_SAMPLING, **_in_interval(2.0)[2]}  # the demo's base sampling: guidance 2 in the interval
    return [
        Row("baseline (min-SNR, dpmpp_2m uniform t, CFG 3, EMA 0.995)", "baseline", sampling=BASE_SAMPLING),
        Row("+ sigmoid weighting (b = -3)", "sigmoid", training="sigmoid", sampling=BASE_SAMPLING),
        Row("+ sigmoid weighting (b = 0)", "sigmoid_b0", training="sigmoid_b0", sampling=BASE_SAMPLING),
        Row("+ sigmoid weighting (b = 2)", "sigmoid_b2", training="sigmoid_b2", sampling=BASE_SAMPLING),
        Row("+ learning rate 2e-3 (baseline 1e-3)", "lr2e-3", training="lr2e-3", sampling=BASE_SAMPLING),
        Row("+ sigmoid weighting (b = 0) and learning rate 2e-3", "sigmoid_b0+lr2e-3", training="sigmoid_b0+lr2e-3",
            sampling=BASE_SAMPLING),
        Row("+ sigmoid (b = 0), lr 2e-3 and 16-channel attention heads", "sigmoid_b0+lr2e-3+heads16",
            training="sigmoid_b0+lr2e-3+heads16", sampling=BASE_SAMPLING),
        Row("+ coordinate channels (CoordConv)", "coord", training="coord", sampling=BASE_SAMPLING),
        Row("+ sigmoid weighting (b = 0) and learning rate 4e-3", "sigmoid_b0+lr4e-3", training="sigmoid_b0+lr4e-3",
            sampling=BASE_SAMPLING),
        Row("+ sigmoid (b = 0), lr 2e-3, batch 8 for twice the steps (same images)", "sigmoid_b0+lr2e-3+b8",
            training="sigmoid_b0+lr2e-3+b8", sampling=BASE_SAMPLING),
        Row("+ sigmoid (b = 0), lr 2e-3, self-attention at 16 px (0.86x the steps: same compute)",
            "sigmoid_b0+lr2e-3+attn16", training="sigmoid_b0+lr2e-3+attn16", sampling=BASE_SAMPLING),
        Row("+ sigmoid (b = 0), lr 2e-3, Adam beta2 0.99", "sigmoid_b0+lr2e-3+beta2",
            training="sigmoid_b0+lr2e-3+beta2", sampling=BASE_SAMPLING),
        *(Row(f"sigmoid (b = 0), lr 2e-3, {factor}x the training steps ({factor}x the compute: a yardstick, "
              "not a recipe)", training, training=training, sampling=BASE_SAMPLING)
          for training, factor in _YARDSTICKS.items()),
        *(Row(f"sigmoid (b = 0), lr 2e-3, {label}, 2x the training steps (read against the 2x yardstick)",
              f"sigmoid_b0+lr2e-3+{change}+steps2x", training=f"sigmoid_b0+lr2e-3+{change}+steps2x",
              sampling=BASE_SAMPLING)
          for change, (label, _) in _YARDSTICK_CHANGES.items()),
        *(Row(f"+ sigmoid (b = 0), lr 2e-3, {label} (fewer steps for its step cost: same compute)",
              f"sigmoid_b0+lr2e-3+{change}", training=f"sigmoid_b0+lr2e-3+{change}", sampling=BASE_SAMPLING)
          for change, (label, _) in _DEMO_CHANGES.items()),
        # the demo's recipe sampled at other guidance weights (its networks; the same NFE as at 3)
        *(Row(f"+ sigmoid (b = 0), lr 2e-3, guidance {guidance:g}", f"sigmoid_b0+lr2e-3+cfg{guidance:g}",
              training="sigmoid_b0+lr2e-3", sampling={**BASE_SAMPLING, "guidance": guidance})
          for guidance in (2.0, 4.0)),
        # the demo's recipe with its layout path sampled otherwise (its networks; 20 steps, the same NFE):
        # an ODE solver follows the average of what an underfit base hedges between (a square's corners
        # come out round, docs/benchmarks.md), a stochastic one corrects the path as it goes (Karras et
        # al. 2022, sec. 4); each sampler on its default grid (`DEFAULT_GRIDS`). Refuted at 3 seeds: DDPM
        # exact -0.06 +- 0.02, the 3M SDE shape -0.06 +- 0.01; the log-SNR grid FID -0.4 +- 0.1, alignment
        # the same (docs/benchmarks.md, "A stochastic sampler for the underfit base?")
        *(Row(f"+ layout path fitted first, {label} (its networks, the same NFE)",
              f"sigmoid_b0+lr2e-3+layout8+loss+pre3k+{key}", training="sigmoid_b0+lr2e-3+layout8+loss+pre3k",
              sampling={**BASE_SAMPLING, "sampler": sampler, "time_grid": DEFAULT_GRIDS[sampler]})
          for key, label, sampler in (("logsnr", "DPM-Solver++(2M) on the log-SNR grid", "dpmpp_2m"),
                                      ("ddpm", "DDPM ancestral sampling", "ddpm"),
                                      ("sde", "DPM-Solver++(3M) SDE", "dpmpp_3m_sde"))),
        # ... and guided away from each caption's rebound caption (the same words, the shapes, or else the
        # colours, bound to other objects: `rebound_caption`) in place of the unconditional prediction,
        # x0 = D(x|rebound) + w (D(x|c) - D(x|rebound)), the same NFE: a base that hedges between which
        # shape goes with which colour would have that difference amplified (docs/benchmarks.md,
        # "Which shape goes with which colour"; refuted at 3 seeds: colour -0.05*, FID -0.8*)
        *(Row(f"+ layout path fitted first, {label} (fewer steps for its step cost: same compute)",
              f"sigmoid_b0+lr2e-3+layout8+loss+pre3k+{change}", training=f"sigmoid_b0+lr2e-3+layout8+loss+pre3k+{change}",
              sampling=BASE_SAMPLING)
          for change, (label, _) in _LAYOUT_RECIPE_CHANGES.items()),
        # the demo's Muon recipe sampled otherwise (its networks, the same NFE): other guidance weights, and
        # post-hoc EMA lengths shorter than its EMA (decay 0.995: about sigma_rel 0.3 at these steps), since an
        # underfit base's latest weights may draw sharper shapes than its average
        *(Row(f"+ layout path fitted first, Muon at lr 4e-3, {label} (its networks, the same NFE)",
              f"{_MUON_RECIPE}+{key}", training=_MUON_RECIPE, weights=weights,
              sampling={**BASE_SAMPLING, "guidance": guidance})
          for key, label, weights, guidance in (("cfg2", "guidance 2", "ema", 2.0), ("cfg5", "guidance 5", "ema", 5.0),
                                                ("phema0.05", "post-hoc EMA sigma_rel 0.05", "phema:0.05", 3.0),
                                                ("phema0.2", "post-hoc EMA sigma_rel 0.2", "phema:0.2", 3.0))),
        *(Row(f"+ layout path fitted first, Muon at lr 4e-3, {factor:g}x the compute (a yardstick, not "
              "a recipe)", training, training=training, sampling=BASE_SAMPLING)
          for training, factor in _MUON_YARDSTICKS.items()),
        # ... and its networks sampled unguided, at guidance 2, and guided only for log-SNR in EDM2's
        # interval: the demo's 16-caption sweep of the 1,600-step base read guidance 1 and the interval
        # above guidance 3 (exact 0.65 against 0.52)
        *(Row(f"+ layout path fitted first, Muon at lr 4e-3, 1.4x the compute, {label} (its networks)",
              f"{training}+{key}", training=training, sampling={**BASE_SAMPLING, **change})
          for training in _MUON_YARDSTICKS
          for key, label, change in (("cfg1", "unguided (half the NFE)", {"guidance": 1.0}),
                                     ("cfg2", "guidance 2", {"guidance": 2.0}),
                                     _in_interval(3.0),
                                     _in_interval(2.0))),  # the demo's guidance 2, none where the count is decided
        # ... and with four layout choices, one drawn per seed, sampled as the demo samples (`_CHOICE_TRAININGS`)
        *(Row("+ layout path fitted first, Muon at lr 4e-3, 1.4x the compute, four layout choices"
              + (" read below log-SNR -2" if choice.endswith("below-2") else "")
              + (" that move the map between cells (gates)" if choice.endswith("gates4") else "")
              + ", guidance 2 for log-SNR in [-2.13, 2.55] only (the same compute)", f"{choice}+cfg2+interval",
              training=choice, sampling=demo)
          for choice in _CHOICE_TRAININGS),
        # ... the gated choices' networks (the demo's base) at other guidance weights, in EDM2's interval and
        # not: the demo's guidance 2 in it was chosen for the one map (`_MUON_YARDSTICKS` rows above). In the
        # interval shape and relation rise up to guidance 3 and fall at 4; 3 against 2: shape +0.03 +- 0.01*,
        # exact +0.03 +- 0.01*, FID +0.6 +- 0.1*; at the demo's 1.3x steps (below) the alignment the same and
        # FID +0.40 +- 0.05*, so the demo keeps 2 (docs/benchmarks.md, "Guidance for the gated choices").
        *(Row("+ layout path fitted first, Muon at lr 4e-3, 1.4x the compute, four gated layout choices, "
              f"{label} (its networks)", f"{choice}+{key}", training=choice, sampling={**BASE_SAMPLING, **change})
          for choice in _CHOICE_TRAININGS if choice.endswith("+gates4")
          for key, label, change in (("cfg2", "guidance 2", {"guidance": 2.0}),
                                     *(_in_interval(weight) for weight in (1.5, 2.5, 3.0, 4.0)))),
        # ... and given the demo's 1.3x denoiser steps (`_DEMO_STEPS_TRAININGS`), at guidance 3 and 2 in the interval:
        # at 2, shape +0.040 +- 0.005*, exact +0.035 +- 0.001*, colour +0.010*, relation +0.05 +- 0.03
        *(Row("+ layout path fitted first, Muon at lr 4e-3, 1.4x the compute, four gated layout choices, 1.3x the "
              f"denoiser steps (a yardstick, not a recipe), {label}", f"{longer}+{key}", training=longer,
              sampling={**BASE_SAMPLING, **change})
          for longer in _DEMO_STEPS_TRAININGS
          for key, label, change in (_in_interval(3.0), _in_interval(2.0))),
        # ... and with the one layout map reading x_t (`_READS_X_T_TRAININGS`), sampled as the demo samples
        *(Row("+ layout path fitted first, Muon at lr 4e-3, 1.4x the compute, the layout map reads x_t, "
              "guidance 2 for log-SNR in [-2.13, 2.55] only (the same compute)", f"{xt}+cfg2+interval",
              training=xt, sampling=demo)
          for xt in _READS_X_T_TRAININGS),
        # the demo's recipe given 16 and 64 times the compute at batch 256: yardsticks for a GPU (`_SCALE_YARDSTICKS`)
        *(Row(f"demo recipe, {factor}x the compute at batch 256 (a yardstick, not a recipe)",
              training, training=training, sampling=BASE_SAMPLING)
          for training, factor in _SCALE_YARDSTICKS.items()),
        Row("+ layout path fitted first, guided away from the rebound caption (its networks, the same NFE)",
            "sigmoid_b0+lr2e-3+layout8+loss+pre3k+rebound", training="sigmoid_b0+lr2e-3+layout8+loss+pre3k",
            sampling=BASE_SAMPLING, rebound_negatives=True),
        Row("+ time grid (log-SNR)", "grid", sampling=grid),
        Row("+ guidance interval", "interval", sampling=interval),
        Row("+ autoguidance", "autoguidance", sampling=BASE_SAMPLING, guide="phema:0.05@0.25"),
        Row("+ post-hoc EMA", "phema", weights="phema:0.10", sampling=BASE_SAMPLING),
        Row("all together", "all", training="sigmoid", weights="phema:0.10", sampling={**grid, **interval},
            guide="phema:0.05@0.25"),
    ]


def mean_and_standard_error(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample std / sqrt(n); 0 for a single value)."""
    finite = [v for v in values if v is not None and not math.isnan(v)]
    if not finite:
        return math.nan, math.nan
    mean = sum(finite) / len(finite)
    if len(finite) < 2:
        return mean, 0.0
    variance = sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)
    return mean, math.sqrt(variance / len(finite))


def select_rows(keys: list[str] | None, reference: str | None = None) -> tuple[list[Row], list[Row]]:
    """The main rows and the EMA x guidance rows to run: all of them, or those whose keys are
    given, and the reference row first (the baseline unless `reference` names another main row),
    as every difference is taken from it. Unknown keys are refused with the list of known ones."""
    main_rows, sweep_rows = rows(), ema_guidance_rows()
    known = [row.key for row in main_rows + sweep_rows]
    if reference is not None and reference not in [row.key for row in main_rows]:
        raise ValueError(f"--reference: unknown row key {reference!r} (a main row); known: "
                         f"{', '.join(row.key for row in main_rows)}")
    reference = reference or main_rows[0].key
    if keys is not None:
        unknown = [key for key in keys if key not in known]
        if unknown:
            raise ValueError(f"--rows: unknown row key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    wanted = set(known if keys is None else keys) | {reference}
    first = [r for r in main_rows if r.key == reference]
    return first + [r for r in main_rows if r.key in wanted and r.key != reference], \
        [r for r in sweep_rows if r.key in wanted]


def training_steps(training: str, plan: AblationPlan) -> int:
    """Optimiser steps of a training: the plan's, scaled so that every training sees
    plan.train_steps x plan.batch_size images whatever its batch (times its `TRAINING_COMPUTE`),
    less the images its work before the first step costs (`TRAINING_FIXED_COST`, in steps of
    plan.batch_size), and divided by its step cost (rounded down to a multiple of plan.snapshots)
    where its step costs more; a yardstick of more denoiser steps has those times `TRAINING_MORE_STEPS`."""
    batch = TRAINING_BATCH.get(training, plan.batch_size)
    if (plan.train_steps * plan.batch_size) % batch:
        raise ValueError(f"training {training!r}: {plan.train_steps} x {plan.batch_size} images do not divide "
                         f"into batches of {batch}")
    steps = round(plan.train_steps * plan.batch_size // batch * TRAINING_COMPUTE.get(training, 1))
    cost, fixed = TRAINING_STEP_COST.get(training, 1.0), TRAINING_FIXED_COST.get(training, 0)
    more = TRAINING_MORE_STEPS.get(training, 1.0)
    if cost != 1.0 or fixed or more != 1.0:
        steps = max(plan.snapshots, int((steps - fixed * plan.batch_size / batch) / cost * more) // plan.snapshots
                    * plan.snapshots)
    return steps


def pretrains_layout(flags: tuple[str, ...]) -> bool:
    """Whether a training's flags (later ones win) leave the base a layout pre-training."""
    key = "--model.init_args.layout_pretraining.steps"
    values = [flags[i + 1] for i, flag in enumerate(flags[:-1]) if flag == key]
    return bool(values) and int(values[-1]) > 0


def training_runs(out: Path, data: dict[str, Path], plan: AblationPlan,
                  trainings: set[str] | None = None) -> dict[tuple[str, int], StageRun]:
    """One `cascade fit` of the demo's base per training recipe (all, or those in `trainings`) and
    seed, with post-hoc EMA snapshots."""
    runs = {}
    for training, extra in TRAININGS.items():
        if trainings is not None and training not in trainings:
            continue
        batch = TRAINING_BATCH.get(training, plan.batch_size)
        steps = training_steps(training, plan)
        every = max(1, steps // plan.snapshots)
        for seed in plan.seeds:
            overrides = (
                "--data.init_args.train_shards", str(data["train"]), "--data.init_args.val_shards", str(data["val"]),
                "--data.init_args.batch_size", str(batch),
                "--data.init_args.val_batch_size", str(2 * plan.batch_size),
                "--trainer.val_check_interval", str(steps), "--sample_grid", "null",
                "--posthoc_ema.snapshot_every_n_steps", str(every), *extra,
            )
            if plan.accelerator != "cpu":
                overrides += ("--trainer.accelerator", plan.accelerator)
            if plan.loader_workers is not None:
                overrides += ("--data.init_args.num_workers", str(plan.loader_workers))
            if plan.layout_pretraining_steps is not None and pretrains_layout(extra):
                overrides += ("--model.init_args.layout_pretraining.steps", str(plan.layout_pretraining_steps),
                              "--model.init_args.layout_pretraining.images", str(plan.train_images))
            runs[training, seed] = StageRun(f"{training}-seed{seed}", CONFIG_DIR / "base.yaml",
                                            out / "runs" / f"{training}-seed{seed}", steps, overrides, seed)
    return runs


def reference_renders(scenes: list[dict], folder: Path, resolution: int) -> Path:
    """Real renders of the scenes at the base's resolution (rendered at the shards' resolution and
    downsampled as the loader does), named like the demo's reference set."""
    from PIL import Image

    from ..data import synthetic
    from ..data.degrade import downsample
    from . import SHARD_RESOLUTION

    folder.mkdir(parents=True, exist_ok=True)
    for index, scene in enumerate(scenes):
        target = folder / f"{index:05d}.png"
        if not target.exists():
            pixels, _ = synthetic.render_sample(scene["index"], SHARD_RESOLUTION, seed=scene["seed"], split="heldout")
            downsample(Image.fromarray(pixels), (resolution, resolution)).save(target)
    return folder


def weights_path(run: StageRun, spec: str) -> Path:
    """The checkpoint or export a row samples with: "ema" (the run's last checkpoint, Lightning's
    EMA) or "phema:SIGMA_REL[@FRACTION]" (the post-hoc EMA of that length at that fraction of
    training, reconstructed once from the run's snapshots and kept as an export)."""
    if spec == "ema":
        return run.last_checkpoint
    kind, _, value = spec.partition(":")
    if kind != "phema":
        raise ValueError(f"weights: expected 'ema' or 'phema:SIGMA_REL[@FRACTION]', got {spec!r}")
    sigma_rel, _, fraction = value.partition("@")
    step = round(run.steps * float(fraction)) if fraction else None
    out = run.run_dir / "posthoc" / (f"sigma_rel={float(sigma_rel):g}" + ("" if step is None else f"@{step}"))
    if not (out / "config.yaml").exists():
        reconstruct(run.run_dir / SNAPSHOT_DIR, float(sigma_rel), step=step, out=out)
    return out


def row_settings(row: Row, guide: Path | None) -> SamplingSettings:
    """The base's sampling settings of a row (its guide, when it has one, by path)."""
    changes = dict(row.sampling)
    if guide is not None:
        changes["guide"] = str(guide)
    return SamplingSettings(dynamic_threshold=0.995).updated(**changes)


def function_evaluations_per_image(cascade: Cascade) -> int:
    """Network evaluations per image of the base: the sampler's evaluations, each doubled where it
    is guided (conditional and unconditional rows, or the main model and its guide); the guidance
    interval decides which are. Counted by running the sampler with a stand-in denoiser."""
    stage, settings = cascade.stages[0], cascade.settings[0]
    times: list[torch.Tensor] = []

    def record(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        times.append(t[:1].clone())
        return torch.zeros_like(x_t)

    sample(record, stage.schedule, (1, 1), sampler=settings.sampler, steps=settings.steps, grid=settings.time_grid,
           generator=torch.Generator().manual_seed(0))
    if settings.guidance == 1.0:
        return len(times)
    guided = in_guidance_interval(stage.schedule.log_snr_unchecked(torch.cat(times)), settings.guidance_interval)
    return len(times) + int(guided.sum())


@dataclass(frozen=True)
class Sampled:
    """One row's samples of one training seed and their scores."""

    row: str
    seed: int
    folder: str
    nfe: int
    balanced: dict[str, float]
    strata: dict[str, dict[str, float]]
    metrics: dict[str, float]
    # `cascade.eval.alignment.placement` over the images it judges: "axis" and "side" accuracy, "n" images;
    # "order": `word_order_rate` of the sampled weights; "binding": the same against each caption's
    # `rebound_caption`, on the captions whose objects differ in shape
    placement: dict[str, float] = field(default_factory=dict)


def placement_rates(folder: Path, scored: list[ScoredImage]) -> dict[str, float]:
    """Accuracy of `placement`'s axis and side checks over the images of `scored` (read from
    `folder`) that it judges, and how many those are (NaN accuracies when none)."""
    judged = [placement(np.asarray(open_image(folder / image.file).convert("RGB")), image.scene) for image in scored]
    judged = [result for result in judged if result["side_ok"] is not None]
    return {"axis": float(np.mean([r["axis_ok"] for r in judged])) if judged else math.nan,
            "side": float(np.mean([r["side_ok"] for r in judged])) if judged else math.nan,
            "n": float(len(judged))}


# Noise levels at which the base lays the objects out: x_t shows little of where they are (cosine
# schedule: alpha = 0.31, 0.16, 0.08), so only the caption can say which goes where.
WORD_ORDER_TIMES = (0.8, 0.9, 0.95)


def swapped_caption(scene: dict[str, Any]) -> str | None:
    """The caption with the two noun phrases of its relation exchanged ("a blue circle left of a red
    square" -> "a red square left of a blue circle": the mirrored layout, the same words), for two
    objects of different colours; None for any other scene."""
    objects, relation = scene["objects"], scene.get("relation")
    if relation is None or len(objects) != 2 or objects[0]["colour"] == objects[1]["colour"]:
        return None
    parts = scene["caption"].split(f" {relation['relation']} ")
    return f"{parts[1]} {relation['relation']} {parts[0]}" if len(parts) == 2 else None


def word_order_rate(stage, images: torch.Tensor, captions: list[str], swapped: list[str],
                    times: tuple[float, ...] = WORD_ORDER_TIMES, draws: int = 2, seed: int = 0) -> float:
    """How often the stage's x0 estimate of a real image (B,3,H,W in [-1, 1]) noised to t is closer
    to the image given its caption than given the swapped caption, over `times` x `draws` noise
    draws (the same x_t for both captions; ties count half). 0.5: the denoiser does not read which
    object the relation is about (or, given `rebound_caption`s, which shape goes with which colour);
    1.0: it always does. Needs no sampling and no detector."""
    generator = torch.Generator().manual_seed(seed)  # the noise is drawn on the CPU whatever the stage's device
    images = images.to(stage.device)
    wins = []
    with torch.no_grad():
        conditions = [stage.make_condition(prompts=list(texts)) for texts in (captions, swapped)]
        for t_value in times:
            t = torch.full((len(captions),), t_value, device=stage.device)
            alpha, sigma = stage.schedule.alpha_sigma(t)
            for _ in range(draws):
                x_t = q_sample(images, t, stage.schedule, torch.randn(images.shape, generator=generator).to(stage.device))
                right, wrong = (((x0_from_prediction(stage(x_t, t, c), x_t, alpha, sigma, stage.target) - images) ** 2)
                                .mean(dim=(1, 2, 3)) for c in conditions)
                wins.append((right < wrong).float() + 0.5 * (right == wrong).float())  # a tie is a coin toss
    return float(torch.cat(wins).mean())


def sample_and_score(row: Row, run: StageRun, scenes: list[dict], folder: Path, plan: AblationPlan,
                     reference, extractor, renders: Path | None = None) -> Sampled:
    """Sample the row's base on the held-out captions into `folder` (resumable) and score it; with
    the scenes' real renders (`reference_renders`), also its `word_order_rate` on them."""
    guide = weights_path(run, row.guide) if row.guide else None
    cascade = Cascade.from_paths([weights_path(run, row.weights)], [row_settings(row, guide)], device=plan.device)
    conditions = [(scene["caption"], stratum_of(scene)) for scene in scenes]
    counts = images_per_caption(scenes, plan.samples_per_caption, plan.images_per_stratum)
    negatives = tuple(rebound_caption(scene["caption"]) for scene in scenes) if row.rebound_negatives else None
    job = FolderJob(n_per_condition=counts, batch_size=plan.sample_batch, seed=0, progress=False,
                    negative_prompts=negatives)
    sample_folder(cascade, conditions, job, folder, console=Console(quiet=True))
    merge_metadata(folder)
    scored = score_folder(folder, scenes)
    stratified = stratified_alignment(scored, resamples=200)
    # FID / precision / recall on each caption's first samples_per_caption images: the reference
    # has one render per caption, so the extra seeds of the small strata would reweight captions
    metrics = evaluate_samples(first_images(folder, plan.samples_per_caption), reference, extractor,
                               metrics=("fid", "pr"), progress=False).metrics
    swaps = [(index, swapped) for index, scene in enumerate(scenes) if (swapped := swapped_caption(scene))]
    rebinds = [(index, rebound) for index, scene in enumerate(scenes)
               if len({o["shape"] for o in scene["objects"]}) > 1 and (rebound := rebound_caption(scene["caption"]))]
    order = binding = math.nan
    if renders is not None:
        def rate(pairs: list[tuple[int, str]]) -> float:
            images = torch.stack([to_tensor(open_image(renders / f"{index:05d}.png").convert("RGB")) for index, _ in pairs])
            return word_order_rate(cascade.stages[0], images, [scenes[i]["caption"] for i, _ in pairs],
                                   [caption for _, caption in pairs])
        order = rate(swaps) if swaps else math.nan
        binding = rate(rebinds) if rebinds else math.nan
    return Sampled(row.name, run.seed, str(folder), function_evaluations_per_image(cascade),
                   {check: stratified[BALANCED][check][0] for check in CHECKS},
                   {name: {check: values[check][0] for check in CHECKS} for name, values in stratified.items()
                    if name != BALANCED},
                   {key: float(value) for key, value in metrics.items()},
                   {**placement_rates(folder, scored), "order": order, "binding": binding})


def paired_summary(sampled: list, order: list[str], scores: Callable[[Any], dict[str, float]]) -> list[dict[str, Any]]:
    """Per row of `order` (items with .row, .seed, .nfe): the mean and standard error over training seeds
    of every score `scores(item)` gives, and as "delta <score>" its paired (same seed) difference from the
    reference (the first row)."""
    by_row: dict[str, dict[int, Any]] = {}
    for item in sampled:
        by_row.setdefault(item.row, {})[item.seed] = item
    reference = {seed: scores(item) for seed, item in by_row[order[0]].items()}
    summary = []
    for name in order:
        seeds = {seed: scores(item) for seed, item in by_row[name].items()}
        entry: dict[str, Any] = {"row": name, "seeds": sorted(seeds), "nfe": max(s.nfe for s in by_row[name].values())}
        for key in next(iter(seeds.values())):
            entry[key] = mean_and_standard_error([values[key] for values in seeds.values()])
            entry[f"delta {key}"] = mean_and_standard_error(
                [values[key] - reference[seed][key] for seed, values in seeds.items() if seed in reference])
        summary.append(entry)
    return summary


def summarise(sampled: list[Sampled], order: list[str]) -> list[dict[str, Any]]:
    """Per row: mean and standard error over training seeds of every score, and the paired (same
    seed) difference of each alignment check, metric and placement rate from the reference (the first
    row); the placement's image count and each stratum's checks without."""
    def scores(item: Sampled) -> dict[str, float]:
        return {**{check: item.balanced[check] for check in CHECKS},
                **{metric: item.metrics.get(metric, math.nan) for metric in ("fid", "precision", "recall")},
                **{part: item.placement.get(part, math.nan) for part in ("axis", "side", "order", "binding")}}

    summary = paired_summary(sampled, order, scores)
    for entry in summary:
        seeds = list({item.seed: item for item in sampled if item.row == entry["row"]}.values())
        entry["placement images"] = mean_and_standard_error([s.placement.get("n", math.nan) for s in seeds])
        entry["strata"] = {
            stratum: {check: mean_and_standard_error([s.strata[stratum][check] for s in seeds
                                                      if stratum in s.strata]) for check in CHECKS}
            for stratum in seeds[0].strata
        }
    return summary


def _cell(value: tuple[float, float], digits: int = 2) -> str:
    mean, error = value
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f} ± {error:.{digits}f}"


def _delta(value: tuple[float, float], digits: int = 2) -> str:
    mean, error = value
    if math.isnan(mean) or (mean == 0 and error == 0):
        return "–"
    marker = " *" if error > 0 and abs(mean) > 2 * error else ""
    return f"{mean:+.{digits}f} ± {error:.{digits}f}{marker}"


def markdown_table(summary: list[dict[str, Any]], plan: AblationPlan, command: str, real: dict[str, float]) -> str:
    """The ablation table (balanced detector accuracy, FID / precision / recall, NFE) as Markdown."""
    lines = [
        (f"Base stage of the demo (32 px), {plan.train_steps} training steps at batch {plan.batch_size} per run, "
        f"{len(plan.seeds)} training seeds per row ({', '.join(map(str, plan.seeds))}); {plan.captions} distinct "
        f"held-out captions x {plan.samples_per_caption} sample(s), stratified (`cascade.eval.heldout`), and more "
        f"seeds of the captions of a small stratum so that every stratum has at least {plan.images_per_stratum} "
        "images (FID / precision / recall read each caption's first sample(s) only). "
        "Cells: mean over training seeds ± standard error; Δ: paired (same seed) difference from the "
        f"first row ({summary[0]['row']}), * where it is more than two standard errors from zero. "
        "Detector scores are balanced over the strata. FID / precision / recall: offline random-weight Inception features against real 32-px "
        "renders of the same captions. NFE: network evaluations per image."),
        "",
        f"Reproduce: `{command}`",
        "",
        "| row | colour | shape | count | relation | exact | Δ exact | Δ shape | Δ count | FID | Δ FID | precision "
        "| recall | NFE |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        (f"| real renders (32 px) | {real['colour']:.2f} | {real['shape']:.2f} | {real['count']:.2f} | "
        f"{real['relation']:.2f} | {real['exact']:.2f} | | | | | | | | |"),
    ]
    for entry in summary:
        lines.append(
            f"| {entry['row']} | " + " | ".join(_cell(entry[c]) for c in ("colour", "shape", "count", "relation", "exact"))
            + f" | {_delta(entry['delta exact'])} | {_delta(entry['delta shape'])} | {_delta(entry['delta count'])} | "
            f"{_cell(entry['fid'], 1)} | {_delta(entry.get('delta fid', (math.nan, math.nan)), 1)} | "
            f"{_cell(entry['precision'])} | {_cell(entry['recall'])} | {entry['nfe']} |"
        )
    lines += ["", "Exact match per stratum (mean ± standard error over training seeds):", ""]
    strata = list(summary[0]["strata"])
    lines += ["| row | " + " | ".join(strata) + " |", "|---" * (len(strata) + 1) + "|"]
    for entry in summary:
        lines.append(f"| {entry['row']} | " + " | ".join(_cell(entry["strata"][s]["exact"]) for s in strata) + " |")
    if any(not math.isnan(entry["side"][0]) for entry in summary):
        lines += ["", ("Placement on the two-object captions with a relation whose objects differ in colour, judged "
                       "by colour alone (`cascade.eval.alignment.placement`; images where each colour is found once): "
                       "the pair on the relation's axis, and the subject's colour on the stated side (chance 0.5). "
                       "Word order: how often the base denoises real renders of these captions (t in "
                       f"{', '.join(map(str, WORD_ORDER_TIMES))}) better given the caption than given it with the two "
                       "objects swapped (`word_order_rate`; chance 0.5). Binding: the same against the caption with its "
                       "shapes (or colours) bound to other objects (`rebound_caption`), on the captions whose objects "
                       "differ in shape:"), "",
                  "| row | images judged | axis | side | Δ side | word order | Δ word order | binding | Δ binding |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for entry in summary:
            lines.append(f"| {entry['row']} | {entry['placement images'][0]:.0f} | {_cell(entry['axis'])} | "
                         f"{_cell(entry['side'])} | {_delta(entry['delta side'])} | {_cell(entry['order'])} | "
                         f"{_delta(entry['delta order'])} | {_cell(entry['binding'])} | {_delta(entry['delta binding'])} |")
    return "\n".join(lines) + "\n"


def ema_guidance_rows(sigma_rels: tuple[float, ...] = (0.05, 0.20),
                      guidances: tuple[float, ...] = (3.0,)) -> list[Row]:
    """The post-hoc EMA length x guidance sweep of the baseline's networks (EDM2, Fig. 5 style)."""
    return [Row(f"EMA sigma_rel {sigma_rel:g}, guidance {guidance:g}", f"ema{sigma_rel:g}-guidance{guidance:g}",
                weights=f"phema:{sigma_rel:g}",
                sampling={**BASE_SAMPLING, "guidance": guidance})
            for sigma_rel in sigma_rels for guidance in guidances]


def training_lanes(runs: list[StageRun], count: int = 2) -> list[list[StageRun]]:
    """The runs split into `count` lanes of about equal steps (longest first, each to the lane
    with the fewest steps so far), so that the processes finish together."""
    lanes: list[list[StageRun]] = [[] for _ in range(count)]
    for run in sorted(runs, key=lambda run: -run.steps):
        min(lanes, key=lambda lane: sum(r.steps for r in lane)).append(run)
    return [lane for lane in lanes if lane]


def run_ablation(out: Path, plan: AblationPlan, threads: int, command: str, console: Console | None = None,
                 row_keys: list[str] | None = None, reference: str | None = None) -> Path:
    """Train, sample, score and tabulate every row (or the reference row, the baseline unless
    `reference` names another, and the rows of `row_keys`) into `out` (everything resumes);
    returns the Markdown table's path (`out/ablation.md`, beside `out/ablation.json`)."""
    console = console or Console()
    main_rows, sweep_rows = select_rows(row_keys, reference)
    out.mkdir(parents=True, exist_ok=True)
    console.rule("ablation 1/4: data")
    # the shards are the same whatever the number of processes that render them
    data, _ = write_datasets(out, plan.dataset_plan, console, workers=threads if threads > 2 else 0)
    scenes = heldout_scenes(plan.dataset_plan)
    reference_dir = reference_renders(scenes, out / "reference32", 32)
    console.rule(f"ablation 2/4: training ({plan.lanes} processes at once, {plan.accelerator})")
    runs = training_runs(out, data, plan, {row.training for row in main_rows + sweep_rows})
    train_concurrently(training_lanes(list(runs.values()), plan.lanes), threads, console)
    console.rule("ablation 3/4: sampling and scoring every row")
    torch.set_num_threads(threads)
    extractor = build_extractor("random-inception", random_input_size=FEATURE_INPUT_SIZE, device="cpu")
    reference, _ = reference_statistics(str(reference_dir), extractor, cache_dir=out / "stats", progress=False)
    real_scores = [ScoredImage(f"{i:05d}.png", scene,
                               score(np.asarray(open_image(reference_dir / f"{i:05d}.png").convert("RGB")), scene))
                   for i, scene in enumerate(scenes)]
    real = {check: value[0] for check, value in stratified_alignment(real_scores, resamples=200)[BALANCED].items()
            if check in CHECKS}
    sampled = []
    for row in main_rows + sweep_rows:
        for seed in plan.seeds:
            folder = out / "samples" / row.key / f"seed{seed}"
            result = sample_and_score(row, runs[row.training, seed], scenes, folder, plan, reference, extractor,
                                      reference_dir)
            console.print(f"{row.name} seed {seed}: " + ", ".join(f"{k} {v:.2f}" for k, v in result.balanced.items())
                          + f", FID {result.metrics.get('fid', math.nan):.1f}", markup=False)
            sampled.append(result)
    console.rule("ablation 4/4: the table")
    summary = summarise(sampled, [row.name for row in main_rows])
    sweep = (summarise([s for s in sampled if s.row in {r.name for r in sweep_rows}], [r.name for r in sweep_rows])
             if sweep_rows else [])
    text = markdown_table(summary, plan, command, real)
    if sweep_rows:
        text += "\nPost-hoc EMA length x guidance (baseline networks, balanced exact / shape, FID):\n\n"
        text += "| EMA sigma_rel, guidance | exact | shape | count | FID | NFE |\n|---|---|---|---|---|---|\n"
    for entry in sweep:
        text += (f"| {entry['row']} | {_cell(entry['exact'])} | {_cell(entry['shape'])} | {_cell(entry['count'])} | "
                 f"{_cell(entry['fid'], 1)} | {entry['nfe']} |\n")
    write_text(out / "ablation.json", json.dumps({"plan": asdict(plan), "rows": [asdict(r) for r in main_rows + sweep_rows],
                                                  "summary": summary, "sweep": sweep, "real": real,
                                                  "runs": [asdict(s) for s in sampled]}, indent=1, default=str))
    write_text(out / "ablation.md", text)
    console.print(text, markup=False)
    return out / "ablation.md"
