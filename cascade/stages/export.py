"""Export a trained stage for inference and load it back, without pickle.

An export directory holds:

- `model.safetensors`: the UNet weights (the EMA weights when the run used the `EMA` callback);
- `config.yaml`: the stage's class and constructor arguments (`stage_config()`), plus where
  the weights came from.

`load_exported(dir)` rebuilds the stage from these two files only (safetensors + safe YAML).
`load_checkpoint(path)` reads a Lightning `.ckpt` a user made with `torch.load(weights_only=True)`.
`load_stage(path)` takes either. The frozen text encoder is not part of either format: the
stage loads it from its own location on first use (`TextEncoderConfig`).
"""

from __future__ import annotations

import importlib
import inspect
import pickle
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from ..files.atomic import atomic_path, write_text
from .diffusion_stage import DiffusionStage

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
FORMAT_VERSION = 1


def resolve_stage_class(class_path: str) -> type[DiffusionStage]:
    """The stage class named by `class_path`; only `DiffusionStage` subclasses in `cascade.` modules."""
    module_name, _, class_name = class_path.rpartition(".")
    if not module_name.startswith("cascade."):
        raise ValueError(f"refusing to import stage class {class_path!r}: only cascade.* stages can be loaded")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, DiffusionStage)):
        raise ValueError(f"{class_path!r} is not a DiffusionStage subclass")  # noqa: TRY004 - a file's content, which callers catch as ValueError
    return cls


def build_stage(stage_config: dict[str, Any]) -> DiffusionStage:
    """A freshly initialised stage from {"class_path", "init_args"}."""
    cls = resolve_stage_class(stage_config["class_path"])
    return cls(**stage_config["init_args"])


def stage_config_of(config: Any) -> dict[str, Any]:
    """{"class_path", "init_args"} of the `model:` section of a parsed stage YAML, in LightningCLI's
    layout (`model.class_path` + `model.init_args`) or with the init args directly under `model:`;
    class_path is None when the section names no class. The UNet's image_size, when the file does
    not state it, is the stage's, as `cascade fit` links it. ValueError without a `model:` mapping."""
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict):
        raise ValueError("no `model:` section")  # noqa: TRY004 - a file's content, which callers catch as ValueError
    if "init_args" in model:
        init_args = model["init_args"] or {}
    else:
        init_args = {key: value for key, value in model.items() if key != "class_path"}
    if not isinstance(init_args, dict):
        raise ValueError("`model.init_args` is not a mapping")  # noqa: TRY004 - a file's content, which callers catch as ValueError
    init_args = dict(init_args)
    unet = init_args.get("unet")
    if isinstance(unet, dict) and "image_size" not in unet:
        # `cascade fit` links the UNet's image_size to the stage's (stated, or the class default).
        if "image_size" in init_args:
            unet = {**unet, "image_size": init_args["image_size"]}
        elif model.get("class_path"):
            default = inspect.signature(resolve_stage_class(model["class_path"])).parameters["image_size"].default
            unet = {**unet, "image_size": default}
        init_args["unet"] = unet
    return {"class_path": model.get("class_path"), "init_args": init_args}


