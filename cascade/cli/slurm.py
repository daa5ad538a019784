"""`cascade slurm submit`: fill one of the sbatch templates in slurm/ and submit it.

    cascade slurm submit train -c configs/base64.yaml --run-dir /shared/runs/base64 --nodes 4
    cascade slurm submit sample --run-dir /shared/samples/v1 --nodes 2 -- <cascade sample arguments>
    cascade slurm submit eval --run-dir /shared/eval/v1 -- <cascade eval arguments>

Filling means setting the values of the template's own `#SBATCH` lines (nodes, tasks and GPUs
per node, CPUs, time, signal grace, job name, output file under RUN_DIR/logs) and adding any
`--sbatch-option` lines) and the default of `CASCADE_BIN` (this installation's bin directory,
so the nodes run the same `cascade`); the script body stays the shipped one. For `train`, nodes
and GPUs per node default to the config's `trainer.num_nodes` and `trainer.devices`. The filled
script is kept as RUN_DIR/<kind>.sbatch (`--dry-run` writes and prints it, and submits
nothing), submitted with `sbatch --parsable`, and the job id is the only thing printed on
stdout, so `$(cascade slurm submit ...)` chains jobs with --dependency.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from ..files.atomic import write_text
from ..resources import shipped

TEMPLATE_DIR = shipped("slurm")
KINDS = ("train", "sample", "eval")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cascade slurm submit",
        description="Fill an sbatch template and submit it; prints the job id. Arguments after `--` go to "
        "the cascade command the job runs (cascade fit / sample / eval).",
    )
    parser.add_argument("kind", choices=KINDS, help="which template: slurm/<kind>.sbatch")
    parser.add_argument("-c", "--config", type=Path, help="train: the stage's LightningCLI config")
    parser.add_argument("--run-dir", type=Path, required=True,
                        help="shared directory for checkpoints / outputs, the filled script and logs/")
    parser.add_argument("--nodes", type=int, help="nodes (train: default trainer.num_nodes)")
    parser.add_argument("--gpus-per-node", type=int,
                        help="GPUs per node, 0 for a CPU job (train: default trainer.devices)")
    parser.add_argument("--tasks-per-node", type=int,
                        help="processes per node (default: one per GPU, 1 on CPU)")
    parser.add_argument("--cpus-per-task", type=int)
    parser.add_argument("--time", help="wall-clock limit, e.g. 24:00:00")
    parser.add_argument("--grace", type=int,
                        help="seconds before the time limit at which SIGUSR1 asks the job to checkpoint")
    parser.add_argument("--job-name")
    parser.add_argument("--sbatch-option", action="append", default=[], metavar="OPTION",
                        help="another #SBATCH line, e.g. --sbatch-option=--partition=gpu or "
                        "--sbatch-option=--dependency=afterok:1234 (repeatable)")
    parser.add_argument("--template", type=Path,
                        help="template file (default: slurm/<kind>.sbatch of this checkout)")
    parser.add_argument("--dry-run", action="store_true",
                        help="write and print the filled script and the sbatch command; submit nothing")
    return parser


def _trainer_defaults(config: Path) -> dict[str, int]:
    """trainer.num_nodes / trainer.devices of a config, where they are plain integers."""
    data = yaml.safe_load(config.read_text()) or {}
    trainer = data.get("trainer") or {}
    return {key: trainer[key] for key in ("num_nodes", "devices") if isinstance(trainer.get(key), int)}


def fill(template: str, values: dict[str, str], extra_options: list[str]) -> str:
    """Set `#SBATCH --key=value` lines of `template`; add `extra_options` after the last one."""
    lines = template.splitlines()
    missing = dict(values)
    last = None
    for index, line in enumerate(lines):
        match = re.match(r"#SBATCH --([\w-]+)(=.*)?$", line)
        if not match:
            continue
        last = index
        key = match.group(1)
        if key in missing:
            lines[index] = f"#SBATCH --{key}={missing.pop(key)}"
    if last is None:
        raise ValueError("the template has no #SBATCH lines")
    if missing:
        raise ValueError(f"the template has no #SBATCH line for {', '.join(sorted(missing))}")
    lines[last + 1:last + 1] = [f"#SBATCH {option}" for option in extra_options]
    return "\n".join(lines) + "\n"


def cascade_bin() -> Path | None:
    """The bin directory holding the `cascade` of this installation (the running interpreter's,
    else the one on PATH), or None when there is none."""
    here = Path(sys.executable).parent
    if (here / "cascade").is_file():
        return here
    found = shutil.which("cascade")
    return Path(found).parent if found else None


def with_cascade_bin(script: str, bin_dir: Path | None) -> str:
    """`script` with the default of its `CASCADE_BIN=${CASCADE_BIN:-}` line set to `bin_dir`."""
    if bin_dir is None:
        return script
    line = "CASCADE_BIN=${CASCADE_BIN:-}"
    if line not in script:
        raise ValueError(f"the template has no `{line}` line")
    return script.replace(line, f"CASCADE_BIN=${{CASCADE_BIN:-{shlex.quote(str(bin_dir))}}}", 1)


def _signal_with_grace(template: str, grace: int) -> str:
    """The template's --signal value with its seconds replaced: B:USR1@180 -> B:USR1@<grace>."""
    match = re.search(r"^#SBATCH --signal=(\S+)@\d+$", template, re.MULTILINE)
    if not match:
        raise ValueError("the template has no '#SBATCH --signal=SIG@SECONDS' line")
    return f"{match.group(1)}@{grace}"


