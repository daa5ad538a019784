"""The sbatch templates on a real Slurm: a throwaway two-node cluster on this machine.

The module's fixture installs Debian's Slurm and munge packages (when missing), starts munged,
slurmctld and two slurmd (nodes n1 and n2) from a configuration in a temporary directory, and
at the end stops every daemon by its pid file and purges the packages it installed, so that
`srun` on PATH does not make the Trainers of other test sessions warn. The jobs run the shipped
templates through `cascade slurm submit` with the CPU settings (no GPUs, DDP over gloo).

Scenarios (issue 8): two-node training; preemption by SIGUSR1, requeue and resume; sampling
over two tasks; a broken config failing fast. Every job has --time and every wait a deadline.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

from cascade.files.sample_folder import work_items

sys.path.insert(0, str(Path(__file__).parent))
from slurm_cluster.cluster import (  # noqa: E402
    ClusterUnavailable, SlurmCluster, install_packages, lock, remove_packages,
)

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
DEMO_BASE = REPO / "configs" / "demo" / "base.yaml"
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                "BOOT_FAIL", "DEADLINE"}
# Job wall-clock limit (minutes) and how long a test waits for one job; both far above what a
# job needs on two shared cores, so only a hang reaches them.
JOB_TIME_MIN = 10
JOB_DEADLINE_S = 420


# ---- the cluster ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.skip("the Slurm tests install packages and start daemons: run them as root")
    try:
        held = lock()
    except ClusterUnavailable as error:
        pytest.skip(str(error))
    # Not under pytest's tmp_path: munged (user munge) must be able to walk down to its socket.
    directory = Path(tempfile.mkdtemp(prefix="cascade-slurm-"))
    try:
        try:
            added = install_packages()
        except ClusterUnavailable as error:
            pytest.skip(str(error))
        slurm = SlurmCluster(directory)
        try:
            slurm.start()
            yield slurm
        finally:
            slurm.stop()
            remove_packages(added)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        held.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def submit(cluster: SlurmCluster, kind: str, run_dir: Path, *options: str, cascade_args=()) -> str:
    """`cascade slurm submit` a CPU job on both nodes; returns the job id."""
    env = dict(
        cluster.env,
        # The job runs `cascade` from PATH: this interpreter's environment.
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        # The emulated node names do not resolve; a port of its own per job.
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
    )
    command = [sys.executable, "-m", "cascade", "slurm", "submit", kind, *options,
               "--run-dir", str(run_dir), "--nodes", "2", "--gpus-per-node", "0",
               "--cpus-per-task", "1", "--time", str(JOB_TIME_MIN), "--", *cascade_args]
    result = subprocess.run(command, env=env, text=True, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def job_field(cluster: SlurmCluster, job_id: str, name: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=cluster.env,
                         text=True, capture_output=True).stdout
    match = re.search(rf"\b{name}=(\S+)", out)
    return match.group(1) if match else ""


def log_of(run_dir: Path, job_id: str) -> Path:
    (log,) = (run_dir / "logs").glob(f"*-{job_id}.out")
    return log


def wait_for(predicate, deadline_s: float, what: str, run_dir: Path | None = None):
    """Poll `predicate` every second until it returns something true; fail with the logs' tail."""
    end = time.monotonic() + deadline_s
    while not (result := predicate()):
        if time.monotonic() > end:
            logs = sorted((run_dir / "logs").glob("*.out")) if run_dir else []
            tails = "\n".join(f"--- {log}\n{log.read_text()[-3000:]}" for log in logs)
            pytest.fail(f"timed out after {deadline_s:.0f} s waiting for {what}\n{tails}")
        time.sleep(1)
    return result


def wait_done(cluster: SlurmCluster, job_id: str, run_dir: Path) -> str:
    """Wait until the job has ended for good (not just for a requeue); returns its final state."""
    return wait_for(
        lambda: (state := job_field(cluster, job_id, "JobState")) in FINAL_STATES and state,
        JOB_DEADLINE_S, f"job {job_id} to end", run_dir,
    )


