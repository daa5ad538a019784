"""`cascade ablation --sr BASE`: the SR stages' rows on a fixed base, their runs, pairing and sampling."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from cascade.cli import main
from cascade.demo import CONFIG_DIR, FULL
from cascade.demo.sr_ablation import (
    CHECKS,
    FAST_SR_ABLATION,
    SR_ROWS,
    SR_SAMPLING,
    SR_TRAINING_STEP_COST,
    SR_TRAININGS,
    SRAblationPlan,
    SRSampled,
    UPSAMPLED_KEY,
    UPSAMPLED_ROW,
    sample_and_score_sr,
    select_sr_rows,
    sr_function_evaluations,
    sr_markdown_table,
    sr_settings,
    sr_training_runs,
    sr_training_steps,
    summarise_sr,
    upsampling_control,
)
from cascade.data.transforms import to_tensor
from cascade.demo.training import StageRun
from cascade.eval.heldout import BALANCED, heldout_caption_set, images_per_caption, score_folder, stratified_alignment
from cascade.stages.config import SamplingSettings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_reference_row_samples_as_the_demo_did_and_every_other_row_changes_what_its_name_says():
    reference, *others = SR_ROWS
    assert sr_settings(reference) == SamplingSettings(guidance=1.0).updated(**SR_SAMPLING)
    assert (SR_SAMPLING["steps"], SR_SAMPLING["aug_level"], SR_SAMPLING["start_log_snr"]) == (5, 0.1, 6.0)
    for row in others:
        start = float(row.name.rsplit(" ", 1)[1]) if "start at log-SNR" in row.name else SR_SAMPLING["start_log_snr"]
        assert sr_settings(row) == dataclasses.replace(sr_settings(reference), start_log_snr=start), row.name
        # sampling-only rows reuse the reference's networks; the Muon rows train with Muon at lr 2e-3
        assert row.training == ("muon+lr2e-3" if row.name.startswith("Muon at lr 2e-3") else reference.training)
    flags = SR_TRAININGS["muon+lr2e-3"]
    assert dict(zip(flags[::2], flags[1::2])) == {"--model.init_args.optimizer.algorithm": "muon",
                                                  "--model.init_args.optimizer.lr": "2.0e-3"}


def test_a_dearer_sr_training_step_trains_fewer_steps_for_the_same_compute(tmp_path):
    plan = SRAblationPlan()
    cost = SR_TRAINING_STEP_COST["muon+lr2e-3"]
    assert cost > 1
    runs = sr_training_runs(tmp_path, {"train": tmp_path, "val": tmp_path}, plan, {"demo", "muon+lr2e-3"})
    steps = runs["muon+lr2e-3", 0, "sr1"].steps
    assert steps % plan.validations == 0 and abs(steps * cost - plan.train_steps) <= plan.validations * cost
    assert runs["demo", 0, "sr1"].steps == plan.train_steps
    assert sr_training_steps("demo", FAST_SR_ABLATION) == FAST_SR_ABLATION.train_steps


def test_the_sr_rows_train_each_stage_as_the_demo_does_once_per_seed(tmp_path):
    data = {"train": tmp_path / "train", "val": tmp_path / "val"}
    plan = SRAblationPlan()
    runs = sr_training_runs(tmp_path, data, plan, {"demo"})
    assert sorted(runs) == sorted(("demo", seed, stage) for seed in (0, 1, 2) for stage in ("sr1", "sr2"))
    for (_, seed, stage), run in runs.items():
        assert run.seed == seed and run.config == CONFIG_DIR / f"{stage}.yaml"
        assert run.steps == FULL.train_steps[1 if stage == "sr1" else 2] == plan.train_steps
        assert run.run_dir == tmp_path / "runs" / "demo" / f"seed{seed}" / stage
        flags = dict(zip(run.overrides[::2], run.overrides[1::2]))
        assert flags["--data.init_args.train_shards"] == str(data["train"])
        assert flags["--data.init_args.batch_size"] == str(FULL.batch_size)
        assert flags["--trainer.val_check_interval"] == str(plan.train_steps // FULL.validations)
        assert ["--seed_everything", str(seed)] == run.command()[run.command().index("--seed_everything"):][:2]


def test_the_sr_stages_network_evaluations_are_their_sampler_calls_doubled_where_guided():
    five = SamplingSettings(steps=5)
    assert sr_function_evaluations([five, five]) == 10
    assert sr_function_evaluations([five.updated(sampler="heun"), five.updated(guidance=2.0)]) == 9 + 10


def _sampled(row: str, seed: int, exact: float, effect: float, fid: float) -> SRSampled:
    final = {check: exact for check in CHECKS}
    return SRSampled(row, seed, "", 10, final, {check: effect for check in CHECKS},
                     {"fid": fid, "precision": 0.5, "recall": 0.5})


def test_the_sr_rows_differences_are_paired_by_seed_with_the_reference_row():
    sampled = [_sampled("ref", 0, 0.40, -0.05, 6.0), _sampled("ref", 1, 0.50, -0.04, 7.0),
               _sampled("ref", 2, 0.60, -0.06, 8.0),
               _sampled("late", 0, 0.43, -0.02, 6.5), _sampled("late", 1, 0.53, -0.01, 7.4),
               _sampled("late", 2, 0.63, -0.03, 8.6)]
    reference, late = summarise_sr(sampled, ["ref", "late"])
    assert late["exact"][0] == pytest.approx(0.53)
    assert late["exact"][1] == pytest.approx(0.1 / math.sqrt(3))  # seeds differ by 0.1: std 0.1, n 3
    assert late["delta exact"] == pytest.approx((0.03, 0.0), abs=1e-12)  # the same +0.03 in every seed
    assert late["effect exact"] == pytest.approx((-0.02, 0.01 / math.sqrt(3)))
    assert late["delta fid"][0] == pytest.approx(0.5)
    assert reference["delta exact"] == (0.0, 0.0)
    table = sr_markdown_table([reference, late], SRAblationPlan(), "cascade ablation --sr base.ckpt", Path("base.ckpt"))
    assert "Reproduce: `cascade ablation --sr base.ckpt`" in table
    assert "| late | " in table and "+0.03 ± 0.00" in table  # paired: no spread, no star without an error


def test_an_unknown_sr_row_is_refused_naming_it_and_the_reference_comes_first():
    with pytest.raises(ValueError, match="unknown SR row 'start99'"):
        select_sr_rows(["start99"])
    assert [row.key for row in select_sr_rows(["start8"], reference="start10")] == ["start10", "start8"]
    assert [row.key for row in select_sr_rows(None)] == [row.key for row in SR_ROWS]


@pytest.mark.parametrize(("argv", "message"), [
    (["--accelerator", "gpu"], "--accelerator: the SR ablation trains and samples on the CPU"),
    (["--rows", "start99"], "unknown SR row 'start99'"),
    (["--train-steps", "601"], "--train-steps: must be a multiple of 4"),
    (["--seeds", "x"], "--seeds: expected comma-separated integers"),
])
def test_bad_sr_ablation_flags_are_refused_naming_the_flag_before_anything_runs(argv, message, tmp_path, capsys):
    base = tmp_path / "base.ckpt"
    base.write_bytes(b"")
    with pytest.raises(SystemExit) as exit_info:
        main(["ablation", "--sr", str(base), "--out", str(tmp_path / "out"), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_missing_base_is_refused_naming_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["ablation", "--sr", str(tmp_path / "nowhere.ckpt"), "--out", str(tmp_path / "out")])
    assert f"--sr: {tmp_path / 'nowhere.ckpt'} does not exist" in capsys.readouterr().err


def test_every_sr_row_upsamples_the_same_base_images_and_scores_its_final_images_against_them(wheel_demo, tmp_path):
    """The fast demo's trained stages (the `wheel_demo` fixture) as one training seed's networks."""
    assert wheel_demo.result.returncode == 0
    runs = {stage: StageRun(stage, CONFIG_DIR / f"{stage}.yaml", wheel_demo.out / "runs" / stage, 4, (), 0)
            for stage in ("sr1", "sr2")}
    base = wheel_demo.out / "runs" / "base" / "checkpoints" / "last.ckpt"
    plan = FAST_SR_ABLATION
    scenes = heldout_caption_set(plan.captions)
    from cascade.demo.evaluation import feature_space

    extractor, reference = feature_space(wheel_demo.out / "reference")
    results = {}
    for row in SR_ROWS[:2]:
        folder = tmp_path / row.key
        results[row.key] = sample_and_score_sr(row, base, runs, scenes, folder, plan, reference, extractor)
    first, second = (tmp_path / key for key in results)
    base_images = sorted((first / "intermediate" / "stage0_32px").glob("*.png"))
    # every caption once, more of a caption whose stratum has fewer than 2 (images_per_stratum)
    assert len(base_images) == sum(images_per_caption(scenes, 1, 2)) > len(scenes)
    for image in base_images:  # the same base images in every row
        assert Image.open(image).tobytes() == Image.open(second / "intermediate" / "stage0_32px" / image.name).tobytes()
    for key, folder in zip(results, (first, second)):
        result = results[key]
        final = stratified_alignment(score_folder(folder, scenes), resamples=10)[BALANCED]
        base_scores = stratified_alignment(score_folder(folder, scenes, folder / "intermediate" / "stage0_32px"),
                                           resamples=10)[BALANCED]
        assert result.final["exact"] == pytest.approx(final["exact"][0])
        # final minus base, paired by image: the difference of the balanced accuracies
        assert result.effect["exact"] == pytest.approx(final["exact"][0] - base_scores["exact"][0])
        assert result.nfe == 10 and math.isfinite(result.metrics["fid"])
        assert Image.open(next(folder.glob("*.png"))).size == (128, 128)
    # the control: the same base images brought to 128 px by the SR stages' own bicubic upsampling alone
    upsampled = tmp_path / UPSAMPLED_KEY
    control = upsampling_control(first, upsampled, [runs[stage].last_checkpoint for stage in ("sr1", "sr2")], scenes,
                                 plan, reference, extractor, (0, 1))
    assert [(c.row, c.seed, c.nfe) for c in control] == [(UPSAMPLED_ROW, 0, 0), (UPSAMPLED_ROW, 1, 0)]
    image = base_images[0]
    expected = torch.nn.functional.interpolate(to_tensor(Image.open(image).convert("RGB"))[None], scale_factor=4,
                                               mode="bicubic", align_corners=False)
    # 32 -> 64 -> 128 in two bicubic steps, each clamped: close to one 4x step, and exactly 128 px
    got = to_tensor(Image.open(upsampled / image.name).convert("RGB"))[None]
    assert got.shape == expected.shape and (got - expected.clamp(-1, 1)).abs().mean() < 0.02
    final = stratified_alignment(score_folder(first, scenes, upsampled), resamples=10)[BALANCED]
    assert control[0].final["exact"] == pytest.approx(final["exact"][0])


def test_the_demos_sr_stages_sample_as_the_sr_ablation_chose():
    """From log-SNR 10: the row whose final images keep the base's scores (docs/benchmarks.md)."""
    chosen = sr_settings(next(row for row in SR_ROWS if row.key == "start10"))
    assert (FULL.sr_start_log_snr, FULL.sampling_steps[1:], FULL.aug_levels, FULL.dynamic_threshold) == (
        chosen.start_log_snr, (chosen.steps, chosen.steps), (chosen.aug_level, chosen.aug_level), chosen.dynamic_threshold)
