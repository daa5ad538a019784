"""The `cascade fit / validate / export` commands: config errors, export and loading, configs/."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from cascade.cli import main as cascade_main
from cascade.stages import (
    BaseStage,
    SampleGrid,
    SamplingSettings,
    SuperResStage,
    load_checkpoint,
    load_exported,
)
from cascade.stages.export import resolve_stage_class

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(
    ("stage", "override", "named_key"),
    [
        ("base", "--model.init_args.p_uncondd=0.2", "p_uncondd"),
        ("base", "--model.init_args.p_uncond=often", "model.init_args.p_uncond"),
        ("base", "--model.init_args.optimizer.schedule=linear", "optimizer.schedule"),
        ("base", "--data.init_args.train_shards=/no/such/shards", "data.init_args.train_shards"),
        ("sr", "--model.init_args.lowres_size=6", "lowres_size"),
        ("base", "--trainer.max_stepz=3", "--trainer.max_stepz"),
        ("sr", "--data.init_args.resolution=32", "data.init_args.resolution"),
        ("base", "--model.init_args.sampling.steps=0", "model.init_args.sampling.steps"),
    ],
    ids=["unknown-key", "wrong-type", "bad-value", "missing-data", "lowres-not-dividing", "unknown-trainer-key",
         "data-size-differs", "bad-sampling-value"],  # fmt: skip
)
def test_bad_configs_fail_before_training_naming_the_key(write_stage_config, capsys, stage, override, named_key):
    config, run_dir = write_stage_config(stage=stage)
    assert cascade_main(["fit", "-c", str(config), override]) == 2
    error = capsys.readouterr().err
    lines = [line for line in error.splitlines() if line.startswith("cascade fit: config error:")]
    assert lines and any(named_key in line for line in lines), error
    assert "Traceback" not in error and len(error.splitlines()) <= 5
    assert not (run_dir / "checkpoints").exists()


def test_export_validate_and_load_without_pickle(write_stage_config, tmp_path, capsys):
    config, run_dir = write_stage_config(max_steps=2, val_every=2)
    assert cascade_main(["fit", "-c", str(config)]) == 0
    checkpoint_path = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(checkpoint_path, weights_only=True)

    out = tmp_path / "export"
    assert cascade_main(["export", "--ckpt", str(checkpoint_path), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model.safetensors"]
    exported = yaml.safe_load((out / "config.yaml").read_text())
    assert exported["class_path"] == "cascade.stages.base_stage.BaseStage" and exported["ema_weights"] is True
    weights = load_file(str(out / "model.safetensors"))
    for name, tensor in weights.items():  # the EMA weights, not the live ones
        assert torch.equal(tensor, checkpoint["state_dict"][f"unet.{name}"])

    from_export, from_checkpoint = load_exported(out), load_checkpoint(checkpoint_path)
    assert isinstance(from_export, BaseStage) and not from_export.training
    for (name, a), (_, b) in zip(from_export.state_dict().items(), from_checkpoint.state_dict().items()):
        assert torch.equal(a, b), name
    condition = from_export.make_condition(class_labels=[1, 2])
    settings = SamplingSettings(guidance=2.0, steps=2)
    images = from_export.generate(condition, settings=settings, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 16, 16)

    capsys.readouterr()
    assert cascade_main(["validate", "-c", str(config), "--ckpt_path", str(checkpoint_path)]) == 0
    assert "val/loss" in capsys.readouterr().out

    with pytest.raises(ValueError, match="only cascade"):
        resolve_stage_class("os.system")


@pytest.mark.parametrize("key", ["guidance", "guidance_scale"], ids=["today", "older"])
def test_configs_give_the_guidance_scale_under_todays_key_or_the_older_one(write_stage_config, capsys, key):
    config, _ = write_stage_config(stage="sr", sampling={key: 2.0, "steps": 3}, aug_level=0.1)
    grid = ["--trainer.callbacks+=cascade.stages.SampleGrid", f"--trainer.callbacks.{key}=4.0"]
    assert cascade_main(["fit", "-c", str(config), *grid, "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    model = printed["model"]
    stage = resolve_stage_class(model["class_path"])(**model["init_args"])
    assert stage.sampling == SamplingSettings(steps=3, guidance=2.0, aug_level=0.1)
    (grid_config,) = [c for c in printed["trainer"]["callbacks"] if c["class_path"].endswith("SampleGrid")]
    assert SampleGrid(**grid_config["init_args"]).settings_for(stage).guidance == 4.0


STAGE_CONFIGS = sorted([*CONFIGS.glob("*.yaml"), *CONFIGS.glob("demo/*.yaml")])  # full run configs


@pytest.mark.parametrize("path", STAGE_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_configs_parse_and_build(path, capsys):
    assert cascade_main(["fit", "-c", str(path), "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["run_dir"] and printed["trainer"]["logger"] and printed["data"]["class_path"]
    model = printed["model"]
    with torch.device("meta"):  # the real-scale UNets are built without allocating memory
        stage = resolve_stage_class(model["class_path"])(**model["init_args"])
    assert isinstance(stage, (BaseStage, SuperResStage))
    if isinstance(stage, SuperResStage):
        assert stage.image_size % stage.lowres_size == 0
    callbacks = {c["class_path"].rsplit(".", 1)[-1] for c in printed["trainer"]["callbacks"]}
    assert {"ModelCheckpoint", "LearningRateMonitor", "EMA", "SampleGrid"} <= callbacks
