"""`cascade fit`, `cascade validate` (LightningCLI over the stages, every setting in YAML) and
`cascade export`.

    cascade fit -c configs/demo/base.yaml [--trainer.max_steps 500] [--run-dir runs/x]
    cascade fit -c configs/demo/base.yaml --ckpt_path last        # resume the run exactly
    cascade fit -c configs/demo/base.yaml --ckpt_path none        # start over in the same run_dir
    cascade validate -c configs/demo/base.yaml --ckpt_path runs/x/checkpoints/last.ckpt

A stage config states only what is particular to its stage; `CascadeCLI` holds the rest:

- `SHARED_DEFAULTS`: seed 0, gradient clipping at 1, no sanity validation, validation every
  `trainer.val_check_interval` steps, TensorBoard and CSV loggers.
- One section per callback every stage has (`CALLBACK_SECTIONS`): `checkpoint` (ModelCheckpoint:
  best-{step} by val/loss, and last.ckpt), `lr_monitor` (LearningRateMonitor), `ema`
  (cascade.stages.EMA), `posthoc_ema` (cascade.stages.PostHocEMA, null by default),
  `training_speed` (cascade.stages.TrainingSpeed) and `sample_grid` (cascade.stages.SampleGrid).
  A config sets only the arguments it changes, e.g.
  `sample_grid: {prompts: [...]}`; null leaves the callback out (`sample_grid: null`).
  `trainer.callbacks` holds any others (`--trainer.callbacks+=module.Class`).
- `run_dir` (required; YAML key or flag) is the one place a run writes to (`RUN_DIR_LINKS`): the
  trainer's default_root_dir, every logger's save_dir and every ModelCheckpoint's dirpath
  (run_dir/checkpoints), so `--ckpt_path last` finds the run's last.ckpt and a resubmitted job
  resumes where it stopped.
- A run directory holds one run: `cascade fit` without --ckpt_path in a run_dir that has a
  last.ckpt resumes from it (and prints a line saying so) rather than starting a second run over
  the first; `--ckpt_path none` starts over, overwriting its checkpoints. There is only ever one
  last.ckpt (no `last-v1.ckpt`), and every checkpoint is written atomically
  (`cascade.stages.AtomicCheckpointIO`): a run killed while saving keeps its previous last.ckpt.
- Ctrl-C or SIGTERM saves last.ckpt at the end of the step (`cascade.stages.SaveOnInterrupt`,
  every DDP rank at the same step) and prints the command that resumes; the exit status is
  128 + the signal number. The progress bar counts steps against trainer.max_steps
  (`cascade.stages.StepProgressBar`).
- Every size is stated once (`SIZE_LINKS`): `model.init_args.image_size` is also the UNet's
  image_size and the data's resolution, an SR stage's `lowres_size` the data's
  lowres_resolution. Stating one of the linked keys as well is a config error.

Configuration mistakes (unknown key, wrong type, invalid value, missing data, shards without a
field the data settings need) are reported as one line per problem naming the key, before
anything is trained, with exit status 2; an unknown key comes with the closest valid one
(`trainer.max_stepz: unknown key; did you mean trainer.max_steps?`).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import re
import shlex
import sys
import tarfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentError, ArgumentParser
from lightning.pytorch import Callback, LightningDataModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from ..data.shards import EMBEDDING_FIELD, read_samples, resolve_shards
from ..stages import (
    EMA,
    AtomicCheckpointIO,
    DiffusionStage,
    FSDP2Strategy,
    NonFiniteLossError,
    PostHocEMA,
    SampleGrid,
    SaveOnInterrupt,
    StageConfigError,
    StepProgressBar,
    TrainingInterrupted,
    TrainingSpeed,
)
from ..stages.export import CONFIG_FILE, WEIGHTS_FILE, export_stage
from ..stages.optim import MUON_UNDER_FSDP

SHARED_DEFAULTS: dict[str, Any] = {
    "trainer.check_val_every_n_epoch": None,  # validate every val_check_interval optimiser steps
    "trainer.num_sanity_val_steps": 0,
    "trainer.gradient_clip_val": 1.0,
    "trainer.logger": [
        {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"name": "tensorboard"}},
        {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"name": "csv"}},
    ],
    "checkpoint": {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        # No version counter: a rerun overwrites last.ckpt instead of writing a second, last-v1.ckpt.
        "init_args": {"filename": "best-{step}", "monitor": "val/loss", "save_last": True,
                      "auto_insert_metric_name": False, "enable_version_counter": False},
    },
    "lr_monitor": {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor",
                   "init_args": {"logging_interval": "step"}},
    "ema": {"class_path": "cascade.stages.EMA"},
    "posthoc_ema": None,  # off unless a config turns it on: posthoc_ema: {sigma_rels: [0.05, 0.1], ...}
    "training_speed": {"class_path": "cascade.stages.TrainingSpeed"},
    "sample_grid": {"class_path": "cascade.stages.SampleGrid"},
}

# Config section -> callback class; null leaves the callback out. The trainer gets them in this
# order, then `trainer.callbacks`: the EMA is updated before a sample grid or another callback reads it.
CALLBACK_SECTIONS: dict[str, type[Callback]] = {
    "checkpoint": ModelCheckpoint,
    "lr_monitor": LearningRateMonitor,
    "ema": EMA,
    "posthoc_ema": PostHocEMA,
    "training_speed": TrainingSpeed,
    "sample_grid": SampleGrid,
}


def checkpoint_dir(run_dir: str | None) -> str | None:
    """Where a run's checkpoints go: run_dir/checkpoints (None without a run_dir, which the
    parser then reports as missing)."""
    return None if run_dir is None else str(Path(run_dir) / "checkpoints")


# (source, target, function of the source or None): the target key is derived, never stated.
RUN_DIR_LINKS: tuple[tuple[str, str, Any], ...] = (
    ("run_dir", "trainer.default_root_dir", None),
    ("run_dir", "trainer.logger.init_args.save_dir", None),
    ("run_dir", "checkpoint.init_args.dirpath", checkpoint_dir),
    ("run_dir", "trainer.callbacks.init_args.dirpath", checkpoint_dir),  # more ModelCheckpoints
)
SIZE_LINKS: tuple[tuple[str, str], ...] = (
    ("model.init_args.image_size", "model.init_args.unet.image_size"),
    ("model.init_args.image_size", "data.init_args.resolution"),
    ("model.init_args.lowres_size", "data.init_args.lowres_resolution"),
)


class ConfigError(Exception):
    """A configuration problem found before training; `problems` are (key, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{key}: {message}" for key, message in problems))


class CascadeCLI(LightningCLI):
    """LightningCLI for cascade stages: `model` is any `DiffusionStage` subclass, `data` any
    LightningDataModule, both chosen by class_path in the YAML; shared settings, callback
    sections and linked keys as the module docstring says."""

    def __init__(self, args: list[str]):
        self.argv = args[1:]  # after the subcommand: what a resume command repeats
        super().__init__(
            model_class=DiffusionStage,
            subclass_mode_model=True,
            datamodule_class=LightningDataModule,
            subclass_mode_data=True,
            seed_everything_default=0,
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"exit_on_error": False},
            args=args,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--run-dir",
            "--run_dir",
            dest="run_dir",
            type=str,
            required=True,
            help="where the run writes checkpoints (run_dir/checkpoints), logs and sample grids",
        )
        for key, callback_class in CALLBACK_SECTIONS.items():
            parser.add_subclass_arguments(callback_class, key, fail_untyped=False)
        for source, target, compute in RUN_DIR_LINKS:
            parser.link_arguments(source, target, compute)
        for source, target in SIZE_LINKS:
            parser.link_arguments(source, target)
        parser.set_defaults(SHARED_DEFAULTS)

    def parse_arguments(self, parser: LightningArgumentParser, args: list[str]) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:
            subcommand_parser = self._subcommand_parsers.get(args[0]) if args else None
            known = option_keys(subcommand_parser) if subcommand_parser is not None else []
            raise ConfigError(config_problems("", str(error), known)) from error
        # Links overwrite a stated target silently; a parse without defaults shows what was stated.
        stated = parser.parse_args(args, defaults=False)[self.config.subcommand]
        self.ckpt_path_stated = "ckpt_path" in stated
        problems = [
            (target, f"follows {source}; state the size only there")
            for source, target in SIZE_LINKS
            if target in stated
        ]
        if problems:
            raise ConfigError(problems)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError, FileNotFoundError) as error:
            raise ConfigError(instantiation_problems(error)) from error
        shard_settings = ["train_shards", "val_shards"] if self.subcommand == "fit" else ["val_shards"]
        check_data_paths(self.datamodule, shard_settings)
        check_data_matches_model(self.datamodule, self.model)
        check_first_samples(self.datamodule, self.model, shard_settings)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer with the callback sections that are not null, the progress bar
        (`StepProgressBar`, unless the config turns the bar off or brings its own), then
        `trainer.callbacks`, and for `fit` last `SaveOnInterrupt` (after every callback that
        reports a step, so the step it saves is reported); checkpoints are written by
        `AtomicCheckpointIO`. A callback in `trainer.callbacks` that duplicates a section's (same
        state key: a second EMA or sample grid, a ModelCheckpoint with the same monitor and
        schedule) is a config error."""
        config = self.config_init[self.subcommand]
        sections = {key: config[key] for key in CALLBACK_SECTIONS if config[key] is not None}
        extra = config.trainer.callbacks or []
        extra = extra if isinstance(extra, list) else [extra]
        problems = [
            ("trainer.callbacks", f"{type(callback).__name__} duplicates the `{key}` section: configure it there")
            for callback in extra
            for key, section in sections.items()
            if callback.state_key == section.state_key
        ]
        if isinstance(config.trainer.strategy, FSDP2Strategy):
            problems += sharding_problems(config.trainer.strategy, config, sections, self.model)
        if problems:
            raise ConfigError(problems)
        bar = []
        if config.trainer.enable_progress_bar is not False and not any(isinstance(c, ProgressBar) for c in extra):
            bar = [StepProgressBar()]
        interrupt = []
        if self.subcommand == "fit":
            hint = f"resume with: {resume_command(self.argv, config.run_dir)}"
            interrupt = [SaveOnInterrupt(last_checkpoint(config.run_dir), hint)]
        callbacks = [*sections.values(), *bar, *extra, *interrupt]
        trainer = super().instantiate_trainer(callbacks=callbacks, **kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not one the config chose
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def before_fit(self) -> None:
        """Start from the checkpoint `resume_path` picks."""
        config = self.config_init["fit"]
        config.ckpt_path = resume_path(config.ckpt_path, self.ckpt_path_stated, config.run_dir)


def sharding_problems(
    strategy: FSDP2Strategy, config: Any, sections: dict[str, Callback], model: DiffusionStage
) -> list[tuple[str, str]]:
    """(key, message) for settings that do not work when the UNet is sharded (`FSDP2Strategy`):
    every rank holds only a shard of the weights, so whatever reads or runs the whole model on
    one rank, or keeps a copy elsewhere, is refused before training starts."""
    problems = strategy.strategy_problems(config.trainer.precision)
    ema = sections.get("ema")
    if isinstance(ema, EMA) and ema._device is not None:
        message = "must be null with FSDP2Strategy: the EMA copy is sharded like the model, on its devices"
        problems.append(("ema.device", message))
    if "sample_grid" in sections:
        message = ("not supported with FSDP2Strategy (it samples on rank 0 alone, a sharded model needs every "
                   "rank): set sample_grid: null")
        problems.append(("sample_grid", message))
    if "posthoc_ema" in sections:
        message = "not supported with FSDP2Strategy (its profiles would hold rank 0's shards only): set posthoc_ema: null"
        problems.append(("posthoc_ema", message))
    if model.compile_unet is not None:
        message = "must be null with FSDP2Strategy (the UNet is compiled before it is sharded; untested together)"
        problems.append(("model.init_args.compile_unet", message))
    if model.optimizer_config.algorithm == "muon":
        problems.append(("model.init_args.optimizer.algorithm", MUON_UNDER_FSDP))
    return problems


def last_checkpoint(run_dir: str) -> Path:
    """run_dir/checkpoints/last.ckpt: where the `checkpoint` section keeps a run's latest state."""
    return Path(checkpoint_dir(run_dir)) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"


