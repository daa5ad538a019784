"""The `cascade fit / validate / export` commands: config errors, export and loading, configs/."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from cascade.cli import main as cascade_main
from cascade.cli.stage import CALLBACK_SECTIONS, CascadeCLI
from cascade.data.shards import read_samples, resolve_shards
from cascade.stages import (
    BaseStage,
    SampleGrid,
    SamplingSettings,
    SuperResStage,
    load_checkpoint,
    load_exported,
)
from cascade.stages.export import CONFIG_FILE, WEIGHTS_FILE, resolve_stage_class, write_export

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
        ("base", "--trainer.max_stepz=3", "trainer.max_stepz"),
        ("sr", "--data.init_args.resolution=32", "data.init_args.resolution"),
        ("base", "--model.init_args.unet.image_size=32", "model.init_args.unet.image_size"),
        ("base", "--trainer.default_root_dir=/elsewhere", "trainer.default_root_dir"),
        ("base", "--trainer.callbacks+=cascade.stages.EMA", "trainer.callbacks"),
        ("base", "--model.init_args.sampling.steps=0", "model.init_args.sampling.steps"),
    ],
    ids=["unknown-key", "wrong-type", "bad-value", "missing-data", "lowres-not-dividing", "unknown-trainer-key",
         "data-size-stated", "unet-size-stated", "run-dir-path-stated", "callback-outside-its-section",
         "bad-sampling-value"],  # fmt: skip
)
def test_bad_configs_fail_before_training_naming_the_key(write_stage_config, capsys, stage, override, named_key):
    config, run_dir = write_stage_config(stage=stage)
    assert cascade_main(["fit", "-c", str(config), override]) == 2
    error = capsys.readouterr().err
    lines = [line for line in error.splitlines() if line.startswith("cascade fit: config error:")]
    assert lines and any(named_key in line for line in lines), error
    assert "Traceback" not in error and len(error.splitlines()) <= 5
    assert not (run_dir / "checkpoints").exists()


@pytest.mark.parametrize(
    ("override", "stated", "line"),
    [
        ("--trainer.max_stepz=3", {}, "trainer.max_stepz: unknown key; did you mean trainer.max_steps?"),
        (None, {"p_uncnd": 0.2}, "model.init_args.p_uncnd: unknown key; did you mean model.init_args.p_uncond?"),
        ("--model.init_args.unet.base_chanels=8", {},
         "model.init_args.unet.base_chanels: unknown key; did you mean model.init_args.unet.base_channels?"),
        ("--trainr.max_steps=3", {}, "trainr.max_steps: unknown key; did you mean trainer.max_steps?"),
        ("--model.init_args.zzzz=1", {}, "model.init_args.zzzz: unknown key"),
    ],
    ids=["flag", "yaml", "nested-dataclass", "misspelt-section", "nothing-close"],
)
def test_an_unknown_key_is_named_in_full_with_the_closest_valid_one(write_stage_config, capsys, override, stated, line):
    config, _ = write_stage_config(**stated)
    assert cascade_main(["fit", "-c", str(config), *([override] if override else [])]) == 2
    assert capsys.readouterr().err.splitlines() == [f"cascade fit: config error: {line}"]


def copy_shards_without(field: str, shards: str, out: Path) -> str:
    """`shards` copied to `out` with every sample's `field` member left out."""
    out.mkdir()
    for shard in resolve_shards(shards, "shards"):
        with tarfile.open(out / Path(shard).name, "w") as tar:
            for sample in read_samples(shard):
                for name, data in sample.items():
                    if name not in ("__key__", field):
                        info = tarfile.TarInfo(f"{sample['__key__']}.{name}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
    return str(out)


@pytest.mark.parametrize(
    ("conditioning", "field", "setting", "advice"),
    [
        ("text", "txt", "data.init_args.with_caption", "model.init_args.conditioning"),
        ("class", "cls", "data.init_args.with_class_label", "model.init_args.conditioning"),
    ],
)
def test_shards_without_a_field_the_config_needs_fail_before_training_naming_the_setting(
    write_stage_config, synthetic_shards, tmp_path, capsys, conditioning, field, setting, advice
):
    config, run_dir = write_stage_config(conditioning=conditioning)
    shards = copy_shards_without(field, synthetic_shards["train"], tmp_path / f"no-{field}")
    assert cascade_main(["fit", "-c", str(config), f"--data.init_args.train_shards={shards}"]) == 2
    error = capsys.readouterr().err
    (line,) = error.splitlines()
    assert line.startswith(f"cascade fit: config error: {setting}: no {field} field in the first 16 samples of ")
    assert advice in line and "data.init_args.train_shards" in line
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


def test_exported_files_are_readable_like_every_other_output(tmp_path):
    previous = os.umask(0o022)
    try:
        out = write_export({"weight": torch.zeros(2)}, {"class_path": "cascade.stages.BaseStage", "init_args": {}},
                           tmp_path / "export")
    finally:
        os.umask(previous)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]  # no temporaries left


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
STRATEGY_CONFIGS = sorted(CONFIGS.glob("strategy/*.yaml"))  # added with a second -c to a stage's config
SHIPPED_CONFIGS = sorted(set(CONFIGS.rglob("*.yaml")) - set(STRATEGY_CONFIGS))


