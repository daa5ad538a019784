"""`cascade bench <command>`: train step, sampling, data loader, and imagen-pytorch side by side.

    cascade bench train configs/bench/base64_text_small.yaml --batch 8
    cascade bench sample-step configs/sr1024.yaml --batch 1 --resolution 1024 --guidance 3
    cascade bench cascade configs/demo/base.yaml configs/demo/sr1.yaml configs/demo/sr2.yaml --steps 25 20 15
    cascade bench loader --workdir /tmp/cascade-bench
    cascade bench peer configs/bench/base64_text_small.yaml --batch 8
    cascade bench all --base configs/demo/base.yaml --sr configs/demo/sr1.yaml configs/demo/sr2.yaml
    cascade bench memory configs/sr1024.yaml --mode sample --batch 8 --resolution 1024
    cascade bench memory configs/sr1024.yaml --mode train --resolution 256 --fit-gib 80
    cascade bench gpu --out gpu-bench/                    # the one prepared GPU run (cascade.bench.gpu)
    cascade bench gpu --dry-run --out /tmp/gpu-dry-run    # the same parts on CPU, tiny configs, seconds

Every command times with one harness (warm-up calls, then the median of --iters calls,
CUDA-synchronised), prints a table and appends one JSON line per result to --jsonl.
`memory` measures nothing: it ESTIMATES peak tensor memory with fake tensors (see
cascade.bench.memory), for sizes the machine at hand cannot run.
"""

from __future__ import annotations

import argparse

import torch
from rich.console import Console

from ..bench.records import append_jsonl, environment, print_table
from ..bench.stage_inputs import SpeedSettings
from ..diffusion import SAMPLERS

DEFAULT_JSONL = "bench-results.jsonl"

TRAIN_COLUMNS = ["config", "batch", "resolution", "precision", "channels_last", "compile", "ms_per_step",
                 "images_per_s", "gflops_per_step", "achieved_tflops", "mfu", "peak_memory_mib", "attention_kernels"]
STEP_COLUMNS = ["config", "batch", "resolution", "guidance", "precision", "ms_per_step", "unet_calls_per_step",
                "unet_rows_per_call", "gflops_per_step", "peak_memory_mib"]
CASCADE_COLUMNS = ["sizes", "sampler", "steps", "guidance", "batch", "precision", "seconds_per_image",
                   "stage_seconds", "peak_memory_mib"]
LOADER_COLUMNS = ["dataset", "stage", "stored_size", "samples", "cpu_seconds", "wall_seconds", "samples_per_s_per_worker"]
MEMORY_COLUMNS = ["config", "mode", "batch", "unet_rows", "resolution", "gradient_checkpointing", "estimated_peak_gib",
                  "by_kind_gib", "budget_gib", "next_batch_gib"]
PEER_COLUMNS = ["benchmark", "batch", "precision", "ours_parameters_m", "peer_parameters_m", "ours_ms", "peer_ms",
                "speedup_vs_peer", "speedup_per_round_median", "ours_gflops", "peer_gflops"]


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    common.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="auto: bf16 autocast on CUDA, fp32 on CPU")
    common.add_argument("--channels-last", default=None, action=argparse.BooleanOptionalAction,
                        help="channels_last memory format (default: on for CUDA, off for CPU)")
    common.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                        help="torch.compile the UNets (optionally a mode: reduce-overhead, max-autotune)")
    common.add_argument("--warmup", type=int, default=2, help="untimed calls before timing (default 2)")
    common.add_argument("--iters", type=int, default=5, help="timed calls; the median is reported (default 5)")
    common.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--jsonl", default=DEFAULT_JSONL, help=f"append results here (default {DEFAULT_JSONL})")
    return common


def _parser(command: str, description: str, common: bool = True) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"cascade bench {command}", description=description,
                                   parents=[_common_options()] if common else [])


