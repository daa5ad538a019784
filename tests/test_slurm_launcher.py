"""The Slurm launcher and callback without a cluster: template filling, dry runs, the fork guard.

The templates running on a real (emulated) cluster are in test_slurm_cluster.py.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cascade.cli import main as cascade_main
from cascade.cli.slurm import TEMPLATE_DIR, fill
from cascade.resources import shipped

TEMPLATES = sorted(TEMPLATE_DIR.glob("*.sbatch"))
STAGE_CONFIGS = sorted([*shipped("configs").glob("*.yaml"), *shipped("configs").glob("demo/*.yaml")])


def train_template_fit_args(values: dict[str, str]) -> list[str]:
    """The arguments train.sbatch gives `cascade fit` (before the user's), its variables set to `values`."""
    script = (TEMPLATE_DIR / "train.sbatch").read_text()
    command = re.search(r"^srun .*?cascade fit (.*?)\"\$@\"", script, re.DOTALL | re.MULTILINE).group(1)
    command = command.replace("\\\n", " ")
    for name, value in values.items():
        command = command.replace(f'"${name}"', shlex.quote(value))
    return shlex.split(command)


def test_the_three_templates_are_there_and_valid_bash():
    assert [path.name for path in TEMPLATES] == ["eval.sbatch", "sample.sbatch", "train.sbatch"]
    for path in TEMPLATES:
        subprocess.run(["bash", "-n", str(path)], check=True)


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda path: path.name)
def test_every_template_is_bounded_and_requeueable(path):
    header = [line for line in path.read_text().splitlines() if line.startswith("#SBATCH")]
    keys = {line.split("=")[0].removeprefix("#SBATCH ") for line in header}
    assert {"--nodes", "--ntasks-per-node", "--gpus-per-node", "--cpus-per-task", "--time",
            "--signal", "--requeue", "--output", "--job-name"} <= keys


def test_fill_sets_values_and_adds_options():
    template = "#!/bin/bash\n#SBATCH --nodes=1\n#SBATCH --time=1:00\n#SBATCH --requeue\necho hi\n"
    filled = fill(template, {"nodes": "4"}, ["--partition=gpu"])
    assert filled == (
        "#!/bin/bash\n#SBATCH --nodes=4\n#SBATCH --time=1:00\n#SBATCH --requeue\n"
        "#SBATCH --partition=gpu\necho hi\n"
    )
    with pytest.raises(ValueError, match="no #SBATCH line for gpus-per-node"):
        fill(template, {"gpus-per-node": "8"}, [])


def test_dry_run_takes_nodes_and_gpus_from_the_config(tmp_path, capsys):
    config = tmp_path / "stage.yaml"
    config.write_text("trainer:\n  num_nodes: 4\n  devices: 8\n  max_steps: 10\n")
    run_dir = tmp_path / "run"
    code = cascade_main(["slurm", "submit", "train", "-c", str(config), "--run-dir", str(run_dir), "--time", "2:00:00",
                 "--grace", "90", "--sbatch-option=--partition=gpu", "--dry-run", "--", "--trainer.max_steps", "5"])
    out = capsys.readouterr().out
    assert code == 0
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --time=2:00:00", "#SBATCH --signal=USR1@90", "#SBATCH --partition=gpu",
                 f"#SBATCH --output={run_dir}/logs/%x-%j.out"):
        assert line in out.splitlines()
    assert out.splitlines()[-1] == (
        f"# sbatch --parsable {run_dir}/train.sbatch {config} {run_dir} --trainer.max_steps 5"
    )
    written = (run_dir / "train.sbatch").read_text()
    assert written in out, "the dry run writes the script whose sbatch line it prints"
    assert (run_dir / "logs").is_dir()