def resume_path(ckpt_path: str | None, stated: bool, run_dir: str) -> str | None:
    """The checkpoint `cascade fit` starts from: with no --ckpt_path, the run's last.ckpt when
    there is one (saying so: a rerun in the same run_dir continues the run rather than starting a
    second one over it), else none; `--ckpt_path none` (or null) none, a fresh start that
    overwrites the run's checkpoints; `--ckpt_path last` the run's last.ckpt, or none before the
    run has one (a requeued job passes it) -- that file alone, never a `last-v1.ckpt` beside it;
    any other value as given."""
    last = last_checkpoint(run_dir)
    if not stated:
        if not last.is_file():
            return None
        note(f"resuming from {last} (a run already there); start over with --ckpt_path none or a fresh --run-dir")
        return str(last)
    if ckpt_path is None or ckpt_path.lower() in ("none", "null"):
        return None
    if ckpt_path == "last":
        if not last.is_file():
            note(f"--ckpt_path last: no {last} yet, starting from scratch")
            return None
        return str(last)
    return ckpt_path


def resume_command(argv: list[str], run_dir: str) -> str:
    """The `cascade fit` command that continues a run: its arguments, with --run-dir stated and
    `--ckpt_path last` in place of any other --ckpt_path."""
    kept: list[str] = []
    arguments = iter(argv)
    for argument in arguments:
        if argument == "--ckpt_path":
            next(arguments, None)
        elif not argument.startswith("--ckpt_path="):
            kept.append(argument)
    if not any(argument.split("=", 1)[0] in ("--run-dir", "--run_dir") for argument in kept):
        kept += ["--run-dir", run_dir]
    return shlex.join(["cascade", "fit", *kept, "--ckpt_path", "last"])


