"""`cascade ablation`: its statistics, its cost accounting and its command line."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO

from cascade.cli import main
from cascade.demo import FULL
from cascade.demo.ablation import (
    CHECKS,
    CHOICES4_PRETRAINING_COST,
    LAYOUT_LOSS_COST,
    FAST_ABLATION,
    TRAINING_BATCH,
    TRAINING_FIXED_COST,
    TRAINING_STEP_COST,
    TRAININGS,
    AblationPlan,
    Row,
    Sampled,
    function_evaluations_per_image,
    markdown_table,
    mean_and_standard_error,
    swapped_caption,
    word_order_rate,
    rows,
    select_rows,
    summarise,
    training_lanes,
    training_runs,
    training_steps,
    weights_path,
)
from cascade.demo.training import StageRun
from cascade.diffusion import in_guidance_interval, time_grid
from cascade.pipeline import Cascade
from cascade.stages import BaseStage
from cascade.stages.config import SamplingSettings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_mean_and_standard_error_are_the_sample_mean_and_std_over_sqrt_n():
    mean, error = mean_and_standard_error([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3)
    variance = sum((v - 7 / 3) ** 2 for v in (1.0, 2.0, 4.0)) / 2
    assert error == pytest.approx(math.sqrt(variance / 3))
    assert mean_and_standard_error([0.5]) == (0.5, 0.0)
    assert all(math.isnan(v) for v in mean_and_standard_error([math.nan]))


def scored(row: str, seed: int, exact: float) -> Sampled:
    balanced = {check: exact for check in CHECKS}
    return Sampled(row, seed, "", 40, balanced, {"1 object": balanced}, {"fid": 10.0 + seed})


def test_a_rows_difference_from_the_baseline_is_paired_by_training_seed():
    """Seed-to-seed spread shared by both rows cancels: the change below is +0.1 on every seed, so
    its difference has no error although each row's own mean spreads widely over seeds."""
    sampled = [scored("base", s, e) for s, e in ((0, 0.2), (1, 0.5), (2, 0.8))]
    sampled += [scored("new", s, e + 0.1) for s, e in ((0, 0.2), (1, 0.5), (2, 0.8))]
    summary = summarise(sampled, ["base", "new"])
    assert summary[1]["exact"][0] == pytest.approx(0.6)
    assert summary[1]["exact"][1] == pytest.approx(0.3 / math.sqrt(3))
    assert summary[1]["delta exact"] == (pytest.approx(0.1), pytest.approx(0.0, abs=1e-12))
    assert summary[0]["fid"] == (pytest.approx(11.0), pytest.approx(1 / math.sqrt(3)))
    assert summary[1]["delta fid"] == (pytest.approx(0.0), pytest.approx(0.0))  # the same FID on every seed


def test_the_table_marks_differences_beyond_two_standard_errors_and_names_its_command():
    sampled = [scored("base", s, 0.2) for s in range(3)] + [scored("big", s, 0.4 + 0.01 * s) for s in range(3)]
    sampled += [scored("noise", s, 0.2 + (0.1 if s == 0 else -0.05)) for s in range(3)]
    summary = summarise(sampled, ["base", "big", "noise"])
    text = markdown_table(summary, AblationPlan(), "cascade ablation --out X",
                          {check: 1.0 for check in CHECKS})
    lines = {}  # the first table (the per-stratum table below it repeats the row names)
    for line in text.splitlines():
        if line.startswith("| "):
            lines.setdefault(line.split(" | ")[0].strip("| "), line)
    assert lines["big"].count("+0.21 ± 0.01 *") == 3  # Δ exact, Δ shape, Δ count
    assert lines["big"].split(" | ")[10] == "–"  # Δ FID: the same FID as the baseline on every seed
    assert "*" not in lines["noise"]  # +0.00 +- 0.05: inside two standard errors
    assert "cascade ablation --out X" in text


def _last_value(argv: list[str], flag: str) -> str:
    """The value of the last `flag` in argv (a later flag overrides an earlier one)."""
    return argv[len(argv) - 1 - argv[::-1].index(flag) + 1]


def test_the_placement_table_pairs_the_side_by_seed_and_is_left_out_without_placement():
    def placed(row: str, seed: int, side: float) -> Sampled:
        return dataclasses.replace(scored(row, seed, 0.3), placement={"axis": 1.0, "side": side, "n": 40.0, "order": side,
                                                                 "binding": side - 0.1})

    sampled = [placed("base", s, 0.4 + 0.1 * s) for s in range(3)] + [placed("coord", s, 0.6 + 0.1 * s) for s in range(3)]
    summary = summarise(sampled, ["base", "coord"])
    assert summary[1]["side"][0] == pytest.approx(0.7)
    assert summary[1]["delta side"] == (pytest.approx(0.2), pytest.approx(0.0, abs=1e-12))
    text = markdown_table(summary, AblationPlan(), "cascade ablation", {check: 1.0 for check in CHECKS})
    assert "| coord | 40 | 1.00 ± 0.00 | 0.70 ± 0.06 | +0.20 ± 0.00 | 0.70 ± 0.06 | +0.20 ± 0.00 | 0.60 ± 0.06 | +0.20 ± 0.00 |" \
        in text
    plain = [scored("base", s, 0.3) for s in range(3)]
    assert "Placement" not in markdown_table(summarise(plain, ["base"]), AblationPlan(), "x", {c: 1.0 for c in CHECKS})