def test_dry_run_of_a_cpu_sampling_job(tmp_path, capsys):
    code = cascade_main(["slurm", "submit", "sample", "--run-dir", str(tmp_path), "--nodes", "2", "--gpus-per-node", "0",
                 "--grace", "30", "--dry-run", "--", "--stages", "base.ckpt", "--classes", "1,2"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert {"#SBATCH --nodes=2", "#SBATCH --gpus-per-node=0", "#SBATCH --ntasks-per-node=1",
            "#SBATCH --signal=B:USR1@30"} <= set(lines)
    assert lines[-1].endswith(f"sample.sbatch {tmp_path} --stages base.ckpt --classes 1,2")


def test_train_needs_an_existing_config(tmp_path, capsys):
    assert cascade_main(["slurm", "submit", "train", "--run-dir", str(tmp_path), "--dry-run"]) == 2
    assert cascade_main(["slurm", "submit", "train", "-c", str(tmp_path / "nope.yaml"), "--run-dir", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda path: path.name)
def test_no_template_expands_an_array_that_bash_4_2_calls_unbound(path):
    """Under `set -u`, bash before 4.4 fails on "${array[@]}" when the array is empty."""
    for line in path.read_text().splitlines():
        for expansion in re.findall(r'"\$\{(\w+)\[@\]\}"', line):
            assert f"${{{expansion}[@]+" in line, line


def _fake_slurm_bin(folder: Path) -> Path:
    """`srun` that prints where the command it was given resolves, and `scontrol` for hostnames."""
    folder.mkdir()
    (folder / "srun").write_text('#!/bin/bash\nwhile [[ $1 == -* ]]; do shift; done\necho "runs $(command -v "$1")"\n')
    (folder / "scontrol").write_text("#!/bin/bash\necho localhost\n")
    for tool in ("srun", "scontrol"):
        (folder / tool).chmod(0o755)
    return folder


def _run_job(script: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    slurm_env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "localhost", "SLURM_JOB_NUM_NODES": "1",
                 "SLURM_NTASKS_PER_NODE": "1", "SLURM_NTASKS": "1", "HOME": str(tmp_path)}
    fake = tmp_path / "fake-bin"
    if not fake.exists():
        _fake_slurm_bin(fake)
    path = os.pathsep.join([str(fake), "/usr/bin", "/bin"])  # no virtual environment on PATH
    return subprocess.run(["bash", str(script), "stage.yaml", str(tmp_path / "run")], capture_output=True,
                          text=True, env={"PATH": path, **slurm_env, **env})


def test_the_submitted_job_runs_the_submitting_installation_without_an_activated_environment(tmp_path, capsys):
    run_dir = tmp_path / "submitted"
    config = tmp_path / "stage.yaml"
    config.write_text("trainer:\n  num_nodes: 1\n  devices: 1\n")
    assert cascade_main(["slurm", "submit", "train", "-c", str(config), "--run-dir", str(run_dir), "--dry-run"]) == 0
    capsys.readouterr()
    job = _run_job(run_dir / "train.sbatch", tmp_path)
    assert job.returncode == 0, job.stderr
    assert f"runs {Path(sys.executable).parent / 'cascade'}" in job.stdout


def test_the_environment_hook_runs_before_cascade_is_looked_up(tmp_path):
    template = TEMPLATE_DIR / "train.sbatch"
    missing = _run_job(template, tmp_path)
    assert missing.returncode == 2 and "cascade is not on PATH" in missing.stderr
    hooked = _run_job(template, tmp_path, CASCADE_ENV_SETUP=f'export PATH="{Path(sys.executable).parent}:$PATH"')
    assert hooked.returncode == 0, hooked.stderr
    assert f"runs {Path(sys.executable).parent / 'cascade'}" in hooked.stdout
def test_the_job_resumes_from_the_newest_checkpoint_but_never_a_versioned_last(tmp_path):
    run_dir = tmp_path / "run"
    files = {"checkpoints/last.ckpt": 1000, "hpc_ckpt_1.ckpt": 2000, "checkpoints/last-v1.ckpt": 3000}
    for name, mtime in files.items():
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_bytes(b"")
        os.utime(run_dir / name, (mtime, mtime))
    setup = f'export PATH="{Path(sys.executable).parent}:$PATH"'

    def resumed_from() -> str:
        job = _run_job(TEMPLATE_DIR / "train.sbatch", tmp_path, CASCADE_ENV_SETUP=setup)
        assert job.returncode == 0, job.stderr
        return re.search(r"resume from (\S+)$", job.stdout, re.MULTILINE).group(1)

    assert resumed_from() == str(run_dir / "hpc_ckpt_1.ckpt")  # newer than last.ckpt
    os.utime(run_dir / "hpc_ckpt_1.ckpt", (500, 500))
    assert resumed_from() == str(run_dir / "checkpoints" / "last.ckpt")


@pytest.mark.parametrize("config", STAGE_CONFIGS, ids=lambda path: path.relative_to(shipped("configs")).as_posix())
def test_train_template_fit_arguments_parse_with_every_shipped_config(config, tmp_path, capsys):
    values = {"CONFIG": str(config), "RUN_DIR": str(tmp_path), "SLURM_JOB_NUM_NODES": "2",
              "SLURM_NTASKS_PER_NODE": "4", "ACCELERATOR": "cpu"}  # fmt: skip
    assert cascade_main(["fit", *train_template_fit_args(values), "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["run_dir"] == str(tmp_path)
    trainer = printed["trainer"]
    assert (trainer["num_nodes"], str(trainer["devices"]), trainer["accelerator"]) == (2, "4", "cpu")  # devices: int | str
    callbacks = [callback["class_path"] for callback in printed["trainer"]["callbacks"]]
    assert callbacks == ["cascade.slurm.callback.SlurmJob", "cascade.stages.ProgressLines"]


@pytest.mark.parametrize("name", ["base64_text", "base64_imagenet", "sr256", "sr1024"])
def test_dry_run_takes_nodes_and_gpus_from_each_gpu_config(name, tmp_path, capsys):
    config = shipped("configs", f"{name}.yaml")
    assert cascade_main(["slurm", "submit", "train", "-c", str(config), "--run-dir", str(tmp_path), "--dry-run"]) == 0
    assert {"#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8"} <= set(
        capsys.readouterr().out.splitlines()
    )