class ParsedConfig(Exception):
    """Carries the config `ParseOnly` parsed out of the CLI, before anything is built."""

    def __init__(self, config):
        self.config = config


class ParseOnly(CascadeCLI):
    """`cascade fit`'s parsing (shared defaults, callback sections, links, checks) and no more."""

    def instantiate_classes(self) -> None:
        raise ParsedConfig(self.config[self.subcommand])


def parse_fit(argv: list[str]):
    """The config `cascade fit ARGV` would build its model, data and trainer from."""
    with pytest.raises(ParsedConfig) as parsed, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # as `cascade fit` does
        ParseOnly(["fit", *argv])
    return parsed.value.config


@pytest.mark.parametrize("path", STAGE_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_config_builds_its_stage(path, tmp_path):
    config = parse_fit(["-c", str(path), "--run-dir", str(tmp_path)])
    model, data = config.model.init_args, config.data.init_args
    with torch.device("meta"):  # the real-scale UNets are built without allocating memory
        stage = resolve_stage_class(config.model.class_path)(**model.as_dict())
    assert isinstance(stage, (BaseStage, SuperResStage))
    # Each size is stated once and reaches the UNet and the data.
    assert stage.unet.config.image_size == stage.image_size == data.resolution
    if isinstance(stage, SuperResStage):
        assert data.lowres_resolution == stage.lowres_size and stage.image_size % stage.lowres_size == 0
    # The shared settings are there, and run_dir decides where everything is written.
    assert config.trainer.default_root_dir == str(tmp_path)
    assert [logger.init_args.save_dir for logger in config.trainer.logger] == [str(tmp_path)] * 2
    assert config.checkpoint.init_args.dirpath == str(tmp_path / "checkpoints")
    assert config.checkpoint.init_args.monitor == "val/loss" and config.checkpoint.init_args.save_last
    sections = [config[key].class_path.rsplit(".", 1)[-1] for key in CALLBACK_SECTIONS if config[key] is not None]
    assert sections == ["ModelCheckpoint", "LearningRateMonitor", "EMA", "TrainingSpeed", "SampleGrid"]
    assert config.posthoc_ema is None  # post-hoc EMA snapshots only when a config asks for them
    assert config.trainer.callbacks is None  # left to the user: --trainer.callbacks+=module.Class


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_configs_state_only_what_is_particular_to_the_stage(path):
    config = yaml.safe_load(path.read_text())
    assert not {"logger", "callbacks", "default_root_dir"} & set(config.get("trainer", {}))
    assert "image_size" not in config["model"]["init_args"]["unet"]
    assert not {"resolution", "lowres_resolution"} & set(config.get("data", {}).get("init_args", {}))


@pytest.mark.parametrize("stage", ["base64_text.yaml", "sr1024.yaml"])
def test_the_fsdp_config_shards_a_big_stage_and_changes_nothing_else(stage, tmp_path):
    alone = parse_fit(["-c", str(CONFIGS / stage), "--run-dir", str(tmp_path)])
    sharded = parse_fit(["-c", str(CONFIGS / stage), "-c", str(CONFIGS / "strategy" / "fsdp.yaml"),
                         "--run-dir", str(tmp_path)])
    assert [path.name for path in STRATEGY_CONFIGS] == ["fsdp.yaml"]
    assert alone.trainer.strategy.class_path == "lightning.pytorch.strategies.DDPStrategy"
    assert sharded.trainer.strategy.class_path == "cascade.stages.FSDP2Strategy"
    assert sharded.trainer.strategy.init_args.param_dtype == "bfloat16"
    assert sharded.trainer.precision == alone.trainer.precision == "bf16-mixed"  # what param_dtype bfloat16 needs
    assert alone.sample_grid is not None and sharded.sample_grid is None and sharded.posthoc_ema is None
    assert sharded.model == alone.model and sharded.data == alone.data and sharded.ema == alone.ema


@pytest.mark.parametrize(
    ("key", "value", "source"),
    [
        ("data.init_args.resolution", 128, "model.init_args.image_size"),
        ("data.init_args.lowres_resolution", 16, "model.init_args.lowres_size"),
        ("model.init_args.unet.image_size", 128, "model.init_args.image_size"),
    ],
)
def test_a_size_stated_twice_is_one_config_error(key, value, source, tmp_path, capsys):
    argv = ["fit", "-c", str(CONFIGS / "demo" / "sr1.yaml"), "--run_dir", str(tmp_path), f"--{key}={value}"]
    assert cascade_main(argv) == 2
    error = capsys.readouterr().err
    assert error.splitlines() == [f"cascade fit: config error: {key}: follows {source}; state the size only there"]
    assert not any(tmp_path.iterdir())


def test_sample_grid_and_ema_are_switched_off_by_null(tmp_path):
    config = parse_fit(["-c", str(CONFIGS / "demo" / "base.yaml"), "--run_dir", str(tmp_path),
                        "--sample_grid", "null", "--ema", "null"])  # fmt: skip
    assert config.sample_grid is None and config.ema is None
