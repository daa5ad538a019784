"""Shared fixtures: tiny synthetic shards (written once per session), micro stage configs, and the
project built as a wheel that runs `cascade demo --fast` once per session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


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


def source_copy(target: Path) -> Path:
    """The project's files (no virtual environment, git data, build outputs or run artefacts)."""
    ignore = shutil.ignore_patterns(".venv", "venv", ".git", "build", "dist", "runs", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".hypothesis")
    shutil.copytree(REPO, target, symlinks=True, ignore=ignore)
    return target


@dataclass(frozen=True)
class WheelDemo:
    """The wheel, the virtual environment it is installed in, and its `cascade demo --fast` run."""

    wheel: Path
    names: list[str]  # the wheel's members
    site: str  # the environment's site-packages
    python: Path
    cascade: Path  # the environment's `cascade` script
    env: dict[str, str]  # the environment the commands run in (no PYTHONPATH)
    empty: Path  # the folder the demo ran in, empty before
    out: Path  # the demo's output folder (empty / "demo")
    result: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def wheel_demo(tmp_path_factory) -> WheelDemo:
    """`pip wheel` of a copy of the project, installed (outside the checkout) into a fresh virtual
    environment that sees this test environment's packages (torch and friends) but not its cascade,
    then `cascade demo --fast --out demo` in an empty folder: one demo run serves the wheel's test
    (tests/test_architecture.py) and the demo's (tests/test_demo.py)."""
    root = tmp_path_factory.mktemp("wheel")
    source = source_copy(root / "source")
    wheels = root / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
             str(source)]
    subprocess.run(build, check=True, cwd=root, capture_output=True)
    (wheel,) = wheels.glob("cascade_diffusion-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    test_site = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "test_environment.pth").write_text(test_site + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)]
    subprocess.run(install, check=True, capture_output=True)
    empty = root / "empty"
    empty.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    cascade = env_dir / "bin" / "cascade"
    result = subprocess.run([str(cascade), "demo", "--fast", "--out", "demo", "--threads", "2"], cwd=empty, env=env,
                            capture_output=True, text=True, timeout=1200)
    return WheelDemo(wheel, names, site, python, cascade, env, empty, empty / "demo", result)
