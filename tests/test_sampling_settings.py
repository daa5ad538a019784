"""`SamplingSettings`, the one sampling-settings type: it checks itself, round-trips through
YAML, reads the older `guidance_scale` key, and stages, old checkpoints / exports and the
SampleGrid callback all go through it."""

from __future__ import annotations

import pytest
import torch
import yaml

from cascade.diffusion import SIGMOID_BIAS
from cascade.stages import SampleGrid, SamplingSettings, StageConfigError
from cascade.stages.export import (
    build_stage,
    load_checkpoint,
    load_exported,
    write_export,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MICRO_UNET = {"image_size": 16, "base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
              "attention_resolutions": [], "norm_groups": 4}  # fmt: skip


@pytest.mark.parametrize(
    ("key", "value"),
    [("sampler", "euler"), ("steps", 0), ("steps", 2.5), ("guidance", -1.0), ("guidance", "strong"),
     ("dynamic_threshold", 0.0), ("dynamic_threshold", 1.5), ("aug_level", -0.1), ("aug_level", 1.2),
     ("time_grid", "edm"), ("time_grid", 3),
     ("guidance_interval", [1.0, 1.0]), ("guidance_interval", [2.0, -1.0]), ("guidance_interval", [1.0]),
     ("guidance_interval", [0.0, 1.0, 2.0]), ("guidance_interval", "0:1"), ("guidance_interval", [0.0, "a"]),
     ("guidance_interval", [float("nan"), 1.0]), ("guidance_interval", [True, 2.0]), ("guide", ""),
     ("guide", 3)],
)  # fmt: skip
def test_settings_reject_each_bad_value_with_one_line_naming_the_key(key, value):
    with pytest.raises(StageConfigError) as raised:
        SamplingSettings(**{key: value})
    message = str(raised.value)
    assert message.startswith(f"sampling.{key}: ") and repr(value) in message and "\n" not in message
    assert [problem_key for problem_key, _ in raised.value.problems] == [f"sampling.{key}"]


def test_settings_round_trip_through_yaml():
    for settings in (SamplingSettings(), SamplingSettings("ddim", 7, 4.5, 0.99, 0.25),
                     SamplingSettings("heun", 7, time_grid="karras"),
                     SamplingSettings(guidance=3.0, guidance_interval=(-2.0, 2.5), guide="runs/small/export")):
        plain = yaml.safe_load(yaml.safe_dump(settings.to_dict()))
        assert plain == settings.to_dict() and SamplingSettings.from_dict(plain) == settings


def test_a_guidance_interval_given_as_a_yaml_list_is_held_as_a_tuple_of_floats():
    settings = SamplingSettings.from_dict(yaml.safe_load("guidance_interval: [-2, 3]"))
    assert settings.guidance_interval == (-2.0, 3.0) and isinstance(settings.guidance_interval[0], float)
    assert settings.to_dict()["guidance_interval"] == [-2.0, 3.0]
    assert SamplingSettings(guidance_interval=[-2, 3]) == settings
    assert settings.updated(guidance_interval=None).guidance_interval is None


def test_missing_keys_take_the_defaults_and_unknown_keys_are_named():
    assert SamplingSettings.from_dict({"steps": 3}) == SamplingSettings(steps=3)
    with pytest.raises(StageConfigError, match=r"^sampling\.cfg: unknown key$"):
        SamplingSettings.from_dict({"cfg": 3.0})
    with pytest.raises(StageConfigError, match="expected a mapping"):
        SamplingSettings.from_dict(3.0)


def test_the_older_guidance_scale_key_is_read_as_guidance():
    assert SamplingSettings.from_dict({"guidance_scale": 4.0}) == SamplingSettings(guidance=4.0)
    assert SamplingSettings().updated(guidance_scale=2.0).guidance == 2.0
    with pytest.raises(StageConfigError, match="sampling.guidance_scale: is the older name of guidance"):
        SamplingSettings.from_dict({"guidance_scale": 4.0, "guidance": 3.0})


def old_stage_configs() -> tuple[dict, dict]:
    """A base and an SR stage's {"class_path", "init_args"} as checkpoints (`cascade_stage`) and
    exports (`config.yaml`) stored them before the sampling settings were one type:
    `sampling.guidance_scale`, and the SR stage's default augmentation level at the top."""
    old_sampling = {"sampler": "ddim", "steps": 7, "guidance_scale": 4.0, "dynamic_threshold": 0.995}
    base = {"class_path": "cascade.stages.base_stage.BaseStage",
            "init_args": {"unet": {**MICRO_UNET, "num_classes": 3}, "image_size": 16, "conditioning": "class",
                          "sampling": old_sampling}}  # fmt: skip
    sr = {"class_path": "cascade.stages.super_res.SuperResStage",
          "init_args": {"unet": {**MICRO_UNET, "lowres_channels": 3, "use_aug_cond": True}, "image_size": 16,
                        "lowres_size": 8, "aug_level": 0.2, "sampling": {**old_sampling, "guidance_scale": 1.0}}}  # fmt: skip
    return base, sr


def test_an_old_style_stage_config_still_builds_and_is_stored_with_todays_keys():
    old_base, old_sr = old_stage_configs()
    base, sr = build_stage(old_base), build_stage(old_sr)
    assert base.sampling == SamplingSettings("ddim", 7, 4.0, 0.995, 0.0)
    assert sr.sampling == SamplingSettings("ddim", 7, 1.0, 0.995, 0.2)
    stored = sr.stage_config()["init_args"]
    assert stored["sampling"] == {"sampler": "ddim", "steps": 7, "guidance": 1.0, "dynamic_threshold": 0.995,
                                  "aug_level": 0.2, "time_grid": None, "guidance_interval": None,
                                  "guide": None, "start_log_snr": None}  # fmt: skip
    assert "aug_level" not in stored  # stored once, in sampling
    assert build_stage(sr.stage_config()).sampling == sr.sampling


def test_an_old_export_loads(tmp_path):
    _, old_sr = old_stage_configs()
    weights = build_stage(old_sr).unet.state_dict()
    stage = load_exported(write_export(weights, old_sr, tmp_path / "sr"))
    assert stage.sampling.guidance == 1.0 and stage.sampling.aug_level == 0.2
    for name, tensor in stage.unet.state_dict().items():
        assert torch.equal(tensor, weights[name]), name


def test_a_stage_saved_before_the_sigmoid_weighting_guidance_interval_and_guide_loads_with_their_defaults(tmp_path):
    base, _ = old_stage_configs()
    base["init_args"].update(loss_weighting="sigmoid", sigmoid_bias=-1.5)
    base["init_args"]["sampling"] = {"guidance": 3.0, "guidance_interval": [-2.0, 2.5], "guide": "runs/small/export"}
    stage = build_stage(base)
    assert stage.sigmoid_bias == -1.5
    assert stage.sampling == SamplingSettings(guidance=3.0, guidance_interval=(-2.0, 2.5), guide="runs/small/export")
    # every new setting is saved (export config.yaml, checkpoint cascade_stage) and read back
    config = stage.stage_config()
    assert config["init_args"]["sigmoid_bias"] == -1.5
    assert config["init_args"]["sampling"]["guidance_interval"] == [-2.0, 2.5]
    exported = load_exported(write_export(stage.unet.state_dict(), config, tmp_path / "new"))
    assert exported.sampling == stage.sampling and (exported.loss_weighting, exported.sigmoid_bias) == ("sigmoid", -1.5)
    # the same hyper-parameters without the new keys: an export and a checkpoint from before
    old = yaml.safe_load(yaml.safe_dump(config))
    del old["init_args"]["sigmoid_bias"]
    old["init_args"]["loss_weighting"] = "uniform"
    del old["init_args"]["sampling"]["guidance_interval"], old["init_args"]["sampling"]["guide"]
    from_export = load_exported(write_export(stage.unet.state_dict(), old, tmp_path / "old"))
    torch.save({"cascade_stage": old, "state_dict": stage.state_dict()}, tmp_path / "old.ckpt")
    from_checkpoint = load_checkpoint(tmp_path / "old.ckpt")
    for loaded in (from_export, from_checkpoint):
        assert loaded.sampling == SamplingSettings(guidance=3.0)
        assert loaded.sigmoid_bias == SIGMOID_BIAS == -3.0 and loaded.loss_weighting == "uniform"
        assert loaded.stage_config()["init_args"]["sampling"]["guide"] is None


def test_sample_grid_samples_without_the_stages_guide():
    base, _ = old_stage_configs()
    base["init_args"]["sampling"] = {"guidance": 3.0, "guide": "runs/small/export"}
    assert SampleGrid().settings_for(build_stage(base)) == SamplingSettings(guidance=3.0)


def test_an_sr_stage_refuses_two_different_default_augmentation_levels():
    _, old_sr = old_stage_configs()
    old_sr["init_args"]["sampling"] = {"aug_level": 0.3}
    with pytest.raises(StageConfigError, match="^aug_level: 0.2 differs from sampling.aug_level 0.3"):
        build_stage(old_sr)


def test_sample_grid_changes_the_stages_own_settings_and_checks_them_when_built():
    base, _ = old_stage_configs()
    stage = build_stage(base)
    assert SampleGrid().settings_for(stage) == stage.sampling
    assert SampleGrid(steps=3, guidance=2.0).settings_for(stage) == SamplingSettings("ddim", 3, 2.0, 0.995)
    assert SampleGrid(guidance_scale=2.0).settings_for(stage).guidance == 2.0  # older configs' key
    with pytest.raises(ValueError, match="^SampleGrid steps: must be an integer >= 1, got 0$"):
        SampleGrid(steps=0)


def test_generate_walks_the_settings_time_grid(monkeypatch):
    """`sampling.time_grid` reaches `cascade.diffusion.sample(grid=...)`: the denoiser sees the
    grid's times; None (the default, also of settings stored without the key) is the sampler's own."""
    from cascade.diffusion import DEFAULT_GRIDS, time_grid

    base, _ = old_stage_configs()
    stage = build_stage(base)
    condition = stage.make_condition(class_labels=[0])
    for grid in ("karras", None):
        seen = []
        make_denoiser = stage.make_denoiser

        def recording_denoiser(*args, seen=seen, make_denoiser=make_denoiser, **kwargs):
            denoise = make_denoiser(*args, **kwargs)
            return lambda x_t, t: (seen.append(float(t[0])), denoise(x_t, t))[1]

        monkeypatch.setattr(stage, "make_denoiser", recording_denoiser)
        settings = SamplingSettings("dpmpp_2m", 4, 1.0, time_grid=grid)
        stage.generate(condition, settings=settings, generator=torch.Generator().manual_seed(0))
        expected = time_grid(stage.schedule, 4, grid or DEFAULT_GRIDS["dpmpp_2m"])[:-1].float().tolist()
        assert seen == expected
        monkeypatch.undo()
