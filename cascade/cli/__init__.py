"""The `cascade` command: one table of every subcommand, one way to dispatch.

Each command is a function `name(argv: list[str]) -> int` in a module of this package that
parses its own arguments (argparse; `fit` and `validate` use LightningCLI) and then calls the
library. A group (`data`, `ema`, `eval`, `eval sheets`, `bench`, `slurm`) is a nested table dispatched
the same way. Modules are imported only when their command runs, so `cascade --help` stays fast
and a missing optional dependency of one command cannot break the others.

Flags are spelled with dashes (`--run-dir`); the dotted keys of `fit` and `validate` are the
YAML config's own keys (`--trainer.max_steps`).
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """A leaf: the "module:function" that runs it and its one-line help."""

    target: str
    help: str


@dataclass(frozen=True)
class Group:
    """A command with subcommands."""

    help: str
    commands: dict[str, Command | Group]


COMMANDS = Group(
    "cascaded pixel-space diffusion: base 64x64 -> SR 256 -> SR 1024",
    {
        "bench": Group(
            "benchmarks: train step, sampling, data loader, and imagen-pytorch side by side",
            {
                "train": Command("cascade.cli.bench:train", "train step of stage configs"),
                "sample-step": Command("cascade.cli.bench:sample_step", "one CFG denoising step of stage configs"),
                "cascade": Command("cascade.cli.bench:cascade", "seconds per image of base -> SR -> SR"),
                "loader": Command("cascade.cli.bench:loader", "decoded training samples/s per loader worker"),
                "peer": Command("cascade.cli.bench:peer", "our train and CFG steps against imagen-pytorch's"),
                "memory": Command("cascade.cli.bench:memory", "ESTIMATE peak memory with fake tensors"),
                "all": Command("cascade.cli.bench:run_all", "every benchmark with one set of options"),
                "gpu": Command("cascade.cli.bench:gpu", "the one prepared GPU run within a wall budget (--dry-run: CPU)"),
            },
        ),
        "data": Group(
            "write webdataset shards, precompute text embeddings",
            {
                "write-shards": Command("cascade.cli.data:write_shards", "write WebDataset shards (atomic, resumable)"),
                "precompute-text": Command(
                    "cascade.cli.data:precompute_text", "add precomputed text embeddings to shards"
                ),
            },
        ),
        "ablation": Command(
            "cascade.cli.ablation:ablation", "the demo base's recipe one change at a time, 3 training seeds, error bars"
        ),
        "sr-check": Command(
            "cascade.cli.sr_check:sr_check", "a super-resolution stage against upsampling its own input (noise levels, settings)"
        ),
        "demo": Command(
            "cascade.cli.demo:demo", "train a tiny text-to-image cascade on CPU, sample, evaluate, write a report"
        ),
        "ema": Group(
            "post-hoc EMA (EDM2): the weights of any EMA length from a run's snapshots",
            {
                "reconstruct": Command(
                    "cascade.cli.ema:reconstruct", "export the EMA of a chosen sigma_rel from posthoc_ema snapshots"
                ),
            },
        ),
        "eval": Group(
            "evaluate samples: FID / IS / precision-recall, SR consistency, human-eval sheets, reports",
            {
                "benchmark": Command(
                    "cascade.cli.eval:benchmark", "feature-extraction images/s and FID-from-cached-statistics time"
                ),
                "metrics": Command(
                    "cascade.cli.eval:metrics", "FID / IS / precision-recall / KID (/ CLIP score) of samples or a sweep"
                ),
                "report": Command(
                    "cascade.cli.eval:report", "HTML + Markdown report: metrics, sweep plots, sample grids, human eval"
                ),
                "sheets": Group(
                    "blinded DrawBench-style human evaluation of two systems",
                    {
                        "make": Command(
                            "cascade.cli.sheets:make", "write a key plus an HTML sheet and a CSV template per rater"
                        ),
                        "ingest": Command("cascade.cli.sheets:ingest", "validate filled sheets, un-blind, summarise"),
                    },
                ),
                "sr": Command(
                    "cascade.cli.eval:super_resolution",
                    "per-stage SR evaluation: FID vs real high-res, low-res consistency PSNR",
                ),
                "stats": Command("cascade.cli.eval:stats", "compute and cache reference statistics of a real image set"),
            },
        ),
        "export": Command(
            "cascade.cli.stage:export", "write a stage checkpoint's EMA weights (safetensors) and config (YAML)"
        ),
        "fit": Command("cascade.cli.stage:fit", "train a stage: LightningCLI, e.g. cascade fit -c configs/demo/base.yaml"),
        "init": Command("cascade.cli.init:init", "copy the shipped configs and sbatch templates into a folder to edit"),
        "model-info": Command("cascade.cli.model_info:model_info", "parameter counts of the UNets in stage configs"),
        "sample": Command(
            "cascade.cli.sample:sample",
            "generate images for prompts or classes through the cascade (resumable, rank-sharded)",
        ),
        "sample-gaussian": Command(
            "cascade.cli.gaussian:sample_gaussian",
            "sample a closed-form Gaussian model with every sampler and report the moment errors",
        ),
        "slurm": Group(
            "fill an sbatch template and submit it",
            {"submit": Command("cascade.cli.slurm:submit", "fill a template from slurm/ and submit it; prints the job id")},
        ),
        "validate": Command("cascade.cli.stage:validate", "validation loss of a stage checkpoint, in t-buckets"),
    },
)


def usage(path: list[str], group: Group) -> str:
    """The help text of a group: its commands and their one-line help."""
    prog = " ".join(["cascade", *path])
    width = max(len(name) for name in group.commands)
    lines = [f"usage: {prog} <command> [options]", "", group.help, "", "commands:"]
    lines += [f"  {name:<{width}}  {entry.help}" for name, entry in sorted(group.commands.items())]
    lines += ["", f"Run `{prog} <command> --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Walk the table down `argv` to a command and run it with the rest of `argv`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    entry: Command | Group = COMMANDS
    path: list[str] = []
    while isinstance(entry, Group):
        if not argv or argv[0] in ("-h", "--help", "help"):
            print(usage(path, entry))
            return 0
        name = argv.pop(0)
        if name not in entry.commands:
            prog = " ".join(["cascade", *path])
            print(f"{prog}: unknown command {name!r}\n\n{usage(path, entry)}", file=sys.stderr)
            return 2
        entry = entry.commands[name]
        path.append(name)
    module_name, function_name = entry.target.split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    return int(function(argv) or 0)


if __name__ == "__main__":
    sys.exit(main())
