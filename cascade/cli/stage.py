"""`cascade fit`, `cascade validate` (LightningCLI over the stages, every setting in YAML) and
`cascade export`.

    cascade fit -c configs/demo/base.yaml [--trainer.max_steps 500] [--run_dir runs/x]
    cascade fit -c configs/demo/base.yaml --ckpt_path last        # resume the run exactly
    cascade validate -c configs/demo/base.yaml --ckpt_path runs/x/checkpoints/last.ckpt

`--run_dir` (also a YAML key) is the one place a run writes to: it sets the trainer's
default_root_dir, every logger's save_dir and every ModelCheckpoint's dirpath (run_dir/checkpoints),
so `--ckpt_path last` finds the run's last.ckpt and a resubmitted job resumes where it stopped.

Configuration mistakes (unknown key, wrong type, invalid value, missing data) are reported as
one line per problem naming the key, before anything is trained, with exit status 2.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from pathlib import Path

from jsonargparse import ArgumentError, Namespace
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI

from ..data.shards import resolve_shards
from ..stages import DiffusionStage, NonFiniteLossError, StageConfigError, SuperResStage
from ..stages.export import CONFIG_FILE, WEIGHTS_FILE, export_stage


class ConfigError(Exception):
    """A configuration problem found before training; `problems` are (key, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{key}: {message}" for key, message in problems))


class CascadeCLI(LightningCLI):
    """LightningCLI for cascade stages: `model` is any `DiffusionStage` subclass, `data` any
    LightningDataModule, both chosen by class_path in the YAML."""

    def __init__(self, args: list[str]):
        super().__init__(
            model_class=DiffusionStage,
            subclass_mode_model=True,
            datamodule_class=LightningDataModule,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"exit_on_error": False},
            args=args,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--run_dir",
            type=str | None,
            default=None,
            help="where the run writes checkpoints (run_dir/checkpoints), logs and sample grids",
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        if config.get("run_dir"):
            apply_run_dir(config, config.run_dir)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError, FileNotFoundError) as error:
            raise ConfigError(instantiation_problems(error)) from error
        shard_settings = ["train_shards", "val_shards"] if self.subcommand == "fit" else ["val_shards"]
        check_data_paths(self.datamodule, shard_settings)
        check_data_matches_model(self.datamodule, self.model)


def apply_run_dir(config: Namespace, run_dir: str) -> None:
    """Point the trainer, the loggers and the checkpoints of `config` at `run_dir`."""
    trainer = config.trainer
    trainer.default_root_dir = run_dir
    loggers = trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]
    for logger in loggers:
        if isinstance(logger, Namespace) and "save_dir" in logger.get("init_args", Namespace()):
            logger.init_args.save_dir = run_dir
    for callback in trainer.callbacks or []:
        if isinstance(callback, Namespace) and callback.class_path.endswith("ModelCheckpoint"):
            callback.init_args.dirpath = str(Path(run_dir) / "checkpoints")


def check_data_paths(datamodule: LightningDataModule | None, names: list[str]) -> None:
    """Fail now, naming the key, when a shard setting of a shard-based DataModule matches nothing."""
    problems = []
    for name in names:
        value = getattr(datamodule, name, None)
        if value is None:
            continue
        try:
            resolve_shards(value, f"data.init_args.{name}")
        except (ValueError, FileNotFoundError) as error:
            problems.append((f"data.init_args.{name}", str(error).split(": ", 1)[-1]))
    if problems:
        raise ConfigError(problems)


def check_data_matches_model(datamodule: LightningDataModule | None, model: DiffusionStage) -> None:
    """Fail now when the DataModule's sizes or fields do not fit the stage (shard DataModules)."""
    settings = dict(getattr(datamodule, "hparams", {}) or {})
    problems = []
    pairs = [("resolution", "image_size")]
    if isinstance(model, SuperResStage):
        pairs.append(("lowres_resolution", "lowres_size"))
    for data_key, model_key in pairs:
        data_value, model_value = settings.get(data_key), getattr(model, model_key)
        if data_key in settings and data_value != model_value:
            message = f"{data_value} differs from model.init_args.{model_key} = {model_value}"
            problems.append((f"data.init_args.{data_key}", message))
    if model.conditioning == "class" and settings.get("with_class_label") is False:
        problems.append(("data.init_args.with_class_label", "must be true for a class-conditional stage"))
    if model.conditioning == "text" and settings.get("with_caption") is False and not settings.get("text_encoder"):
        message = "must be true (or text_encoder set) for a text-conditional stage"
        problems.append(("data.init_args.with_caption", message))
    if problems:
        raise ConfigError(problems)


