"""Training the demo's three stages on a small CPU: two `cascade fit` processes at once.

The stages are independent while they train (each SR stage learns from real low-res images,
not from the base's samples), so the base trains in one process while the two SR stages train
one after the other in a second. On a 2-core machine that is one core per process, the
fastest use of it: one torch thread per process, where two threads in one process lose more
to OpenMP waits than they gain. When a lane is done, its threads go to the lanes still training
(`cascade.stages.ThreadGrant` reads RUN_DIR/threads): the base, alone on the machine once the SR
stages are trained, steps 1.32x faster on two threads than on one beside its data loader (1.45x
alone; docs/benchmarks.md, "Both cores for the base"). Each process writes its output to RUN_DIR/train.log, and
prints `step N/MAX` lines (`cascade.stages.ProgressLines`), which drive one progress bar per
stage on the console.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from ..files.atomic import write_text

STEP_LINE = re.compile(r"^step (\d+)/\d+")
# Seconds between plain progress lines when the console is not a terminal (a log file, CI),
# where the live progress bars are not drawn until the end.
HEARTBEAT_SECONDS = 60.0


@dataclass(frozen=True)
class StageRun:
    """One `cascade fit` of a demo stage: its config, run directory and step count, and the
    training seed (`seed_everything` and the data order) when the run sets one (None: the
    config's)."""

    name: str
    config: Path
    run_dir: Path
    steps: int
    overrides: tuple[str, ...]
    seed: int | None = None

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "last.ckpt"

    @property
    def thread_grant(self) -> Path:
        """The file that tells the training how many torch threads to take (`ThreadGrant`)."""
        return self.run_dir / "threads"

    @property
    def done_marker(self) -> Path:
        return self.run_dir / "finished.json"

    def finished(self) -> bool:
        """Trained for `steps` already (a rerun of the demo skips it)."""
        if not (self.done_marker.exists() and self.last_checkpoint.exists()):
            return False
        return json.loads(self.done_marker.read_text()).get("steps") == self.steps

    def command(self) -> list[str]:
        argv = [sys.executable, "-m", "cascade", "fit", "-c", str(self.config), "--run-dir", str(self.run_dir),
                "--trainer.max_steps", str(self.steps), "--trainer.enable_progress_bar", "false",
                "--trainer.callbacks+=cascade.stages.ProgressLines",
                "--trainer.callbacks+=cascade.stages.ThreadGrant", "--trainer.callbacks.path", str(self.thread_grant)]
        if self.seed is not None:
            argv += ["--data.init_args.seed", str(self.seed), "--seed_everything", str(self.seed)]
        argv += self.overrides
        if self.last_checkpoint.exists():  # an interrupted demo resumes where the stage stopped
            argv += ["--ckpt_path", str(self.last_checkpoint)]
        return argv


class StageTrainingError(RuntimeError):
    """A `cascade fit` of the demo failed; the message names the stage and its log."""


def train_concurrently(lanes: list[list[StageRun]], threads: int, console: Console,
                       heartbeat_seconds: float = HEARTBEAT_SECONDS) -> dict[str, float]:
    """Run each lane's stages one after the other, the lanes at the same time; returns the
    seconds each stage trained in this call took (a stage trained before is skipped and left
    out). Raises StageTrainingError naming the
    first stage that failed and its log, after the other lanes have finished their stage.

    The lanes share `threads` torch threads: each stage starts with an equal share of them among the
    lanes still training (at least one), and when a lane is done the stages still training are
    granted the new share (`StageRun.thread_grant`). A stage's steps do not depend on its threads; its
    floating-point sums do, in their last bits (two threads add in another order), so a training
    granted threads at another step ends in different weights, as on another machine.

    Each stage's log file is named when it starts; on a console that is not a terminal a plain
    "base: step 500/2000 (61 s)" line comes every `heartbeat_seconds`."""
    seconds: dict[str, float] = {}
    failures: list[str] = []
    columns = (TextColumn("{task.description:>12}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        tasks = {run.name: progress.add_task(f"train {run.name}", total=run.steps) for lane in lanes for run in lane}
        training: dict[int, StageRun | None] = dict.fromkeys(range(len(lanes)))  # lane -> its stage in training
        lock = threading.Lock()

        def share() -> int:
            return max(1, threads // max(1, len(training)))

        def run_lane(index: int, lane: list[StageRun]) -> None:
            try:
                train_lane(index, lane)
            finally:
                with lock:
                    del training[index]
                    for run in training.values():
                        if run is not None:
                            write_text(run.thread_grant, str(share()))

        def train_lane(index: int, lane: list[StageRun]) -> None:
            for run in lane:
                if failures:
                    return
                if run.finished():
                    progress.console.print(f"{run.name}: already trained for {run.steps} steps, skipping")
                    progress.update(tasks[run.name], completed=run.steps)
                    continue
                began = time.perf_counter()
                progress.console.print(f"training {run.name} ({run.steps} steps): log in {run.run_dir / 'train.log'}",
                                       markup=False, soft_wrap=True)
                last_line = [began]

                def on_step(step: int, run: StageRun = run, began: float = began, last_line=last_line) -> None:
                    progress.update(tasks[run.name], completed=step)
                    now = time.perf_counter()
                    if not progress.console.is_terminal and now - last_line[0] >= heartbeat_seconds:
                        last_line[0] = now
                        progress.console.print(f"{run.name}: step {step}/{run.steps} ({now - began:.0f} s)", markup=False,
                                               soft_wrap=True)

                with lock:
                    training[index] = run
                    granted = share()
                    run.run_dir.mkdir(parents=True, exist_ok=True)
                    write_text(run.thread_grant, str(granted))
                code = _fit(run, granted, on_step)
                with lock:
                    training[index] = None
                seconds[run.name] = time.perf_counter() - began
                if code != 0 or not run.last_checkpoint.exists():
                    failures.append(f"training the {run.name} stage failed (exit code {code}); "
                                    f"its output is in {run.run_dir / 'train.log'}")
                    return
                run.done_marker.write_text(json.dumps({"steps": run.steps, "seconds": seconds[run.name]}))
                progress.update(tasks[run.name], completed=run.steps)

        workers = [threading.Thread(target=run_lane, args=(i, lane), name=f"lane-{i}") for i, lane in enumerate(lanes)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    if failures:
        raise StageTrainingError("; ".join(failures))
    return seconds


def _fit(run: StageRun, threads: int, on_step) -> int:
    """One `cascade fit` subprocess; its output goes to RUN_DIR/train.log, step lines to on_step."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(run.run_dir / "train.log", "a", buffering=1) as log, subprocess.Popen(
        run.command(), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as process:
        for line in process.stdout:
            log.write(line)
            match = STEP_LINE.match(line)
            if match:
                on_step(int(match.group(1)))
        return process.wait()