def _add_cascade_options(parser: argparse.ArgumentParser, batch: bool = True) -> None:
    if batch:
        parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, nargs="+", help="steps per stage (default 25 20 15, cut to the stages)")
    parser.add_argument("--samplers", nargs="+", default=["dpmpp_2m"], choices=list(SAMPLERS))
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--cascade-iters", type=int, default=1, help="timed cascade runs (default 1)")


def _add_loader_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="/tmp/cascade-bench", help="where the loader's shards are written once")
    parser.add_argument("--datasets", nargs="+", default=["synthetic"], choices=["synthetic", "photos"])
    parser.add_argument("--loader-stages", nargs="+", default=["base64"], choices=["base64", "sr256", "sr1024"])
    parser.add_argument("--samples", type=int, default=256, help="samples per loader measurement (base stage)")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda given but CUDA is not available")
    return device


def _cascade_steps(args: argparse.Namespace, stages: int) -> list[int]:
    steps = args.steps or [25, 20, 15][:stages] + [15] * max(0, stages - 3)
    if len(steps) != stages:
        raise ValueError(f"--steps needs one count per stage ({stages}), got {steps}")
    return steps


class BenchRun:
    """Runs the benchmarks one command asked for, and prints / records their results."""

    def __init__(self, args: argparse.Namespace, console: Console):
        self.args = args
        self.console = console
        self.device = _device(getattr(args, "device", "cpu"))
        self.settings = SpeedSettings.for_device(self.device, getattr(args, "precision", "auto"),
                                                 getattr(args, "channels_last", None), getattr(args, "compile", None))
        self.environment = environment(self.device)
        self.records: list[dict] = []

    def emit(self, title: str, records: list[dict], columns: list[str]) -> None:
        records = [{**record, **self.environment} for record in records]
        print_table(f"{title} on {self.environment['device']}, {self.environment['torch_threads']} threads",
                    records, columns, self.console)
        append_jsonl(records, self.args.jsonl)
        self.records += records

    def train(self, configs: list[str], batch: int, resolution: int | None) -> None:
        from ..bench.train_step import run_train_benchmark

        a = self.args
        records = [run_train_benchmark(c, self.device, self.settings, batch, resolution, a.warmup, a.iters, a.seed)
                   for c in configs]
        self.emit("Train step", records, TRAIN_COLUMNS)

    def sample_step(self, configs: list[str], batch: int, resolution: int | None, guidance: float) -> None:
        from ..bench.sampling import run_step_benchmark

        a = self.args
        records = [run_step_benchmark(c, self.device, self.settings, batch, resolution, guidance, a.warmup, a.iters,
                                      a.seed) for c in configs]
        self.emit("Denoising step with CFG", records, STEP_COLUMNS)

    def cascade(self, configs: list[str], batch: int) -> None:
        from ..bench.sampling import run_cascade_benchmark

        a = self.args
        records = run_cascade_benchmark(configs, self.device, self.settings, batch, a.samplers,
                                        _cascade_steps(a, len(configs)), a.guidance, a.cascade_iters, a.seed)
        self.emit("Cascade sampling", records, CASCADE_COLUMNS)

    def loader(self) -> None:
        from ..bench.loader import run_loader_benchmark

        a = self.args
        self.emit("Data loader", run_loader_benchmark(a.workdir, a.datasets, a.loader_stages, a.samples), LOADER_COLUMNS)

    def memory(self, configs: list[str], mode: str, batch: int, resolution: int | None, fit_gib: float | None) -> None:
        from ..bench.memory import estimate_peak, largest_batch

        if fit_gib is not None:
            records = [largest_batch(c, mode, resolution, fit_gib) for c in configs]
        else:
            records = [estimate_peak(c, mode, batch, resolution) for c in configs]
        self.emit("ESTIMATED peak tensor memory (fake tensors, eager, bf16 autocast)", records, MEMORY_COLUMNS)

    def peer(self, config: str, batch: int, guidance: float, memory_efficient: bool = False) -> bool:
        """Run the peer comparison; False (with a message) when imagen-pytorch is missing."""
        from ..bench.peer import PeerUnavailable, run_peer_benchmark

        a = self.args
        try:
            records = run_peer_benchmark(config, self.device, self.settings, batch, guidance, a.warmup, a.iters, a.seed,
                                         memory_efficient)
        except PeerUnavailable as error:
            self.console.print(f"peer comparison skipped: {error}", style="yellow", markup=False)
            return False
        self.emit("Ours vs imagen-pytorch (interleaved, same process)", records, PEER_COLUMNS)
        if not records[0]["parameters_matched"]:
            self.console.print("[yellow]parameter counts differ by more than 10%: the ratios compare unequal models[/yellow]")
        for record in records:
            kind = "train step" if record["benchmark"] == "peer_train_step" else "CFG sampling step"
            self.console.print(
                f"{kind}: ours {record['ours_ms']:.1f} ms, imagen-pytorch {record['peer_ms']:.1f} ms "
                f"-> ours/peer speed ratio {record['speedup_vs_peer']:.2f}x"
            )
        return True


