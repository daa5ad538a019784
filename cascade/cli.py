"""The `cascade` command: one entry point that dispatches to each subcommand's module.

Every subcommand is a function `main(argv: list[str]) -> int | None` in its own module,
imported only when that subcommand runs, so `cascade --help` stays fast and a missing
optional dependency of one subcommand cannot break the others.
"""

from __future__ import annotations

import importlib
import sys

# name -> ("module:function", one-line help). Keep sorted by name.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("cascade.bench:main", "benchmarks: train step, sampling, data loader, and imagen-pytorch side by side"),
    "data": ("cascade.data.cli:main", "write webdataset shards, precompute text embeddings, benchmark the loader"),
    "eval": ("cascade.eval.cli:main", "evaluate samples: FID / IS / precision-recall, SR consistency, human-eval sheets, reports"),
    "demo": ("cascade.demo:main", "train a tiny text-to-image cascade on CPU, sample, evaluate, write a report"),
    "export": ("cascade.stages.export:main", "write a stage checkpoint's EMA weights (safetensors) and config (YAML)"),
    "fit": ("cascade.stages.cli:fit_main", "train a stage: LightningCLI, e.g. cascade fit -c configs/demo/base.yaml"),
    "model-info": ("cascade.nn.model_info:main", "print parameter counts of the UNets in stage configs"),
    "sample": ("cascade.sample_cli:main", "generate images for prompts or classes through the cascade (resumable, rank-sharded)"),
    "sample-gaussian": (
        "cascade.diffusion.demo:main",
        "sample a closed-form Gaussian model with every sampler and report the moment errors",
    ),
    "slurm": ("cascade.slurm:main", "fill an sbatch template from a stage config and submit it"),
    "validate": ("cascade.stages.cli:validate_main", "validation loss of a stage checkpoint, in t-buckets"),
}


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = [
        "usage: cascade <command> [options]",
        "",
        "cascaded pixel-space diffusion: base 64x64 -> SR 256 -> SR 1024",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in sorted(SUBCOMMANDS.items())]
    lines += ["", "Run `cascade <command> --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"cascade: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    target, _ = SUBCOMMANDS[name]
    module_name, function_name = target.split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    result = function(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