# ---- data and configs ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_config(tmp_path_factory) -> Path:
    """The tiny demo base, made cheaper still: a few synthetic shards, small batches, a 2-image
    sample grid at the end of training, a layout pre-training of 2 steps of 4 (the demo's 3,000 of
    64 would be most of every job: both ranks compute it, rank 0's is broadcast). Steps,
    validation and logging are set per job."""
    root = tmp_path_factory.mktemp("demo")
    config = yaml.safe_load(DEMO_BASE.read_text())
    data = config["data"]["init_args"]
    resolution = config["model"]["init_args"]["image_size"]  # the data's resolution too
    for split, source_split, count in (("train", "train", 64), ("val", "heldout", 16)):
        subprocess.run(
            [sys.executable, "-m", "cascade", "data", "write-shards", "--source", "synthetic",
             "--split", source_split, "--count", str(count), "--resolution", str(resolution),
             "--out", str(root / split), "--no-progress"],
            check=True, capture_output=True, timeout=300,
        )
        data[f"{split}_shards"] = str(root / split)
    data.update(batch_size=8, val_batch_size=8, shuffle_buffer=32)
    config["sample_grid"].update(num_samples=2, steps=2)
    config["model"]["init_args"]["layout_pretraining"].update(steps=2, batch_size=4, images=16)
    path = root / "base.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def fit_args(max_steps: int, *more: str) -> list[str]:
    """`cascade fit` overrides for a short job: one validation (and checkpoint) at the end."""
    return [
        "--trainer.max_steps", str(max_steps),
        "--trainer.val_check_interval", str(max_steps),
        "--trainer.limit_val_batches", "1",
        "--trainer.log_every_n_steps", "1",
        *more,
    ]


def global_step(checkpoint: Path) -> int:
    return torch.load(checkpoint, weights_only=True, map_location="cpu")["global_step"]


def step_lines(text: str) -> list[int]:
    return [int(step) for step in re.findall(r"^step (\d+)\b", text, re.MULTILINE)]


# ---- scenarios -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(cluster, demo_config, tmp_path_factory):
    """Scenario 1's job: the demo base on 2 nodes x 1 task. Sampling reuses its checkpoint."""
    run_dir = tmp_path_factory.mktemp("train")
    started = time.monotonic()
    job = submit(cluster, "train", run_dir, "-c", str(demo_config), cascade_args=fit_args(6))
    state = wait_done(cluster, job, run_dir)
    return {"job": job, "state": state, "run_dir": run_dir, "log": log_of(run_dir, job).read_text(),
            "seconds": time.monotonic() - started}


def test_two_node_training_completes_with_one_checkpoint(trained_run):
    log, run_dir = trained_run["log"], trained_run["run_dir"]
    print(f"\nscenario 1 (2-node fit, 6 steps): {trained_run['seconds']:.0f} s")
    assert trained_run["state"] == "COMPLETED", log[-3000:]
    # Both ranks trained, one per node, from step 0.
    for rank in (0, 1):
        assert re.search(rf"^rank {rank}/2 node_rank {rank} local_rank 0 .*training from step 0$", log,
                         re.MULTILINE), log[-3000:]
    assert step_lines(log) == list(range(1, 7))
    assert "training ended at step 6" in log
    assert re.search(r"^layout pre-training: 2 steps of 4, last layout loss [0-9.]+, ", log, re.MULTILINE), log[-3000:]
    # One checkpoint, written by rank 0 into the shared run directory: not one per node, and
    # no hpc_ckpt since nothing preempted the job. (The demo config keeps last.ckpt and the best.)
    checkpoints = sorted(path.relative_to(run_dir).as_posix() for path in run_dir.rglob("*.ckpt"))
    assert "checkpoints/last.ckpt" in checkpoints
    assert all(name.startswith("checkpoints/") for name in checkpoints), checkpoints
    assert len(checkpoints) <= 2, checkpoints
    assert global_step(run_dir / "checkpoints" / "last.ckpt") == 6