def _run(args: argparse.Namespace, benchmark) -> int:
    """Set threads, run `benchmark(BenchRun)`; input errors print one line and return 2."""
    console = Console(width=200) if not Console().is_terminal else Console()
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        run = BenchRun(args, console)
        if benchmark(run) is False:
            return 1
    except (ValueError, FileNotFoundError) as error:
        console.print(f"cascade bench: {error}", style="red", markup=False)
        return 2
    console.print(f"{len(run.records)} result(s) appended to {args.jsonl}")
    return 0


def train(argv: list[str]) -> int:
    """`cascade bench train CONFIG... [--batch N] [--resolution N]`."""
    parser = _parser("train", "Train step of stage configs.")
    parser.add_argument("configs", nargs="+", help="stage config YAML files")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--resolution", type=int, help="training size (SR crops); default the stage's image_size")
    args = parser.parse_args(argv)
    return _run(args, lambda run: run.train(args.configs, args.batch, args.resolution))


def sample_step(argv: list[str]) -> int:
    """`cascade bench sample-step CONFIG... [--batch N] [--resolution N] [--guidance W]`."""
    parser = _parser("sample-step", "One CFG denoising step of stage configs.")
    parser.add_argument("configs", nargs="+", help="stage config YAML files")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--resolution", type=int, help="sampling size; default the stage's image_size")
    parser.add_argument("--guidance", type=float, default=3.0)
    args = parser.parse_args(argv)
    return _run(args, lambda run: run.sample_step(args.configs, args.batch, args.resolution, args.guidance))


def cascade(argv: list[str]) -> int:
    """`cascade bench cascade BASE SR... [--steps N...] [--samplers S...]`."""
    parser = _parser("cascade", "Seconds per image of base -> SR -> SR.")
    parser.add_argument("configs", nargs="+", help="base config, then the SR configs in order")
    _add_cascade_options(parser)
    args = parser.parse_args(argv)
    return _run(args, lambda run: run.cascade(args.configs, args.batch))


def loader(argv: list[str]) -> int:
    """`cascade bench loader [--workdir DIR] [--datasets ...] [--loader-stages ...]`."""
    parser = _parser("loader", "Decoded training samples/s per loader worker (cascade.data.bench).")
    _add_loader_options(parser)
    args = parser.parse_args(argv)
    return _run(args, lambda run: run.loader())


def peer(argv: list[str]) -> int:
    """`cascade bench peer CONFIG [--batch N] [--guidance W] [--peer-memory-efficient]`: ours
    against imagen-pytorch."""
    parser = _parser("peer", "Our train / CFG step against imagen-pytorch's at matched size.")
    parser.add_argument("config", help="a text-conditional base stage config")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--peer-memory-efficient", action="store_true",
                        help="build imagen-pytorch's Unet with memory_efficient=True (its Efficient U-Net block "
                             "order, the peer of unet.block_order: efficient)")
    args = parser.parse_args(argv)
    return _run(args, lambda run: run.peer(args.config, args.batch, args.guidance, args.peer_memory_efficient))