@rank_zero_only
def note(message: str) -> None:
    """A `cascade fit: ...` line on stderr, from the first process only (every DDP rank runs the CLI)."""
    print(f"cascade fit: {message}", file=sys.stderr, flush=True)


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
    """Fail now when a shard DataModule leaves out what the stage's conditioning needs (the sizes
    cannot differ: they are linked, see `SIZE_LINKS`)."""
    settings = dict(getattr(datamodule, "hparams", {}) or {})
    problems = []
    if model.conditioning == "class" and settings.get("with_class_label") is False:
        problems.append(("data.init_args.with_class_label", "must be true for a class-conditional stage"))
    if model.conditioning == "text" and settings.get("with_caption") is False and not settings.get("text_encoder"):
        message = "must be true (or text_encoder set) for a text-conditional stage"
        problems.append(("data.init_args.with_caption", message))
    if problems:
        raise ConfigError(problems)


FIRST_SAMPLES = 16  # how many samples of a shard `check_first_samples` reads


def check_first_samples(datamodule: LightningDataModule | None, model: DiffusionStage, names: list[str]) -> None:
    """Fail now, naming the setting that asks for it, when none of the first samples of the first
    shard of each shard setting has a field the DataModule's settings need (`txt` for
    with_caption, `cls` for with_class_label, the embeddings for text_encoder): the data stream
    would skip sample after sample and stop with an error only after a thousand of them."""
    settings = dict(getattr(datamodule, "hparams", {}) or {})
    needed = {
        "with_caption": ("txt",),
        "with_class_label": ("cls",),
        "text_encoder": (EMBEDDING_FIELD, "json"),
    }
    needed = {setting: fields for setting, fields in needed.items() if settings.get(setting)}
    problems: dict[str, str] = {}
    for name in names:
        spec = getattr(datamodule, name, None)
        if spec is None or not needed:
            continue
        shard = resolve_shards(spec, f"data.init_args.{name}")[0]
        samples = first_samples(shard, FIRST_SAMPLES)
        if not samples:
            continue
        for setting, fields in needed.items():
            missing = [field for field in fields if not any(field in sample for sample in samples)]
            if missing and f"data.init_args.{setting}" not in problems:
                where = f"no {' or '.join(missing)} field in the first {len(samples)} samples of {shard}"
                problems[f"data.init_args.{setting}"] = f"{where}; {missing_field_advice(setting, model, samples)}"
    if problems:
        raise ConfigError(list(problems.items()))