def instantiation_problems(error: Exception) -> list[tuple[str, str]]:
    """(key, message) pairs for an error raised while building the model, data or trainer.

    jsonargparse wraps constructor errors; the original one (the end of the exception chain)
    carries the message, and the module that raised it tells which config section is at fault.
    """
    cause = error
    while (cause.__cause__ or cause.__context__) is not None:
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, StageConfigError):
        return [(f"model.init_args.{key}", message) for key, message in cause.problems]
    traceback, module = cause.__traceback__, ""
    while traceback is not None:
        module = traceback.tb_frame.f_globals.get("__name__", "")
        traceback = traceback.tb_next
    sections = {"cascade.data": "data.init_args", "cascade.nn": "model.init_args.unet", "cascade.stages": "model.init_args"}
    section = next((key for prefix, key in sections.items() if module.startswith(prefix)), "trainer")
    return config_problems(section, str(cause))


_UNION_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Expected a <class 'NoneType'>",
    "Given value type:",
    "Given value:",
)


def config_problems(key: str, message: str) -> list[tuple[str, str]]:
    """(key, message) pairs from a jsonargparse error, dropping its Union bookkeeping and turning
    its nested 'Parser key "x":' / "Problem with given class_path" lines into a dotted key."""
    keys = [key] if key else []
    problems = []
    for raw in message.splitlines():
        line = raw.strip().removeprefix("- ").strip()
        if not line or line.startswith(_UNION_NOISE):
            continue
        nested_key = re.match(r'Parser key "([^"]+)":\s*(.*)$', line)
        if nested_key:
            keys.append(nested_key.group(1))
            line = nested_key.group(2)
        elif re.match(r"Problem with given class_path '[^']+':", line):
            keys.append("init_args")
            continue
        if line:
            problems.append((".".join(keys) or "config", line))
    return problems or [(key or "config", message)]


def run(subcommand: str, argv: list[str]) -> int:
    """Run a LightningCLI subcommand; configuration errors become one line per problem."""
    # The `cascade` command passes its own argv on; LightningCLI's warning about args given
    # next to sys.argv does not apply (and sys.argv must stay: DDP re-launches it for each rank).
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    try:
        CascadeCLI([subcommand, *argv])
    except ConfigError as error:
        for key, message in error.problems:
            print(f"cascade {subcommand}: config error: {key}: {message}", file=sys.stderr)
        return 2
    except ArgumentError as error:
        for key, message in config_problems("", str(error)):
            print(f"cascade {subcommand}: config error: {key}: {message}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"cascade {subcommand}: {error}", file=sys.stderr)
        return 1
    except SystemExit as exit_request:  # --help, --print_config
        return exit_request.code if isinstance(exit_request.code, int) else 0
    return 0


def fit(argv: list[str]) -> int:
    """`cascade fit -c CONFIG [--key value ...]`."""
    return run("fit", argv)


def validate(argv: list[str]) -> int:
    """`cascade validate -c CONFIG --ckpt_path CKPT`."""
    return run("validate", argv)


def export(argv: list[str]) -> int:
    """`cascade export --ckpt RUN/checkpoints/last.ckpt --out DIR`."""
    parser = argparse.ArgumentParser(
        prog="cascade export",
        description="Write a stage checkpoint's EMA weights (safetensors) and config (YAML) for inference.",
    )
    parser.add_argument("--ckpt", required=True, help="a .ckpt written by `cascade fit`")
    parser.add_argument("--out", required=True, help="output directory (created)")
    args = parser.parse_args(argv)
    try:
        out = export_stage(args.ckpt, args.out)
    except (FileNotFoundError, ValueError) as error:
        print(f"cascade export: {error}", file=sys.stderr)
        return 2
    print(f"exported {args.ckpt} -> {out / WEIGHTS_FILE}, {out / CONFIG_FILE}")
    return 0