def read_stage_config(path: str | Path) -> dict[str, Any]:
    """{"class_path", "init_args"} of a stage YAML file (`stage_config_of`), ready for
    `build_stage`; ValueError naming the file when it has no `model:` section or no class_path."""
    try:
        stage_config = stage_config_of(yaml.safe_load(Path(path).read_text()))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    if stage_config["class_path"] is None:
        raise ValueError(f"{path}: the `model:` section has no class_path")
    return stage_config


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """A Lightning checkpoint written by a cascade stage, loaded with weights_only=True
    (`mmap`: its tensors memory-mapped, not read, for a caller that needs only its entries)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    if not isinstance(checkpoint, dict) or "cascade_stage" not in checkpoint:
        raise ValueError(f"{path} was not written by a cascade stage (no 'cascade_stage' entry)")
    return checkpoint


def read_export_config(directory: str | Path) -> dict[str, Any]:
    """The `config.yaml` of an export directory (safe YAML), its format_version checked."""
    config = yaml.safe_load((Path(directory) / CONFIG_FILE).read_text())
    version = config.get("format_version") if isinstance(config, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(f"{Path(directory) / CONFIG_FILE}: unsupported format_version {version!r}")
    return config


def stored_stage_config(path: str | Path) -> dict[str, Any]:
    """{"class_path", "init_args", ...} of the stage stored at `path` without reading its weights:
    an export directory's `config.yaml` (`read_export_config`) or a `.ckpt`'s `cascade_stage`
    entry (`read_checkpoint`, memory-mapped). ValueError naming the file when it cannot be read
    or holds no stage."""
    path = Path(path)
    try:
        config = read_export_config(path) if path.is_dir() else read_checkpoint(path, mmap=True)["cascade_stage"]
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: cannot be read as a cascade stage ({type(error).__name__}: {error})") from None
    if not (isinstance(config, dict) and isinstance(config.get("class_path"), str)
            and isinstance(config.get("init_args"), dict)):
        raise ValueError(f"{path}: holds no cascade stage (no class_path and init_args)")  # noqa: TRY004 - a file's content, which callers catch as ValueError
    return config


def export_stage(checkpoint_path: str | Path, out_dir: str | Path) -> Path:
    """Write `model.safetensors` (UNet weights; EMA when trained with it) and `config.yaml`."""
    checkpoint = read_checkpoint(checkpoint_path)
    unet_state = unet_state_of(checkpoint["state_dict"])
    provenance = {
        "ema_weights": "current_model_state" in checkpoint,
        "global_step": int(checkpoint.get("global_step", 0)),
        "source_checkpoint": str(Path(checkpoint_path).resolve()),
    }
    return write_export(unet_state, checkpoint["cascade_stage"], out_dir, provenance)


def unet_state_of(stage_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The UNet's tensors of a stage's `state_dict` (its `unet.` entries), named as in the UNet."""
    return {name[len("unet.") :]: tensor for name, tensor in stage_state.items() if name.startswith("unet.")}


def write_export(unet_state: dict[str, torch.Tensor], stage_config: dict[str, Any], out_dir: str | Path,
                 provenance: dict[str, Any] | None = None) -> Path:
    """The export directory of a stage: its UNet weights and {"class_path", "init_args"} config.

    Both files are written atomically (`cascade.files.atomic`), which also gives them the
    permissions of any other output: safetensors alone creates its file readable by its owner only.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = {name: tensor.contiguous() for name, tensor in unet_state.items()}
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(weights, str(tmp), metadata={"format": "cascade-stage", "version": str(FORMAT_VERSION)})
    config = {"format_version": FORMAT_VERSION, **stage_config, **(provenance or {})}
    write_text(out / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))
    return out


def load_exported(directory: str | Path, device: str | torch.device = "cpu") -> DiffusionStage:
    """The stage in `directory` (from `export_stage`), in eval mode on `device`. No pickle."""
    directory = Path(directory)
    stage = build_stage(read_export_config(directory))
    stage.unet.load_state_dict(load_file(str(directory / WEIGHTS_FILE)), strict=True)
    return stage.to(device).eval()


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> DiffusionStage:
    """The stage in a `.ckpt` (its `state_dict`: the EMA weights when trained with `EMA`), in eval
    mode on `device`. Uses `torch.load(weights_only=True)`."""
    checkpoint = read_checkpoint(path)
    stage = build_stage(checkpoint["cascade_stage"])
    stage.load_state_dict(checkpoint["state_dict"], strict=True)
    return stage.to(device).eval()


def load_stage(path: str | Path, device: str | torch.device = "cpu") -> DiffusionStage:
    """`load_exported` for a directory, `load_checkpoint` for a `.ckpt` file."""
    path = Path(path)
    if path.is_dir():
        return load_exported(path, device)
    if path.is_file():
        return load_checkpoint(path, device)
    raise FileNotFoundError(f"no export directory or checkpoint at {path}")