def test_every_row_differs_from_the_baseline_in_what_its_name_says():
    by_key = {row.key: row for row in rows()}
    assert len(by_key) == len(rows())  # each row samples into a folder of its own
    baseline, grid, interval = by_key["baseline"], by_key["grid"], by_key["interval"]
    autoguidance, posthoc, together = by_key["autoguidance"], by_key["phema"], by_key["all"]
    for key, bias in (("sigmoid", None), ("sigmoid_b0", "0"), ("sigmoid_b2", "2")):
        row = by_key[key]
        assert row.sampling == baseline.sampling and row.weights == baseline.weights
        change = TRAININGS[row.training][len(TRAININGS["min_snr"]):]  # what the row adds to the baseline's flags
        assert TRAININGS[row.training][:len(TRAININGS["min_snr"])] == TRAININGS["min_snr"]
        assert change[:2] == ("--model.init_args.loss_weighting", "sigmoid")
        assert (change[3] if bias else None) == bias and f"b = {bias or -3}" in row.name
    assert grid.sampling["time_grid"] != baseline.sampling["time_grid"]
    assert interval.sampling["guidance_interval"] is not None and "guidance_interval" not in baseline.sampling
    assert autoguidance.guide is not None and baseline.guide is None
    assert posthoc.weights.startswith("phema:") and baseline.weights == "ema"
    assert (together.training, together.weights, together.guide) == ("sigmoid", posthoc.weights,
                                                                       autoguidance.guide)
    for row in (baseline, grid, interval, autoguidance, posthoc):
        assert row.training == "min_snr"


def test_function_evaluations_count_two_per_guided_step_and_one_per_unguided():
    stage = BaseStage(unet={"image_size": 16, "base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
                            "attention_resolutions": [], "norm_groups": 4, "num_classes": 3},
                      image_size=16, conditioning="class")
    plain = SamplingSettings("dpmpp_2m", 10, 1.0, time_grid="log_snr")
    assert function_evaluations_per_image(Cascade([stage], [plain])) == 10
    assert function_evaluations_per_image(Cascade([stage], [plain.updated(guidance=3.0)])) == 20
    interval = (-2.0, 3.0)
    times = time_grid(stage.schedule, 10, "log_snr")[:-1].float()
    inside = int(in_guidance_interval(stage.schedule.log_snr_unchecked(times), interval).sum())
    assert 0 < inside < 10
    with_interval = plain.updated(guidance=3.0, guidance_interval=interval)
    assert function_evaluations_per_image(Cascade([stage], [with_interval])) == 10 + inside
    heun = SamplingSettings("heun", 6, 3.0)
    assert function_evaluations_per_image(Cascade([stage], [heun])) == 2 * (2 * 6 - 1)


def test_the_sampler_rows_sample_the_demo_recipes_networks_at_its_nfe_and_change_only_the_sampler():
    by_key = {row.key: row for row in rows()}
    reference = by_key["sigmoid_b0+lr2e-3+layout8+loss+pre3k"]
    stage = BaseStage(unet={"image_size": 16, "base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
                            "attention_resolutions": [], "norm_groups": 4, "num_classes": 3},
                      image_size=16, conditioning="class")
    reference_nfe = function_evaluations_per_image(Cascade([stage], [SamplingSettings().updated(**reference.sampling)]))
    samplers = {}
    for suffix in ("logsnr", "ddpm", "sde"):
        row = by_key[f"{reference.key}+{suffix}"]
        assert (row.training, row.weights, row.guide) == (reference.training, reference.weights, reference.guide)
        changed = {key for key in row.sampling if row.sampling[key] != reference.sampling.get(key)}
        assert changed <= {"sampler", "time_grid"} and changed
        settings = SamplingSettings().updated(**row.sampling)
        assert function_evaluations_per_image(Cascade([stage], [settings])) == reference_nfe == 40
        samplers[row.sampling["sampler"]] = row.sampling["time_grid"]
    assert samplers == {"dpmpp_2m": "log_snr", "ddpm": "log_snr", "dpmpp_3m_sde": "uniform_t"}