def _submit(args: argparse.Namespace, passthrough: list[str]) -> int:
    template_path = args.template or TEMPLATE_DIR / f"{args.kind}.sbatch"
    if not template_path.is_file():
        print(f"cascade slurm: no template at {template_path}; pass --template", file=sys.stderr)
        return 2
    template = template_path.read_text()
    run_dir = args.run_dir.resolve()

    if args.config is not None and args.kind != "train":
        print(f"cascade slurm: -c is for train; pass {args.kind}'s arguments after --", file=sys.stderr)
        return 2
    script_args: list[str] = []
    nodes, gpus = args.nodes, args.gpus_per_node
    if args.kind == "train":
        if args.config is None:
            print("cascade slurm: submit train needs -c CONFIG", file=sys.stderr)
            return 2
        if not args.config.is_file():
            print(f"cascade slurm: config {args.config} not found", file=sys.stderr)
            return 2
        defaults = _trainer_defaults(args.config)
        nodes = nodes if nodes is not None else defaults.get("num_nodes")
        gpus = gpus if gpus is not None else defaults.get("devices")
        script_args = [str(args.config.resolve()), str(run_dir)]
    elif args.kind == "sample":
        script_args = [str(run_dir)]
    script_args += passthrough

    values: dict[str, str] = {"output": f"{run_dir}/logs/%x-%j.out"}
    if nodes is not None:
        values["nodes"] = str(nodes)
    if gpus is not None:
        values["gpus-per-node"] = str(gpus)
    tasks = args.tasks_per_node
    if tasks is None and gpus is not None:
        tasks = gpus or 1  # one process per GPU; a CPU job runs one per node unless told otherwise
    if tasks is not None:
        values["ntasks-per-node"] = str(tasks)
    for key, value in (("cpus-per-task", args.cpus_per_task), ("time", args.time), ("job-name", args.job_name)):
        if value is not None:
            values[key] = str(value)
    try:
        if args.grace is not None:
            values["signal"] = _signal_with_grace(template, args.grace)
        script = with_cascade_bin(fill(template, values, args.sbatch_option), cascade_bin())
    except ValueError as error:
        print(f"cascade slurm: {template_path}: {error}", file=sys.stderr)
        return 2

    script_path = run_dir / f"{args.kind}.sbatch"
    command = ["sbatch", "--parsable", str(script_path), *script_args]
    # Slurm does not create the output file's directory: a job whose log cannot be opened fails
    # without a word.
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    write_text(script_path, script)
    if args.dry_run:
        print(script, end="")
        print(f"# written to {script_path}; submit with:\n# {shlex.join(command)}")
        return 0
    if shutil.which("sbatch") is None:
        print(f"cascade slurm: sbatch not found; run this on a Slurm login node ({script_path} is written)",
              file=sys.stderr)
        return 2
    result = subprocess.run(command, text=True, capture_output=True)
    if result.returncode != 0:
        print(f"cascade slurm: sbatch failed: {result.stderr.strip()}", file=sys.stderr)
        return result.returncode
    job_id = result.stdout.strip().split(";")[0]
    print(job_id)
    print(f"submitted {args.kind} job {job_id}; log: {run_dir}/logs/", file=sys.stderr)
    return 0


def submit(argv: list[str]) -> int:
    """`cascade slurm submit train|sample|eval [options] [-- command arguments]`."""
    argv = list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = _parser().parse_args(argv[:split])
    return _submit(args, argv[split + 1:])
