"""FSDP2 (`cascade.stages.FSDP2Strategy`, configs/strategy/fsdp.yaml) against DDP, for real:
`cascade fit` on 2 gloo processes (accelerator=cpu, devices=2) in subprocesses.

The same micro stage, seed and data train 3 steps (with a validation under the EMA weights),
save last.ckpt, resume from it for 3 more steps, save again and are exported, once under DDP and
once with the UNet sharded over the two processes. Both runs draw the same t, noise and CFG
dropout and see the same batches, so they compute the same steps; what differs is only how the
gradients are summed over the ranks (DDP's bucketed all-reduce, FSDP's reduce-scatter of each
block) and so the rounding of float32 sums. The FSDP run also recomputes each block's
activations in backward (`unet.gradient_checkpointing`, around the sharded blocks): the same
operations in the same order, so it changes no number.

Tolerance: after 6 AdamW steps at lr 2e-3 the exported EMA weights, the live weights and every
other float of the two runs agree to 1.2e-7 in absolute value (measured, on weights of order 1:
one float32 ulp), so `ATOL` = 1e-5 leaves a margin of about 80 and is still 200 times smaller than
one AdamW update (~lr = 2e-3 per element): an EMA that averaged only its rank's shard, a resume
that lost the moments or the EMA count, or a step taken twice would differ by updates, not ulps.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import micro_stage_config
from lightning.pytorch import Callback
from safetensors.torch import load_file

from cascade.cli.stage import fit as fit_main
from cascade.stages import EMA
from cascade.stages.export import WEIGHTS_FILE, export_stage
from cascade.stages.sharding import full_state_dict, is_sharded, local_tensor

ROOT = Path(__file__).resolve().parents[1]
FSDP_CONFIG = ROOT / "configs" / "strategy" / "fsdp.yaml"
DDP = '{"class_path": "lightning.pytorch.strategies.DDPStrategy", "init_args": {"find_unused_parameters": false}}'
HALF = 3
ATOL = 1e-5


class RecordResumeStart(Callback):
    """At the start of a resumed run, rank 0 saves the full live and EMA weights the run starts
    from, and each rank the number of elements of the live weights it holds, to run_dir/start.pt."""

    def on_train_start(self, trainer, pl_module):
        ema = next(callback for callback in trainer.callbacks if isinstance(callback, EMA))
        average = ema.averaged_module()
        sharded = is_sharded(pl_module)
        live = full_state_dict(pl_module) if sharded else pl_module.state_dict()
        averaged = full_state_dict(average) if sharded else average.state_dict()
        held = torch.tensor([sum(local_tensor(p).numel() for p in pl_module.parameters())])
        counts = [torch.zeros_like(held) for _ in range(trainer.world_size)]
        torch.distributed.all_gather(counts, held)
        if trainer.global_rank == 0:
            record = {"live": live, "ema": averaged, "held": torch.cat(counts), "sharded": sharded}
            torch.save(record, Path(trainer.default_root_dir) / "start.pt")


def _fit(config: Path, *arguments: str) -> None:
    command = [sys.executable, "-m", "cascade", "fit", "-c", str(config), *arguments]
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    env.update(PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    result = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Starting with 2 processes" in result.stderr + result.stdout


@pytest.fixture(scope="module")
def runs(synthetic_shards, tmp_path_factory) -> dict[str, Path]:
    """{"ddp" | "fsdp": run_dir} of the two runs (3 steps, resume, 3 steps), each exported to run_dir/export."""
    root = tmp_path_factory.mktemp("fsdp")
    strategies = {"ddp": [f"--trainer.strategy={DDP}"],
                  "fsdp": ["-c", str(FSDP_CONFIG), "--trainer.strategy.init_args.param_dtype=null",
                           "--model.init_args.unet.gradient_checkpointing=true"]}
    run_dirs = {}
    for name, strategy in strategies.items():
        run_dir = root / name
        stage_config = micro_stage_config(synthetic_shards, run_dir, max_steps=2 * HALF, val_every=HALF)
        stage_config["trainer"]["devices"] = 2
        config = root / f"{name}.yaml"
        config.write_text(yaml.safe_dump(stage_config, sort_keys=False))
        _fit(config, *strategy, "--trainer.max_steps", str(HALF))
        shutil.copy(run_dir / "checkpoints" / "last.ckpt", run_dir / "half.ckpt")
        _fit(config, *strategy, "--ckpt_path", "last", f"--trainer.callbacks+={Path(__file__).stem}.RecordResumeStart")
        export_stage(run_dir / "checkpoints" / "last.ckpt", run_dir / "export")
        run_dirs[name] = run_dir
    return run_dirs


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys(), what
    for name, value in a.items():
        difference = float((b[name] - value).abs().max())
        assert difference <= ATOL, f"{what} {name}: the runs differ by {difference:.3g}"


@pytest.mark.slow
def test_fsdp_trains_resumes_and_exports_the_weights_ddp_does(runs):
    ddp, fsdp = _load(runs["ddp"] / "checkpoints" / "last.ckpt"), _load(runs["fsdp"] / "checkpoints" / "last.ckpt")
    assert ddp["global_step"] == fsdp["global_step"] == 2 * HALF
    assert int(ddp["averaging_state"]["n_averaged"]) == int(fsdp["averaging_state"]["n_averaged"]) == 2 * HALF
    assert ddp["callbacks"]["EMA"] == fsdp["callbacks"]["EMA"] == {"latest_update_step": 2 * HALF}
    # The checkpoint holds full tensors, named as a DDP run's: the live weights and the EMA.
    _assert_close(ddp["current_model_state"], fsdp["current_model_state"], "live weights")
    _assert_close(ddp["state_dict"], fsdp["state_dict"], "EMA weights")
    # The EMA is not the live weights (decay 0.99 after 6 steps), so the comparison above is of both.
    name = "unet.conv_out.weight"
    assert (fsdp["state_dict"][name] - fsdp["current_model_state"][name]).abs().max() > 100 * ATOL

    exported = {key: load_file(str(run_dir / "export" / WEIGHTS_FILE)) for key, run_dir in runs.items()}
    _assert_close(exported["ddp"], exported["fsdp"], "exported weights")
    ema_unet = {key[len("unet."):]: value for key, value in fsdp["state_dict"].items() if key.startswith("unet.")}
    assert exported["fsdp"].keys() == ema_unet.keys()
    assert all(torch.equal(exported["fsdp"][key], ema_unet[key]) for key in ema_unet)


@pytest.mark.slow
def test_fsdp_resume_starts_from_the_checkpoints_live_and_ema_weights_exactly(runs):
    half, start = _load(runs["fsdp"] / "half.ckpt"), _load(runs["fsdp"] / "start.pt")
    assert half["global_step"] == HALF
    # The UNet was sharded: each of the two ranks held part of the weights, together all of them.
    total = sum(value.numel() for key, value in half["current_model_state"].items() if "." in key)
    assert start["sharded"] and all(0 < held < total for held in start["held"].tolist())
    assert int(start["held"].sum()) >= total
    for key, saved in (("live", "current_model_state"), ("ema", "state_dict")):
        assert start[key].keys() == half[saved].keys()
        for name, value in half[saved].items():
            assert torch.equal(start[key][name], value), f"{key} {name}"


def _config_error(write_stage_config, capsys, *arguments: str) -> list[str]:
    config, _ = write_stage_config(max_steps=2, val_every=2)
    assert fit_main(["-c", str(config), "--trainer.devices=2", "-c", str(FSDP_CONFIG), *arguments]) == 2
    return capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    ("arguments", "key"),
    [
        (["--trainer.strategy.init_args.param_dtype=null", "--trainer.strategy.init_args.save_distributed_checkpoint=true"],
         "trainer.strategy.init_args.save_distributed_checkpoint"),
        (["--trainer.strategy.init_args.param_dtype=float16"], "trainer.strategy.init_args.param_dtype"),
        ([], "trainer.strategy.init_args.param_dtype"),  # bfloat16 (the shipped value) with precision 32-true
        (["--trainer.strategy.init_args.param_dtype=null", "--ema.device=cpu"], "ema.device"),
        (["--trainer.strategy.init_args.param_dtype=null", "--sample_grid=cascade.stages.SampleGrid"], "sample_grid"),
        (["--trainer.strategy.init_args.param_dtype=null", "--posthoc_ema=cascade.stages.PostHocEMA"], "posthoc_ema"),
        (["--trainer.strategy.init_args.param_dtype=null", "--model.init_args.compile_unet=default"],
         "model.init_args.compile_unet"),
        (["--trainer.strategy.init_args.param_dtype=null", "--model.init_args.optimizer.algorithm=muon"],
         "model.init_args.optimizer.algorithm"),
    ],
)
def test_fsdp_refuses_what_it_does_not_support_in_one_line_naming_the_key(write_stage_config, capsys, arguments, key):
    lines = _config_error(write_stage_config, capsys, *arguments)
    assert len(lines) == 1 and lines[0].startswith(f"cascade fit: config error: {key}: "), lines


def test_fsdp_takes_no_tensor_parallel_size(write_stage_config, capsys):
    # (jsonargparse also reports that the value is not the other type trainer.strategy takes, a name)
    lines = _config_error(write_stage_config, capsys, "--trainer.strategy.init_args.tensor_parallel_size=2")
    assert "cascade fit: config error: trainer.strategy.init_args.tensor_parallel_size: unknown key" in lines, lines
