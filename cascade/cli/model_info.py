"""`cascade model-info CONFIG.yaml [...]`: parameters and forward FLOPs of the UNets in stage configs.

Reads `model.init_args.unet` (LightningCLI layout) or `model.unet` from each YAML file, with
its image_size the stage's (`model.init_args.image_size`, as `cascade fit` links them), builds
the UNet on the meta device (no memory, no time; `--device cpu` builds it for real) and prints
one table row per config: the block order (`UNetConfig.block_order`), the parameters, and the
GFLOP of one forward pass at batch 1 and the config's image_size (`cascade.bench.flops.count_flops`:
convolutions, matrix products and attention, 2 FLOPs per multiply-add), with text tokens of the
stage's `text_encoder.max_length` (DEFAULT_TEXT_LENGTH when the config states none), so that
two block orders of one network show equal parameters and different FLOPs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml
from rich.console import Console
from rich.table import Table

from ..bench.flops import count_flops
from ..bench.stage_inputs import DEFAULT_TEXT_LENGTH
from ..nn import UNet, UNetConfig, count_parameters
from ..stages.config import as_dataclass
from ..stages.export import stage_config_of


def unet_of(path: Path) -> tuple[str, UNetConfig]:
    """(stage class name, or "?" when the file names none; UNetConfig) of a stage YAML file;
    ValueError when it has no UNet section or the section is not a valid UNetConfig."""
    stage, config, _ = stage_unet_of(path)
    return stage, config


def stage_unet_of(path: Path) -> tuple[str, UNetConfig, int]:
    """`unet_of` plus the text length of the stage: `model.init_args.text_encoder.max_length`,
    DEFAULT_TEXT_LENGTH when the file states none."""
    stage_config = stage_config_of(yaml.safe_load(path.read_text()))
    values = stage_config["init_args"].get("unet")
    if not isinstance(values, dict):
        raise ValueError("no `model.init_args.unet` (or `model.unet`) section")  # noqa: TRY004 (a missing section, as the callers expect)
    stage = str(stage_config["class_path"] or "?").rsplit(".", 1)[-1]
    encoder = stage_config["init_args"].get("text_encoder")
    length = encoder.get("max_length") if isinstance(encoder, dict) else None
    if length is not None and (not isinstance(length, int) or length <= 0):
        raise ValueError(f"text_encoder.max_length must be a positive int, got {length!r}")
    return stage, as_dataclass(values, UNetConfig, "unet"), length or DEFAULT_TEXT_LENGTH


def forward_flops(unet: UNet, text_length: int = DEFAULT_TEXT_LENGTH) -> int:
    """FLOPs of one forward pass of `unet` at batch 1 and its config's image_size, with every
    input its config uses (a class label, `text_length` text tokens, the low-res image and its
    augmentation level). Runs on the device the UNet's parameters are on (meta: no arithmetic)."""
    config = unet.config
    device = next(unet.parameters()).device
    size = config.image_size
    inputs = {
        "x_t": torch.zeros(1, config.in_channels, size, size, device=device),
        "noise_cond": torch.zeros(1, device=device),
    }
    if config.num_classes:
        inputs["class_labels"] = torch.zeros(1, dtype=torch.long, device=device)
    if config.text_dim:
        inputs["text_tokens"] = torch.zeros(1, text_length, config.text_dim, device=device)
    if config.lowres_channels:
        inputs["lowres"] = torch.zeros(1, config.lowres_channels, size, size, device=device)
    if config.use_aug_cond:
        inputs["aug_cond"] = torch.zeros(1, device=device)
    with torch.no_grad():
        return count_flops(lambda: unet(**inputs))


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
        console = Console(width=160)
    errors = Console(stderr=True, soft_wrap=True)  # one line per bad config, however long its path
    table = Table(title="UNet parameters and forward FLOPs (batch 1, the config's image_size)")
    for column in ("config", "stage", "size", "conditioning", "level widths", "block order"):
        table.add_column(column)
    table.add_column("parameters", justify="right")
    table.add_column("GFLOP", justify="right")

    status = 0
    for path in args.configs:
        try:
            stage, config, text_length = stage_unet_of(path)
        except (OSError, ValueError, TypeError, yaml.YAMLError) as error:
            errors.print(f"{path}: {error}", style="red", markup=False)
            status = 1
            continue
        with torch.device(args.device):
            unet = UNet(config)
        parameters = count_parameters(unet)
        gflop = forward_flops(unet, text_length) / 1e9
        table.add_row(
            str(path),
            stage,
            f"{config.image_size}px",
            describe_conditioning(config),
            "/".join(str(width) for width in config.level_channels),
            config.block_order,
            f"{parameters / 1e6:,.1f} M",
            f"{gflop:,.3f}",
        )
    if table.row_count:
        console.print(table)
    return status