def test_the_rebound_row_samples_the_references_networks_guided_away_from_each_captions_rebound_caption(
        monkeypatch, tmp_path):
    from cascade.data.synthetic import rebound_caption
    from cascade.demo import ablation
    from cascade.eval.heldout import heldout_caption_set

    by_key = {row.key: row for row in rows()}
    reference = by_key["sigmoid_b0+lr2e-3+layout8+loss+pre3k"]
    row = by_key[f"{reference.key}+rebound"]
    assert (row.training, row.weights, row.guide, row.sampling) == \
        (reference.training, reference.weights, reference.guide, reference.sampling)
    assert row.rebound_negatives and not reference.rebound_negatives
    jobs = []

    class Sampled(Exception):
        pass

    def sample_folder(cascade, conditions, job, folder, console=None):
        jobs.append((conditions, job))
        raise Sampled

    monkeypatch.setattr(ablation, "sample_folder", sample_folder)
    monkeypatch.setattr(ablation, "weights_path", lambda run, spec: Path(spec))
    monkeypatch.setattr(ablation.Cascade, "from_paths", classmethod(lambda cls, paths, settings, device="cpu": None))
    scenes = heldout_caption_set(20)
    for sampled_row in (reference, row):
        with pytest.raises(Sampled):
            ablation.sample_and_score(sampled_row, None, scenes, tmp_path, AblationPlan(), None, None)
    (conditions, plain), (same_conditions, rebound) = jobs
    assert conditions == same_conditions and plain.negative_prompts is None
    assert rebound.negative_prompts == tuple(rebound_caption(scene["caption"]) for scene in scenes)
    assert sum(negative is not None for negative in rebound.negative_prompts) >= 10


def test_the_cross_attention_row_is_the_layout_recipe_with_attention_at_32_px_for_the_same_compute():
    reference, changed = "sigmoid_b0+lr2e-3+layout8+loss+pre3k", "sigmoid_b0+lr2e-3+layout8+loss+pre3k+xattn32"
    assert TRAININGS[changed] == (*TRAININGS[reference], "--model.init_args.unet.cross_attention_resolutions",
                                  "[32, 16, 8]", "--model.init_args.unet.head_channels", "16")
    plan = AblationPlan(train_steps=1200)
    # the same layout pre-training taken off both, then the dearer step trains fewer of the rest
    cost = TRAINING_STEP_COST[changed] / TRAINING_STEP_COST[reference]
    assert 1.1 < cost < 1.15
    assert training_steps(changed, plan) == pytest.approx(training_steps(reference, plan) / cost, abs=8)


def test_the_muon_row_is_the_layout_recipe_with_muon_for_the_same_compute():
    reference, changed = "sigmoid_b0+lr2e-3+layout8+loss+pre3k", "sigmoid_b0+lr2e-3+layout8+loss+pre3k+muon"
    assert TRAININGS[changed] == (*TRAININGS[reference], "--model.init_args.optimizer.algorithm", "muon")
    plan = AblationPlan(train_steps=1200)
    cost = TRAINING_STEP_COST[changed] / TRAINING_STEP_COST[reference]
    assert 1.15 < cost < 1.25  # its optimiser step: 55 ms against AdamW's 4 ms, on a 259 ms step
    assert training_steps(changed, plan) == pytest.approx(training_steps(reference, plan) / cost, abs=8)
    for lr in ("4e-3", "8e-3"):
        assert TRAININGS[f"{changed}+lr{lr}"] == (*TRAININGS[changed], "--model.init_args.optimizer.lr", lr)
        assert TRAINING_STEP_COST[f"{changed}+lr{lr}"] == TRAINING_STEP_COST[changed]


def test_the_demos_base_trains_with_the_muon_recipe_and_the_gated_layout_choices_the_ablation_chose():
    base = yaml.safe_load((REPO / "configs" / "demo" / "base.yaml").read_text())["model"]["init_args"]
    assert (base["optimizer"]["algorithm"], base["optimizer"]["lr"]) == ("muon", 4.0e-3)
    unet = base["unet"]
    gates = TRAININGS[f"{LONGER_MUON}+gates4"][len(TRAININGS[LONGER_MUON]):]
    assert gates == ("--model.init_args.unet.text_layout_choices", str(unet["text_layout_choices"]),
                     "--model.init_args.unet.text_layout_choice_form", unet["text_layout_choice_form"])
    # 1.6x the 1,000 steps that cost what the 1,200 AdamW steps did (the same compute at 1.18x the step),
    # as the ablation's 1.4x-compute yardstick trains 1.6x the recipe's steps ...
    recipe = "sigmoid_b0+lr2e-3+layout8+loss+pre3k+muon+lr4e-3"
    cost = TRAINING_STEP_COST[recipe] / LAYOUT_LOSS_COST
    longer = 1600
    assert longer / 1.6 * cost == pytest.approx(1200, rel=0.02)
    plan = AblationPlan(train_steps=1200)
    assert longer / 1000 == pytest.approx(training_steps(LONGER_MUON, plan) / training_steps(recipe, plan), abs=0.03)
    # ... less the steps the gated choices' layout pre-training costs more (the same compute): 1,540. The demo
    # trains its base at least that long; longer, 2,000, in the time the SR lane's freed core saves it
    same_compute = longer - CHOICES4_PRETRAINING_COST / cost
    assert same_compute == pytest.approx(1540, abs=FULL.validations)
    assert FULL.train_steps[0] >= same_compute


