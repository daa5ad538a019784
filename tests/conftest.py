"""Shared fixtures: tiny synthetic shards (written once per session) and micro stage configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml


@pytest.fixture
def one_torch_thread():
    """Run with one intra-op thread: on 2 cores shared with other jobs, a second spinning OpenMP
    thread makes the micro models of the stage tests many times slower, not faster."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory) -> dict[str, str]:
    """Train (96 samples, 3 shards) and held-out val (16 samples) shards at 32x32."""
    from cascade.data.sources import SyntheticSource
    from cascade.data.writer import write_shards

    root = tmp_path_factory.mktemp("shards")
    write_shards(SyntheticSource(count=96, resolution=32), str(root / "train"), max_samples=32, progress=False)
    write_shards(SyntheticSource(count=16, resolution=32, split="heldout"), str(root / "val"), progress=False)
    return {"train": str(root / "train"), "val": str(root / "val")}


def micro_stage_config(
    shards: dict[str, str],
    run_dir: Path,
    stage: str = "base",
    conditioning: str = "class",
    max_steps: int = 4,
    val_every: int = 2,
    **model_args,
) -> dict:
    """A complete `cascade fit` config for a micro stage (16x16 base or 8->16 SR) that trains in
    seconds on a CPU: every section the real configs have, at toy sizes, with no sample grid."""
    unet = {
        "base_channels": 8,
        "channel_mults": [1, 2],
        "num_res_blocks": 1,
        "attention_resolutions": [],
        "norm_groups": 4,
        "num_classes": 15 if conditioning == "class" else 0,
        "text_dim": 384 if conditioning == "text" else 0,
    }
    model = {"image_size": 16, "conditioning": conditioning, "optimizer": {"lr": 2e-3, "warmup_steps": 2}}
    data = {
        "train_shards": shards["train"],
        "val_shards": shards["val"],
        "with_class_label": conditioning == "class",
        "with_caption": conditioning == "text",
        "batch_size": 4,
        "num_workers": 0,
        "shuffle_buffer": 16,
        "samples_per_epoch": None,
    }
    if conditioning == "text":
        model["text_encoder"] = {"kind": "minilm", "max_length": 16}
    if stage == "sr":
        unet.update(lowres_channels=3, use_aug_cond=True)
        model.update(lowres_size=8)
    model.update(model_args)
    model["unet"] = unet | model.pop("unet", {})
    run_dir = str(run_dir)
    return {
        "seed_everything": 0,
        "run_dir": run_dir,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": max_steps,
            "val_check_interval": val_every,
            "limit_val_batches": 1,
            "log_every_n_steps": 1,
            "enable_model_summary": False,
            "enable_progress_bar": False,
            "logger": [{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"name": "csv"}}],
        },
        "ema": {"decay": 0.99},
        "sample_grid": None,
        "model": {
            "class_path": "cascade.stages.BaseStage" if stage == "base" else "cascade.stages.SuperResStage",
            "init_args": model,
        },
        "data": {"class_path": "cascade.data.datamodule.ShardDataModule", "init_args": data},
    }


@pytest.fixture
def write_stage_config(synthetic_shards, tmp_path):
    """write_stage_config(name="config", **micro_stage_config kwargs) -> (config path, run dir)."""

    def write(name: str = "config", **kwargs) -> tuple[Path, Path]:
        run_dir = tmp_path / f"run_{name}"
        config = micro_stage_config(synthetic_shards, run_dir, **kwargs)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path, run_dir

    return write