def first_samples(shard: str, count: int) -> list[dict[str, bytes]]:
    """Up to `count` raw samples from the start of a local shard; none from a remote or unreadable
    one (the data stream reports those itself)."""
    samples: list[dict[str, bytes]] = []
    if not Path(shard).is_file():
        return samples
    try:
        for sample in read_samples(shard):
            samples.append(sample)
            if len(samples) == count:
                break
    except (tarfile.TarError, OSError):
        pass
    return samples


def missing_field_advice(setting: str, model: DiffusionStage, samples: list[dict[str, bytes]]) -> str:
    """Which settings to change when the shards lack the field `setting` asks for."""
    conditioning = f"model.init_args.conditioning (now {model.conditioning})"
    if setting == "with_caption":
        if model.conditioning != "text":
            return "this stage does not use captions: set data.init_args.with_caption false"
        if any(EMBEDDING_FIELD in sample for sample in samples):
            return ("the shards hold precomputed text embeddings: set data.init_args.text_encoder to their "
                    "encoder and data.init_args.with_caption false")
        return (f"train on captioned shards (data.init_args.train_shards), or change {conditioning} "
                "and set data.init_args.with_caption false")
    if setting == "with_class_label":
        if model.conditioning != "class":
            return "this stage does not use class labels: set data.init_args.with_class_label false"
        return (f"train on shards with class labels (data.init_args.train_shards), or change {conditioning} "
                "and set data.init_args.with_class_label false")
    return ("add them with `cascade data precompute-text --shards SHARDS --encoder KIND --out DIR` and train "
            "on DIR, or set data.init_args.text_encoder null to encode the captions while training")


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
    traceback, module, section_key = cause.__traceback__, "", None
    constructors = {callback_class.__init__.__code__: key for key, callback_class in CALLBACK_SECTIONS.items()}
    while traceback is not None:
        module = traceback.tb_frame.f_globals.get("__name__", "")
        section_key = constructors.get(traceback.tb_frame.f_code, section_key)
        traceback = traceback.tb_next
    if section_key is not None:  # a callback section's constructor refused a value
        return callback_problems(section_key, str(cause))
    sections = {"cascade.data": "data.init_args", "cascade.nn": "model.init_args.unet", "cascade.stages": "model.init_args"}
    section = next((key for prefix, key in sections.items() if module.startswith(prefix)), "trainer")
    return config_problems(section, str(cause))