def test_the_muon_yardstick_is_the_demos_recipe_given_1_4_times_its_compute_and_1_6_times_its_steps():
    """The layout pre-training is a fixed cost, so 1.4x the compute is 1.6x the denoiser steps: what the
    demo's base gains from 1,000 to 1,600 steps."""
    recipe, longer = "sigmoid_b0+lr2e-3+layout8+loss+pre3k+muon+lr4e-3", \
        "sigmoid_b0+lr2e-3+layout8+loss+pre3k+muon+lr4e-3+compute1.4x"
    assert TRAININGS[longer] == TRAININGS[recipe]
    assert (TRAINING_STEP_COST[longer], TRAINING_FIXED_COST[longer]) == (TRAINING_STEP_COST[recipe],
                                                                         TRAINING_FIXED_COST[recipe])
    plan = AblationPlan(train_steps=1200, batch_size=16, snapshots=8)

    def compute(training: str) -> float:  # in steps of 16 images of the plain base
        return training_steps(training, plan) * TRAINING_STEP_COST[training] + TRAINING_FIXED_COST[training]

    assert compute(longer) == pytest.approx(1.4 * compute(recipe), rel=0.02)
    assert training_steps(longer, plan) / training_steps(recipe, plan) == pytest.approx(1.6, abs=0.03)
    row = {row.key: row for row in rows()}[longer]
    assert row.training == longer and row.sampling == {row.key: row for row in rows()}[recipe].sampling
    assert "1.4x the compute" in row.name and "yardstick" in row.name
    by_key = {row.key: row for row in rows()}
    for key, change in (("cfg1", {"guidance": 1.0}), ("cfg2", {"guidance": 2.0}),
                        ("interval", {"guidance_interval": [-2.13, 2.55]}),
                        ("cfg2+interval", {"guidance": 2.0, "guidance_interval": [-2.13, 2.55]})):
        sampled = by_key[f"{longer}+{key}"]  # its networks, sampled otherwise
        assert sampled.training == longer and (sampled.weights, sampled.guide) == (row.weights, None)
        assert sampled.sampling == {**row.sampling, **change}


LONGER_MUON = "sigmoid_b0+lr2e-3+layout8+loss+pre3k+muon+lr4e-3+compute1.4x"


@pytest.mark.parametrize("change, flags, dearer_step", [
    ("choices4", ("--model.init_args.unet.text_layout_choices", "4"), False),
    ("gates4", ("--model.init_args.unet.text_layout_choices", "4", "--model.init_args.unet.text_layout_choice_form",
                "gates"), False),
    ("xt", ("--model.init_args.unet.text_layout_reads_x_t", "true"), True),
])
def test_a_layout_map_row_is_the_longer_muon_base_changed_at_the_same_compute_and_sampling(change, flags, dearer_step):
    """Four layout choices, scaled or gated, cost the same per step (their FLOPs), the map that reads x_t 1.01x
    (measured); all cost more in the layout pre-training (its measured time): fewer denoiser steps for the same compute,
    sampled as the row it is read against."""
    training = f"{LONGER_MUON}+{change}"
    assert TRAININGS[training] == (*TRAININGS[LONGER_MUON], *flags)
    assert (TRAINING_STEP_COST[training] > TRAINING_STEP_COST[LONGER_MUON]) is dearer_step
    assert TRAINING_STEP_COST[training] >= TRAINING_STEP_COST[LONGER_MUON]
    assert TRAINING_FIXED_COST[training] > TRAINING_FIXED_COST[LONGER_MUON]
    plan = AblationPlan(train_steps=1200, batch_size=16, snapshots=8)

    def compute(name: str) -> float:  # in steps of 16 images of the plain base
        return training_steps(name, plan) * TRAINING_STEP_COST[name] + TRAINING_FIXED_COST[name]

    assert compute(training) == pytest.approx(compute(LONGER_MUON), rel=0.01)
    assert training_steps(training, plan) < training_steps(LONGER_MUON, plan)
    by_key = {row.key: row for row in rows()}
    row, reference = by_key[f"{training}+cfg2+interval"], by_key[f"{LONGER_MUON}+cfg2+interval"]
    assert row.training == training and (row.sampling, row.weights, row.guide) == (reference.sampling, "ema", None)


def test_the_layout_choices_read_below_log_snr_minus_2_train_as_the_layout_choices():
    choices, plan = f"{LONGER_MUON}+choices4", AblationPlan(train_steps=1200, batch_size=16, snapshots=8)
    below = f"{choices}+below-2"  # the chosen map read only below log-SNR -2: the same compute
    assert TRAININGS[below] == (*TRAININGS[choices], "--model.init_args.layout_choice_below", "-2.0")
    assert training_steps(below, plan) == training_steps(choices, plan)
    by_key = {row.key: row for row in rows()}
    assert by_key[f"{below}+cfg2+interval"].sampling == by_key[f"{LONGER_MUON}+cfg2+interval"].sampling