def memory(argv: list[str]) -> int:
    """`cascade bench memory CONFIG... --mode train|sample [--batch N | --fit-gib G]`."""
    parser = _parser("memory", "ESTIMATE peak tensor memory (fake tensors, bf16 autocast).", common=False)
    parser.add_argument("configs", nargs="+", help="stage config YAML files")
    parser.add_argument("--mode", choices=["train", "sample"], default="train")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--resolution", type=int, help="image / crop size; default the stage's image_size")
    parser.add_argument("--fit-gib", type=float, help="instead: the largest batch whose estimate fits this many GiB")
    parser.add_argument("--jsonl", default=DEFAULT_JSONL, help=f"append results here (default {DEFAULT_JSONL})")
    args = parser.parse_args(argv)
    return _run(args, lambda run: run.memory(args.configs, args.mode, args.batch, args.resolution, args.fit_gib))


def run_all(argv: list[str]) -> int:
    """`cascade bench all --base CONFIG [--sr CONFIG...]`: every benchmark with one set of options."""
    parser = _parser("all", "Every benchmark on a base and its SR configs.")
    parser.add_argument("--base", required=True, help="base stage config")
    parser.add_argument("--sr", nargs="*", default=[], help="SR stage configs, in cascade order")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--skip-loader", action="store_true", help="leave out the data-loader benchmark")
    _add_cascade_options(parser, batch=False)
    _add_loader_options(parser)
    args = parser.parse_args(argv)

    def every(run: BenchRun) -> None:
        configs = [args.base, *args.sr]
        run.train(configs, args.batch, None)
        run.sample_step(configs, args.batch, None, args.guidance)
        run.cascade(configs, args.batch)
        run.peer(args.base, args.batch, args.guidance)
        if not args.skip_loader:
            run.loader()

    return _run(args, every)


def gpu(argv: list[str]) -> int:
    """`cascade bench gpu [--out DIR] [--budget-s S] [--dry-run | --device cpu --tiny]`."""
    parser = argparse.ArgumentParser(
        prog="cascade bench gpu",
        description="Every GPU figure in one run within a wall budget: bf16 train steps (eager and compiled, MFU, "
                    "attention kernels), largest batches, peers, the cascade, the loader (cascade.bench.gpu).")
    parser.add_argument("--out", default="gpu-bench", help="folder for gpu-bench.jsonl and gpu-bench.md")
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget of the measurements (s)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="tiny configs derived from the same stage YAMLs")
    parser.add_argument("--dry-run", action="store_true", help="= --device cpu --tiny: every part in seconds")
    parser.add_argument("--configs-dir", help="folder with base64_text.yaml, sr256.yaml, sr1024.yaml (default: shipped)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    console = Console(width=200) if not Console().is_terminal else Console()
    if args.threads:
        torch.set_num_threads(args.threads)
    from ..bench.gpu import JSONL_NAME, MARKDOWN_NAME, run_gpu_bench

    try:
        device = torch.device("cpu") if args.dry_run else _device(args.device)
        if device.type == "cpu" and not (args.tiny or args.dry_run):
            raise ValueError("--device cpu runs only the tiny configs: add --tiny (or use --dry-run)")
        if args.budget_s <= 0:
            raise ValueError(f"--budget-s must be > 0, got {args.budget_s}")
        records = run_gpu_bench(args.out, args.budget_s, device, tiny=args.tiny or args.dry_run,
                                configs_dir=args.configs_dir, echo=lambda line: console.print(line, markup=False))
    except (ValueError, FileNotFoundError) as error:
        console.print(f"cascade bench gpu: {error}", style="red", markup=False)
        return 2
    console.print(f"{len(records)} record(s) in {args.out}/{JSONL_NAME}; table in {args.out}/{MARKDOWN_NAME}")
    return 0