def callback_problems(section: str, message: str) -> list[tuple[str, str]]:
    """(key, message) for an error raised by the constructor of a callback section's class: a
    message that starts with the argument's name ("sigma_rels: 0.4 outside (0, 0.3)") names
    `section.argument`, any other names the section."""
    argument, separator, rest = message.partition(": ")
    if separator and argument.isidentifier():
        return [(f"{section}.{argument}", rest)]
    return [(section, message)]


_UNION_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Expected a <class 'NoneType'>",
    "Given value type:",
    "Given value:",
)


def config_problems(key: str, message: str, known_keys: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(key, message) pairs from a jsonargparse error, dropping its Union bookkeeping and turning
    its nested 'Parser key "x":' / "Problem with given class_path" lines into a dotted key; a
    value given for a linked key ("argument SOURCE --> TARGET: ...") names TARGET. An unknown key
    is named in full with the closest valid one (`closest_key`): among the options of the class
    it was given to, or among `known_keys` (the subcommand's) outside any class."""
    keys = [key] if key else []
    class_path = None
    problems = []
    for raw in message.splitlines():
        line = raw.strip().removeprefix("- ").strip()
        if not line or line.startswith(_UNION_NOISE):
            continue
        linked = re.match(r"argument (\S+) --> (\S+):", line)
        if linked:
            problems.append((linked.group(2), f"follows {linked.group(1)}; set that instead"))
            continue
        nested_key = re.match(r'Parser key "([^"]+)":\s*(.*)$', line)
        given_class = re.match(r"Problem with given class_path '([^']+)':", line)
        if nested_key:
            keys.append(nested_key.group(1))
            line = nested_key.group(2)
        elif given_class:
            keys.append("init_args")
            class_path = given_class.group(1)
            continue
        unknown = unknown_keys(line)
        if unknown:
            known = class_option_keys(class_path) if class_path else list(known_keys)
            problems += [unknown_key_problem(keys, name, known) for name in unknown]
        elif line:
            problems.append((".".join(keys) or "config", line))
    return problems or [(key or "config", message)]


def unknown_keys(line: str) -> list[str]:
    """The keys a jsonargparse message says are not accepted (relative to where it was raised);
    empty for any other message."""
    patterns = (
        (r"Option '([^']+)' is not accepted", "{0}"),
        (r"Group '([^']+)' does not accept option '([^']+)'", "{0}.{1}"),
        (r"Subcommand '[^']+' does not accept option '([^']+)'", "{0}"),
    )
    for pattern, form in patterns:
        found = re.fullmatch(pattern, line)
        if found:
            return [form.format(*found.groups())]
    unrecognized = re.fullmatch(r"unrecognized arguments: (.*)", line)
    if unrecognized:
        return [arg.lstrip("-").split("=", 1)[0] for arg in unrecognized.group(1).split() if arg.startswith("--")]
    return []


def unknown_key_problem(scope: list[str], name: str, known: list[str]) -> tuple[str, str]:
    """(full key, "unknown key[; did you mean FULL KEY?]") for `name` given under `scope`."""
    full = ".".join([*scope, name])
    suggestion = closest_key(name, known)
    if suggestion is None:
        return full, "unknown key"
    return full, f"unknown key; did you mean {'.'.join([*scope, suggestion])}?"


def closest_key(unknown: str, known: Iterable[str]) -> str | None:
    """The valid key nearest a misspelt dotted one, matched one level at a time with difflib
    (`trainr.max_stepz` -> `trainer.max_steps`); past a key that takes a whole class or mapping
    (`ema`, whose options are not listed) the rest is kept as written. None when some level has
    nothing close, or nothing differs."""
    known = set(known)
    matched: list[str] = []
    for part in unknown.split("."):
        prefix = ".".join([*matched, ""])
        children = {key[len(prefix) :].split(".")[0] for key in known if key.startswith(prefix)}
        if not children or part in children:
            matched.append(part)
            continue
        close = difflib.get_close_matches(part, children, n=1)
        if not close:
            return None
        matched.append(close[0])
    suggestion = ".".join(matched)
    return None if suggestion == unknown else suggestion


def option_keys(parser: ArgumentParser) -> list[str]:
    """The dotted keys a jsonargparse parser accepts (its options, without help and config ones)."""
    actions = parser._actions  # argparse keeps them only here
    return [a.dest for a in actions if a.dest not in ("help", "config", "print_config") and not a.dest.endswith(".help")]


def class_option_keys(class_path: str) -> list[str]:
    """The init_args keys of the class at `class_path` (empty when it cannot be imported)."""
    module_name, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, fail_untyped=False)
    except (ImportError, AttributeError, ValueError, TypeError):
        return []
    return option_keys(parser)


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
    except TrainingInterrupted as stop:  # every rank's process ends here; one says how to resume
        if stop.report:
            print(f"cascade {subcommand}: {stop}", file=sys.stderr, flush=True)
        return 128 + stop.signum
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
