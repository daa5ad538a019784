"""`cascade model-info CONFIG.yaml [...]`: parameter counts of the UNets in stage configs.

Reads `model.init_args.unet` (LightningCLI layout) or `model.unet` from each YAML file, with
its image_size the stage's (`model.init_args.image_size`, as `cascade fit` links them), builds
the UNet on the meta device (no memory, no time; `--device cpu` builds it for real) and prints
one table row per config.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml
from rich.console import Console
from rich.table import Table

from ..nn import UNet, UNetConfig, count_parameters
from ..stages.config import as_dataclass
from ..stages.export import stage_config_of


def unet_of(path: Path) -> tuple[str, UNetConfig]:
    """(stage class name, or "?" when the file names none; UNetConfig) of a stage YAML file;
    ValueError when it has no UNet section or the section is not a valid UNetConfig."""
    stage_config = stage_config_of(yaml.safe_load(path.read_text()))
    values = stage_config["init_args"].get("unet")
    if not isinstance(values, dict):
        raise ValueError("no `model.init_args.unet` (or `model.unet`) section")
    stage = str(stage_config["class_path"] or "?").rsplit(".", 1)[-1]
    return stage, as_dataclass(values, UNetConfig, "unet")


def describe_conditioning(config: UNetConfig) -> str:
    kinds = []
    if config.num_classes:
        kinds.append(f"class {config.num_classes}")
    if config.text_dim:
        kinds.append(f"text {config.text_dim}")
    if config.lowres_channels:
        kinds.append("low-res" + (" + aug" if config.use_aug_cond else ""))
    return " + ".join(kinds) or "none"


def model_info(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cascade model-info", description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", type=Path, help="stage config YAML files")
    parser.add_argument("--device", default="meta", choices=["meta", "cpu"], help="where to build the UNets")
    args = parser.parse_args(argv)

    console = Console()
    if not console.is_terminal:  # logs and pipes: wide enough for one line per config
        console = Console(width=120)
    errors = Console(stderr=True)
    table = Table(title="UNet parameters")
    for column in ("config", "stage", "size", "conditioning", "level widths"):
        table.add_column(column)
    table.add_column("parameters", justify="right")

    status = 0
    for path in args.configs:
        try:
            stage, config = unet_of(path)
        except (OSError, ValueError, TypeError, yaml.YAMLError) as error:
            errors.print(f"[red]{path}: {error}[/red]")
            status = 1
            continue
        with torch.device(args.device):
            parameters = count_parameters(UNet(config))
        table.add_row(
            str(path),
            stage,
            f"{config.image_size}px",
            describe_conditioning(config),
            "/".join(str(width) for width in config.level_channels),
            f"{parameters / 1e6:,.1f} M",
        )
    if table.row_count:
        console.print(table)
    return status