def test_the_demo_samples_its_base_at_the_guidance_the_ablation_chose_for_its_length():
    """Guidance 2 in EDM2's interval: on the one map's networks of the demo's length then, exact +0.09 +- 0.04*,
    count +0.04*, FID -1.6* against 3 everywhere; on the gated choices' networks at the demo's 1.3x denoiser
    steps, guidance 3 in the interval leaves the alignment the same and costs FID +0.40 +- 0.05*
    (docs/benchmarks.md, "Guidance for the longer base", "Guidance for the gated choices")."""
    by_key = {row.key: row for row in rows()}
    row = by_key["sigmoid_b0+lr2e-3+layout8+loss+pre3k+muon+lr4e-3+compute1.4x+cfg2+interval"]
    assert FULL.guidance == row.sampling["guidance"] == 2.0
    assert list(FULL.guidance_interval) == row.sampling["guidance_interval"] == [-2.13, 2.55]
    demo_length = f"{LONGER_MUON}+gates4+steps1.3x"
    assert by_key[f"{demo_length}+cfg2+interval"].sampling == row.sampling
    assert by_key[f"{demo_length}+interval"].sampling == {**row.sampling, "guidance": 3.0}
    for weight in ("cfg1.5+interval", "cfg2+interval", "cfg2.5+interval", "interval", "cfg4+interval", "cfg2"):
        assert by_key[f"{LONGER_MUON}+gates4+{weight}"].training == f"{LONGER_MUON}+gates4"  # the same networks
    assert any(axis.key == "guidance" and FULL.guidance in axis.values for axis in FULL.sweep)


def test_the_demo_length_yardstick_trains_the_gated_choices_for_the_demos_extra_denoiser_steps():
    """The demo's base trains 2,000 steps where 1,540 are the ablation's compute (`FULL.train_steps`); its
    yardstick trains the gated choices' flags for the same ratio of denoiser steps, the pre-training as it was."""
    gates, plan = f"{LONGER_MUON}+gates4", AblationPlan(train_steps=1200, batch_size=16, snapshots=8)
    longer = f"{gates}+steps1.3x"
    assert TRAININGS[longer] == TRAININGS[gates]
    ratio = training_steps(longer, plan) / training_steps(gates, plan)
    assert ratio == pytest.approx(FULL.train_steps[0] / 1540, abs=plan.snapshots / training_steps(gates, plan))
    assert ratio > 1.25


def test_the_muon_recipes_sampling_rows_reuse_its_networks_and_change_only_the_guidance_or_the_ema_length():
    by_key = {row.key: row for row in rows()}
    recipe = "sigmoid_b0+lr2e-3+layout8+loss+pre3k+muon+lr4e-3"
    reference = by_key[recipe]
    changes = {"cfg2": ("ema", 2.0), "cfg5": ("ema", 5.0), "phema0.05": ("phema:0.05", 3.0),
               "phema0.2": ("phema:0.2", 3.0)}
    for key, (weights, guidance) in changes.items():
        row = by_key[f"{recipe}+{key}"]
        assert row.training == recipe and (row.weights, row.guide) == (weights, None)
        assert row.sampling == {**reference.sampling, "guidance": guidance}
        assert (f"guidance {guidance:g}" if weights == "ema" else f"sigma_rel {weights[6:]}") in row.name


def test_the_scale_yardsticks_are_the_layout_recipe_given_16_and_64_times_its_compute_at_batch_256(tmp_path):
    """The GPU yardsticks spend 16x / 64x the reference's compute (its denoiser steps at their step
    cost and the layout pre-training's fixed cost, both in steps of 16 images), in steps of 256."""
    reference = "sigmoid_b0+lr2e-3+layout8+loss+pre3k"
    plan = AblationPlan(train_steps=1200, batch_size=16, snapshots=8)

    def compute(training: str) -> float:  # in steps of 16 images of the plain base
        return (training_steps(training, plan) * TRAINING_BATCH.get(training, 16) / 16 * TRAINING_STEP_COST[training]
                + TRAINING_FIXED_COST[training])

    assert training_steps(reference, plan) == 736 and compute(reference) == pytest.approx(1200, abs=8)
    for factor in (16, 64):
        training = f"{reference}+b256x{factor}"
        assert TRAININGS[training] == TRAININGS[reference]
        assert training_steps(training, plan) % plan.snapshots == 0
        assert compute(training) == pytest.approx(1200 * factor, abs=8 * 16 * TRAINING_STEP_COST[training])
        run = training_runs(tmp_path, {"train": tmp_path / "train", "val": tmp_path / "val"}, plan, {training})[training, 0]
        assert _last_value(run.command(), "--data.init_args.batch_size") == "256"


def test_a_gpu_ablation_trains_every_run_on_the_gpu_with_the_loader_workers_asked_for(tmp_path):
    plan = dataclasses.replace(FAST_ABLATION, accelerator="gpu", loader_workers=3)
    assert plan.device == "cuda" and FAST_ABLATION.device == "cpu"
    runs = training_runs(tmp_path, {"train": tmp_path / "train", "val": tmp_path / "val"}, plan, {"min_snr"})
    for run in runs.values():
        argv = run.command()
        assert _last_value(argv, "--trainer.accelerator") == "gpu"
        assert _last_value(argv, "--data.init_args.num_workers") == "3"
    for run in training_runs(tmp_path, {"train": tmp_path / "train", "val": tmp_path / "val"}, FAST_ABLATION,
                             {"min_snr"}).values():
        assert "--trainer.accelerator" not in run.command()  # the config's (cpu)