def test_preempted_job_saves_requeues_and_resumes(cluster, demo_config, tmp_path):
    max_steps = 40
    started = time.monotonic()
    # A DataLoader worker per rank: workers get the signal too and must not write checkpoints.
    job = submit(cluster, "train", tmp_path, "-c", str(demo_config),
                 cascade_args=fit_args(max_steps, "--data.init_args.num_workers", "1"))
    log = wait_for(lambda: list((tmp_path / "logs").glob(f"*-{job}.out")), 60, "the job's log")[0]
    wait_for(lambda: len(step_lines(log.read_text())) >= 3, JOB_DEADLINE_S, "3 training steps", tmp_path)
    # To the job's steps (the training tasks), as Slurm does GRACE seconds before the time limit.
    subprocess.run(["scancel", "--signal=USR1", job], env=cluster.env, check=True)
    signalled = time.monotonic()
    state = wait_done(cluster, job, tmp_path)
    text = log.read_text()
    print(f"\nscenario 2 (preempt + requeue + resume, {max_steps} steps): {time.monotonic() - started:.0f} s,"
          f" {time.monotonic() - signalled:.0f} s from the signal to the end")
    assert state == "COMPLETED", text[-3000:]
    assert job_field(cluster, job, "Restarts") == "1"
    assert (tmp_path / "hpc_ckpt_1.ckpt").is_file()

    # The template's start line of each run: "job J start R: ..., resume from ...".
    first, second = re.split(rf"(?=^job {job} start 1:)", text, flags=re.MULTILINE)
    saved_step = int(re.search(rf"saved {tmp_path}/hpc_ckpt_1\.ckpt at step (\d+); job {job} requeued", first)[1])
    assert global_step(tmp_path / "hpc_ckpt_1.ckpt") == saved_step
    # The requeued job resumes from the newest checkpoint: the hpc one, or one the first run
    # wrote after it while Slurm was ending it.
    resumed_from = Path(re.search(r"resume from (\S+)$", second.splitlines()[0])[1])
    resumed = {int(step) for step in re.findall(r"^rank \d/2 .*training from step (\d+)$", second, re.MULTILINE)}
    assert len(resumed) == 1, "both ranks resume from the same step"
    resume_step = resumed.pop()
    print(f"hpc checkpoint at step {saved_step}, resumed at step {resume_step} from {resumed_from.name}")
    assert global_step(resumed_from) == resume_step >= saved_step
    before, after = step_lines(first), step_lines(second)
    # The first run counted up from 1, at least to the saved step (steps it made after the
    # resumed checkpoint are redone: nothing is skipped).
    assert before == list(range(1, len(before) + 1))
    assert 0 < saved_step <= resume_step <= before[-1]
    assert after == list(range(resume_step + 1, max_steps + 1))
    assert f"training ended at step {max_steps}" in second


def test_sampling_over_two_tasks_writes_every_image_once(cluster, trained_run, tmp_path):
    assert trained_run["state"] == "COMPLETED", "sampling uses the checkpoint of the training scenario"
    prompts = ["a red circle", "a blue square", "a green triangle"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    out = tmp_path / "samples"
    started = time.monotonic()
    job = submit(cluster, "sample", out, cascade_args=[
        "--stages", str(trained_run["run_dir"] / "checkpoints" / "last.ckpt"),
        "--prompts", str(tmp_path / "prompts.txt"), "--n-per-condition", "2",
        "--steps", "2", "--batch-size", "2",
    ])
    state = wait_done(cluster, job, out)
    text = log_of(out, job).read_text()
    print(f"\nscenario 3 (sampling, 6 images over 2 tasks): {time.monotonic() - started:.0f} s")
    assert state == "COMPLETED", text[-3000:]
    expected = {item.name for item in work_items([(prompt, None) for prompt in prompts], 2)}
    assert {path.stem for path in out.glob("*.png")} == expected
    assert {path.stem for path in out.glob("*.json")} == expected
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert sorted(record["file"] for record in records) == sorted(f"{name}.png" for name in expected)
    # Each task made its own half: nothing was generated twice.
    assert sorted(int(count) for count in re.findall(r"wrote\s+(\d+)\s+images", text)) == [3, 3], text[-3000:]


def test_broken_config_fails_fast_with_the_error_in_the_log(cluster, demo_config, tmp_path):
    config = yaml.safe_load(demo_config.read_text())
    config["trainer"]["max_stepz"] = 5
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(config))
    started = time.monotonic()
    job = submit(cluster, "train", tmp_path / "run", "-c", str(broken), cascade_args=fit_args(5))
    state = wait_done(cluster, job, tmp_path / "run")
    seconds = time.monotonic() - started
    text = log_of(tmp_path / "run", job).read_text()
    print(f"\nscenario 4 (broken config): {seconds:.0f} s to FAILED")
    assert state == "FAILED"
    assert job_field(cluster, job, "Restarts") == "0", "a failed job is not requeued"
    assert re.search(r"cascade fit: config error: .*max_stepz", text), text[-3000:]
    assert "training from step" not in text
    assert seconds < 120