def test_each_training_run_records_its_seed_and_trains_with_it(tmp_path):
    """The run record holds the training seed (read back by the table, not parsed from the run's
    name), and its `cascade fit` command sets seed_everything and the data order from it, once."""
    runs = training_runs(tmp_path, {"train": tmp_path / "train", "val": tmp_path / "val"}, FAST_ABLATION)
    assert sorted(runs) == sorted((training, seed) for training in TRAININGS for seed in FAST_ABLATION.seeds)
    for (training, seed), run in runs.items():
        argv = run.command()
        assert run.seed == seed and run.name == f"{training}-seed{seed}"
        for flag in ("--seed_everything", "--data.init_args.seed"):
            assert argv.count(flag) == 1 and argv[argv.index(flag) + 1] == str(seed)


def test_a_training_at_another_batch_sees_the_same_images_in_more_steps(tmp_path):
    """Same compute per row: the batch-8 training trains plan.train_steps x plan.batch_size images,
    in twice the steps, with its validation and post-hoc EMA snapshots on its own step count."""
    plan = AblationPlan(train_steps=1200, batch_size=16, snapshots=8)
    runs = training_runs(tmp_path, {"train": tmp_path / "train", "val": tmp_path / "val"}, plan,
                         {"sigmoid_b0+lr2e-3", "sigmoid_b0+lr2e-3+b8"})
    for training, batch, steps in (("sigmoid_b0+lr2e-3", 16, 1200), ("sigmoid_b0+lr2e-3+b8", 8, 2400)):
        run, argv = runs[training, 0], runs[training, 0].command()
        assert run.steps == steps and steps * batch == 1200 * 16
        assert _last_value(argv, "--data.init_args.batch_size") == str(batch)
        assert _last_value(argv, "--trainer.max_steps") == _last_value(argv, "--trainer.val_check_interval") == str(steps)
        assert _last_value(argv, "--posthoc_ema.snapshot_every_n_steps") == str(steps // 8)
    # otherwise the two trainings are the same recipe
    assert TRAININGS["sigmoid_b0+lr2e-3+b8"] == TRAININGS["sigmoid_b0+lr2e-3"]
    with pytest.raises(ValueError, match="do not divide into batches of 8"):
        training_steps("sigmoid_b0+lr2e-3+b8", AblationPlan(train_steps=7, batch_size=3))


def test_a_training_with_a_dearer_step_trains_fewer_steps_for_the_same_compute():
    plan = AblationPlan(train_steps=1200, batch_size=16, snapshots=8)
    cost = TRAINING_STEP_COST["sigmoid_b0+lr2e-3+attn16"]
    steps = training_steps("sigmoid_b0+lr2e-3+attn16", plan)
    assert steps % plan.snapshots == 0 and steps * cost <= 1200 < (steps + plan.snapshots) * cost
    assert training_steps("sigmoid_b0+lr2e-3", plan) == 1200
    assert TRAININGS["sigmoid_b0+lr2e-3+attn16"][:len(TRAININGS["sigmoid_b0+lr2e-3"])] == TRAININGS["sigmoid_b0+lr2e-3"]


def test_a_row_naming_unknown_weights_is_refused(tmp_path):
    run = StageRun("min_snr-seed0", tmp_path / "base.yaml", tmp_path / "run", 8, ())
    with pytest.raises(ValueError, match="weights: expected 'ema' or 'phema"):
        weights_path(run, "swa:0.1")
    assert weights_path(run, "ema") == run.last_checkpoint
    assert isinstance(Row("x", "x").sampling, dict)


def test_selected_rows_keep_the_baseline_and_train_only_what_they_sample_with(tmp_path):
    main_rows, sweep_rows = select_rows(["sigmoid_b0+lr2e-3", "interval"])
    assert [row.key for row in main_rows] == ["baseline", "sigmoid_b0+lr2e-3", "interval"] and sweep_rows == []
    trainings = {row.training for row in main_rows}
    runs = training_runs(tmp_path, {"train": tmp_path / "train", "val": tmp_path / "val"}, FAST_ABLATION, trainings)
    assert {training for training, _ in runs} == {"min_snr", "sigmoid_b0+lr2e-3"}
    argv = runs["sigmoid_b0+lr2e-3", 0].command()
    for flag, value in (("--model.init_args.loss_weighting", "sigmoid"), ("--model.init_args.sigmoid_bias", "0"),
                        ("--model.init_args.optimizer.lr", "2.0e-3")):
        assert _last_value(argv, flag) == value
    baseline = runs["min_snr", 0].command()  # the old recipe in full, whatever the demo's config now says
    for flag, value in (("--model.init_args.loss_weighting", "min_snr"), ("--model.init_args.min_snr_gamma", "5.0"),
                        ("--model.init_args.optimizer.lr", "1.0e-3")):
        assert _last_value(baseline, flag) == value
    assert select_rows(None) == (rows(), select_rows(None)[1]) and len(select_rows(None)[1]) > 0


def test_a_reference_row_replaces_the_baseline_as_the_row_differences_are_taken_from(tmp_path):
    main_rows, _ = select_rows(["sigmoid_b0+lr2e-3+steps4x", "sigmoid_b0+lr2e-3+steps2x"],
                               reference="sigmoid_b0+lr2e-3")
    assert [row.key for row in main_rows] == ["sigmoid_b0+lr2e-3", "sigmoid_b0+lr2e-3+steps2x",
                                              "sigmoid_b0+lr2e-3+steps4x"]
    assert [row.key for row in select_rows(None, reference="grid")[0]][:2] == ["grid", "baseline"]
    assert len(select_rows(None, reference="grid")[0]) == len(rows())
    runs = training_runs(tmp_path, {"train": tmp_path / "train", "val": tmp_path / "val"}, FAST_ABLATION,
                         {row.training for row in main_rows})
    longer, recipe = runs["sigmoid_b0+lr2e-3+steps4x", 0], runs["sigmoid_b0+lr2e-3", 0]
    assert longer.steps == 4 * recipe.steps == 4 * FAST_ABLATION.train_steps
    assert runs["sigmoid_b0+lr2e-3+steps2x", 0].steps == 2 * recipe.steps
    assert longer.overrides[-len(TRAININGS["sigmoid_b0+lr2e-3"]):] == TRAININGS["sigmoid_b0+lr2e-3"]
    # snapshots keep their count: one every steps / snapshots
    assert _last_value(longer.command(), "--posthoc_ema.snapshot_every_n_steps") == str(
        longer.steps // FAST_ABLATION.snapshots)


def test_the_placement_rows_are_the_2x_yardstick_with_one_change_and_its_steps(tmp_path):
    yardstick, coord, layer = ("sigmoid_b0+lr2e-3+steps2x", "sigmoid_b0+lr2e-3+coord+steps2x",
                               "sigmoid_b0+lr2e-3+layer3+steps2x")
    assert TRAININGS[coord] == (*TRAININGS[yardstick], "--model.init_args.unet.coordinate_channels", "true")
    assert TRAININGS[layer] == (*TRAININGS[yardstick], "--model.init_args.text_encoder.layer", "3")
    assert TRAININGS["sigmoid_b0+lr2e-3+positions+steps2x"] == (*TRAININGS[yardstick],
                                                                "--model.init_args.unet.text_positions", "32")
    assert TRAININGS["sigmoid_b0+lr2e-3+refiner+steps2x"] == (
        *TRAININGS[yardstick], "--model.init_args.unet.text_positions", "32", "--model.init_args.unet.text_refiner_layers", "2")
    assert TRAININGS["sigmoid_b0+lr2e-3+coord+refiner+pooled+steps2x"] == (
        *TRAININGS[coord], *TRAININGS["sigmoid_b0+lr2e-3+refiner+steps2x"][len(TRAININGS[yardstick]):],
        "--model.init_args.unet.text_refiner_pooled", "true")
    assert TRAININGS["sigmoid_b0+lr2e-3+vmse+steps2x"] == (*TRAININGS[yardstick], "--model.init_args.loss_weighting", "uniform")
    runs = training_runs(tmp_path, {"train": tmp_path / "train", "val": tmp_path / "val"}, FAST_ABLATION,
                         {yardstick, coord, layer})
    assert runs[coord, 0].steps == runs[layer, 0].steps == runs[yardstick, 0].steps == 2 * FAST_ABLATION.train_steps
    # the refiner's step costs more: fewer steps, the same compute (1,200-step plan: 2,400 / 1.17)
    assert training_steps("sigmoid_b0+lr2e-3+refiner+steps2x", AblationPlan(train_steps=1200)) == 2048


def test_the_swapped_caption_exchanges_the_relations_noun_phrases_of_two_different_colours():
    scene = {"caption": "a purple square below a yellow circle", "relation": {"relation": "below"},
             "objects": [{"colour": "purple"}, {"colour": "yellow"}]}
    assert swapped_caption(scene) == "a yellow circle below a purple square"
    assert swapped_caption({**scene, "objects": [{"colour": "red"}] * 2}) is None  # same words either way
    assert swapped_caption({**scene, "relation": None}) is None
    assert swapped_caption({**scene, "objects": scene["objects"] * 2}) is None


class _MirrorStage:
    """A stand-in base predicting x0 (`target` "x0"): the image itself given its caption, the image
    mirrored given the swapped one (a denoiser that reads word order), or one answer for both."""

    def __init__(self, images: torch.Tensor, captions: list[str], reads_order: bool):
        from cascade.diffusion import NoiseSchedule

        self.schedule, self.target, self.device = NoiseSchedule.cosine(), "x0", torch.device("cpu")
        self.images, self.captions, self.reads_order = images, captions, reads_order

    def make_condition(self, prompts: list[str]) -> list[str]:
        return prompts

    def __call__(self, x_t, t, condition):
        if not self.reads_order or condition == self.captions:
            return self.images
        return self.images.flip(-1)


def test_word_order_rate_is_one_for_a_denoiser_that_reads_the_order_and_one_half_for_one_that_cannot():
    torch.manual_seed(0)
    images = torch.rand(3, 3, 8, 8) * 2 - 1
    captions = ["a red circle left of a blue square", "a green square above a red circle", "a blue circle below a red circle"]
    swapped = ["a blue square left of a red circle", "a red circle above a green square", "a red circle below a blue circle"]
    assert word_order_rate(_MirrorStage(images, captions, True), images, captions, swapped) == 1.0
    assert word_order_rate(_MirrorStage(images, captions, False), images, captions, swapped) == 0.5


def test_the_paired_differences_are_taken_from_the_first_row():
    def one(row, seed, exact):
        return Sampled(row, seed, "", 20, {c: exact for c in CHECKS}, {"s": {c: exact for c in CHECKS}},
                       {"fid": 1.0, "precision": 0.5, "recall": 0.5})

    sampled = [one(row, seed, base + 0.1 * seed) for row, base in (("ref", 0.5), ("other", 0.2)) for seed in (0, 1, 2)]
    summary = summarise(sampled, ["other", "ref"])
    assert summary[1]["delta exact"] == pytest.approx((0.3, 0.0))
    assert summary[0]["delta exact"] == pytest.approx((0.0, 0.0))


def test_training_lanes_have_about_equal_steps_and_keep_every_run():
    steps = [1200, 1200, 1200, 4800, 4800, 4800]
    runs = [StageRun(f"r{i}", Path("c.yaml"), Path(f"r{i}"), n, ()) for i, n in enumerate(steps)]
    lanes = training_lanes(runs)
    assert sorted(run.name for lane in lanes for run in lane) == sorted(run.name for run in runs)
    assert sorted(sum(run.steps for run in lane) for lane in lanes) == [8400, 9600]  # the best split
    assert training_lanes(runs[:1]) == [[runs[0]]]


@pytest.mark.parametrize(("argv", "message"), [
    (["--rows", "baseline,sigmoid_b9"], "--rows: unknown row key(s) sigmoid_b9; known: baseline,"),
    (["--reference", "ema0.05-guidance3"], "--reference: unknown row key 'ema0.05-guidance3' (a main row)"),
    (["--train-steps", "801"], "--train-steps: must be a multiple of 8"),
    (["--seeds", "0,a"], "--seeds: expected comma-separated integers"),
    (["--captions", "0"], "--captions: must be >= 1"),
    (["--lanes", "0"], "--lanes: must be >= 1"),
    (["--train-images", "0"], "--train-images: must be >= 1"),
    (["--loader-workers", "-1"], "--loader-workers: must be >= 0"),
    (["--accelerator", "tpu"], "--accelerator: invalid choice: 'tpu'"),
])
def test_bad_flags_are_refused_naming_the_flag_before_anything_runs(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["ablation", "--out", str(tmp_path / "out"), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert torch.get_num_threads() >= 1


def test_the_layout_probes_word_order_is_one_for_the_right_layout_and_one_half_for_an_order_blind_one():
    """`layout_word_order`: the prediction for the caption against the one for the swapped caption,
    each compared with the caption's target; identical predictions are ties, counted half."""
    from cascade.demo.layout_probe import layout_word_order

    torch.manual_seed(0)
    targets = torch.randn(6, 3, 8, 8)
    mirrored = targets.flip(-1)
    assert layout_word_order(targets, mirrored, targets) == 1.0
    assert layout_word_order(mirrored, targets, targets) == 0.0
    blend = (targets + mirrored) / 2
    assert layout_word_order(blend, blend, targets) == 0.5


def test_the_layout_probe_trains_the_bases_own_text_path_and_scores_both_splits():
    from cascade.demo.layout_probe import LayoutProbe, run_probe
    from cascade.nn.text_conditioning import TextConditioning, TextLayout

    probe = LayoutProbe()
    assert isinstance(probe.text, TextConditioning) and isinstance(probe.layout, TextLayout)
    scores = run_probe(steps=3, batch=4, every=2, train_images=24, heldout_images=120, log=lambda line: None)
    assert [score["step"] for score in scores] == [0, 2, 3]
    assert all(0.0 <= score[key] <= 1.0 for score in scores for key in ("train word order", "held-out word order"))
    assert math.isfinite(scores[-1]["loss"])


def test_a_smoke_plan_shortens_the_layout_pretraining_of_the_rows_that_have_one_only(tmp_path):
    """`AblationPlan.layout_pretraining_steps` reaches the trainings whose flags end with a layout
    pre-training; the baseline names it off (0) and keeps it off."""
    from cascade.demo.ablation import BASELINE_TRAINING, pretrains_layout

    assert not pretrains_layout(BASELINE_TRAINING)
    data = {"train": tmp_path / "train", "val": tmp_path / "val"}
    runs = training_runs(tmp_path, data, FAST_ABLATION, {"sigmoid_b0+lr2e-3", "sigmoid_b0+lr2e-3+layout8+loss+pre3k"})
    def last(flags: tuple[str, ...]) -> str:  # the value the CLI keeps: the last one given
        return [flags[i + 1] for i, flag in enumerate(flags[:-1]) if flag == "--model.init_args.layout_pretraining.steps"][-1]

    assert last(runs["sigmoid_b0+lr2e-3+layout8+loss+pre3k", 0].overrides) == str(FAST_ABLATION.layout_pretraining_steps)
    assert last(runs["sigmoid_b0+lr2e-3", 0].overrides) == "0"
