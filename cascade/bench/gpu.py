"""`cascade bench gpu`: every GPU figure the project needs from one prepared run on one CUDA device,
within a wall-clock budget, with a CPU dry run that takes the same code paths in seconds.

Parts, in the order they run (each a share of the budget, see `SHARES`):

- `train_step`: the bf16 train step of base64_text (batch 64), sr256 (batch 16) and sr1024
  (batch 8 on 256x256 crops), eager: ms, images/s, TFLOP/s from the FLOP counter, MFU against
  the device's dense bf16 peak (`cascade.bench.flops`), the attention kernels dispatched;
- `largest_batch`: the largest batch whose train step runs, per stage: doubling from the
  nominal batch, then bisection, on real allocations (a `torch.OutOfMemoryError` means "does
  not fit"), capped by `StageRun.max_batch` and by the budget;
- `peer_train_step`: our base train step against imagen-pytorch's Unet and diffusers'
  UNet2DConditionModel at matched parameters, resolution, batch and text length, interleaved
  in one process (`cascade.bench.peer.run_train_step_peers`);
- `cascade_sampling`: base 64 -> 256 -> 1024 at batch 8 with 25/20/15 steps, seconds per image
  and peak memory (`torch.cuda.max_memory_allocated`);
- `data_loader`: loader samples/s per worker from JPEG shards (`cascade.data.bench`, the
  `photos` data set) against the base stage's images/s: the workers one GPU needs;
- `train_step_compiled`: the train steps of `train_step` with the UNet `torch.compile`d (last:
  its compilations are the longest measurements and cannot be interrupted).

Every measurement is one JSON line (the records of `cascade.bench.records`, plus `part`); a
part or measurement that does not run gets a record with `skipped` saying why (budget spent,
a package missing, a CUDA-only measurement in a dry run), one that raises a record with
`error`. `gpu-bench.md` is the Markdown table of them all, rewritten after every record.

The dry run (`--dry-run`: CPU, tiny configs derived from the same stage YAMLs) runs every part
with the same functions; only torch.compile, a CUDA-only measurement here, is skipped.
"""

from __future__ import annotations

import gc
import json
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import yaml

from ..resources import shipped
from ..stages.export import read_stage_config
from .records import append_jsonl, environment
from .stage_inputs import SpeedSettings, load_stage, training_batch
from .train_step import TrainStep, prepare_train_step, run_train_benchmark

PARTS = ("train_step", "largest_batch", "peer_train_step", "cascade_sampling", "data_loader", "train_step_compiled")
# Share of the budget each part may spend (see `Budget`). torch.compile runs last and may use
# all that is left of the total: one compilation cannot be interrupted, so it must not eat the
# other parts' time.
SHARES = {"train_step": 0.12, "largest_batch": 0.15, "peer_train_step": 0.12, "cascade_sampling": 0.2,
          "data_loader": 0.06, "train_step_compiled": 1.0}
# What a part's first measurement is expected to take, before any has run (later ones: the longest so
# far). Compiling base64_text's train step (597 M parameters, mode "default") took 253 s on an H200
# (torch 2.11, 2026-12-04, docs/benchmarks.md): started with 67 s of a 200 s budget left, it ran the
# whole run to 395 s. The tiny dry run has no estimates (it does not compile).
FIRST_MEASUREMENT_S = {"train_step_compiled": 260.0}
JSONL_NAME = "gpu-bench.jsonl"
MARKDOWN_NAME = "gpu-bench.md"


@dataclass(frozen=True)
class StageRun:
    """One stage's train-step measurement: its config, batch, training resolution (None: the
    stage's image size; SR 1024 trains on crops) and the cap of the largest-batch search."""

    name: str
    config: str
    batch: int
    resolution: int | None
    max_batch: int


@dataclass(frozen=True)
class GpuBenchPlan:
    """What `run_gpu_bench` measures (`full_plan` on a GPU, `tiny_plan` for the dry run)."""

    stages: tuple[StageRun, ...]
    cascade_batch: int = 8
    cascade_steps: tuple[int, ...] = (25, 20, 15)
    guidance: float = 3.0
    compile_mode: str | None = "default"
    loader_dataset: str = "photos"
    loader_samples: int = 256
    warmup: int = 2
    iters: int = 5
    seed: int = 0
    tiny: bool = False


def full_plan(configs_dir: str | Path | None = None) -> GpuBenchPlan:
    """The shipped base64_text, sr256 and sr1024 configs at the issue's batches."""
    folder = Path(configs_dir) if configs_dir is not None else shipped("configs")
    return GpuBenchPlan(stages=(
        StageRun("base64_text", str(folder / "base64_text.yaml"), 64, None, 1024),
        StageRun("sr256", str(folder / "sr256.yaml"), 16, None, 256),
        StageRun("sr1024", str(folder / "sr1024.yaml"), 8, 256, 256),
    ))


# The tiny dry-run stages: the same YAMLs with a micro UNet, images 8 -> 32 -> 128 (the same x4
# steps), SR 1024 trained on 32x32 crops, text tokens 8 x 16.
TINY_SIZES = {"base64_text": (8, None, None), "sr256": (32, 8, None), "sr1024": (128, 32, 32)}
TINY_UNET = {"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1, "head_channels": 8,
             "norm_groups": 4, "text_dim": 16, "dropout": 0.0}


def tiny_plan(full: GpuBenchPlan, folder: str | Path) -> GpuBenchPlan:
    """`full` with each stage's YAML rewritten to a micro stage (written into `folder`), batch 2,
    a largest-batch cap of 4, 3/2/2 cascade steps and a short loader run."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stages = []
    for run in full.stages:
        image_size, lowres_size, crop = TINY_SIZES[run.name]
        stage_config = read_stage_config(run.config)
        init_args = dict(stage_config["init_args"])
        unet = {**init_args["unet"], **TINY_UNET, "image_size": image_size}
        lowest = image_size // 2 ** (len(TINY_UNET["channel_mults"]) - 1)
        for key in ("attention_resolutions", "cross_attention_resolutions"):
            unet[key] = [lowest] if unet.get(key) else []
        init_args.update(unet=unet, image_size=image_size)
        if lowres_size is not None:
            init_args["lowres_size"] = lowres_size
        if init_args.get("text_encoder"):
            init_args["text_encoder"] = {**init_args["text_encoder"], "max_length": 8}
        path = folder / f"tiny_{run.name}.yaml"
        path.write_text(yaml.safe_dump({"model": {"class_path": stage_config["class_path"], "init_args": init_args}}))
        stages.append(StageRun(run.name, str(path), 2, crop, 4))
    return replace(full, stages=tuple(stages), cascade_batch=2, cascade_steps=(3, 2, 2), loader_samples=16,
                   warmup=1, iters=2, tiny=True)


@dataclass
class Budget:
    """Wall-clock budget: `total_s` in all, of which each part has its `SHARES`. A part may start
    a measurement while that measurement, taking as long as the part's longest one so far (its
    first: `first_s`, else nothing), would end within both its share and the total. A measurement
    that starts is not interrupted."""

    total_s: float
    first_s: dict[str, float] = field(default_factory=dict)
    start: float = field(default_factory=lambda: time.monotonic())
    spent: dict[str, float] = field(default_factory=dict)
    longest: dict[str, float] = field(default_factory=dict)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def refusal(self, part: str) -> str | None:
        """None when `part` may start another measurement, else the reason it may not."""
        share, spent = SHARES[part] * self.total_s, self.spent.get(part, 0.0)
        next_s = self.longest.get(part, self.first_s.get(part, 0.0))
        if self.elapsed() + next_s >= self.total_s:
            takes = "are expected to take" if part not in self.longest else "take"
            return (f"budget spent: {self.elapsed():.0f} s of --budget-s {self.total_s:.0f} elapsed"
                    + (f", and this part's measurements {takes} {next_s:.0f} s" if next_s else ""))
        if spent + next_s > share:
            return f"budget spent: part {part} used {spent:.0f} s of its {share:.0f} s share (longest {next_s:.0f} s)"
        return None

    def charge(self, part: str, seconds: float) -> None:
        self.spent[part] = self.spent.get(part, 0.0) + seconds
        self.longest[part] = max(self.longest.get(part, 0.0), seconds)


class GpuBench:
    """Runs the parts of a plan on one device, writing each record as soon as it exists."""

    def __init__(self, plan: GpuBenchPlan, device: torch.device, out: str | Path, budget_s: float,
                 echo: Callable[[str], None] = print):
        self.plan = plan
        self.device = device
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.out / JSONL_NAME
        self.jsonl.unlink(missing_ok=True)
        self.budget = Budget(budget_s, {} if plan.tiny else FIRST_MEASUREMENT_S)
        self.echo = echo
        self.environment = environment(device)
        self.records: list[dict] = []
        self.eager = SpeedSettings.for_device(device, "bf16" if device.type == "cuda" else "fp32")
        self.compiled = replace(self.eager, compile_mode=plan.compile_mode)

    # ------------------------------------------------------------------ bookkeeping
    def record(self, part: str, record: dict) -> None:
        """Append the record to the JSON lines and rewrite the table (a run cut short by a
        timeout keeps everything measured so far)."""
        record = {**record, "part": part, **self.environment}
        self.records.append(record)
        append_jsonl([record], self.jsonl)
        self.write_markdown()
        self.echo(f"[{self.budget.elapsed():6.1f} s] {part}: {' '.join(summary(record)[1:])}")

    def skip(self, part: str, what: str, reason: str) -> None:
        self.record(part, {"benchmark": part, "what": what, "skipped": reason})

    def measured(self, part: str, what: str, measure: Callable[[], list[dict] | dict]) -> list[dict]:
        """Run one measurement of `part` if the budget allows (else a skip record), charging its
        time to the part. A measurement that raises (out of memory, a compiler error, a bug)
        becomes a record with `error` (its type, message and the line that raised), so one
        failing part cannot cost the run the others: a GPU run is not repeated lightly."""
        reason = self.budget.refusal(part)
        if reason is not None:
            self.skip(part, what, reason)
            return []
        start = time.monotonic()
        try:
            result = measure()
        except Exception as error:  # noqa: BLE001 - recorded, see the docstring
            where = traceback.extract_tb(error.__traceback__)[-1]
            message = str(error).splitlines()[0] if str(error) else ""
            self.record(part, {"benchmark": part, "what": what, "error": f"{type(error).__name__}: {message} "
                               f"({Path(where.filename).name}:{where.lineno})"})
            return []
        finally:
            self.budget.charge(part, time.monotonic() - start)
            _free_memory(self.device)
        results = result if isinstance(result, list) else [result]
        for item in results:
            self.record(part, {"what": what, **item})
        return results

    # ------------------------------------------------------------------ the parts
    def run(self) -> list[dict]:
        plan = self.plan
        for run in plan.stages:
            self.measured("train_step", run.name, lambda run=run: self.train_step(run, self.eager))
        for run in plan.stages:
            self.measured("largest_batch", run.name, lambda run=run: self.largest_batch(run))
        base = plan.stages[0]
        self.measured("peer_train_step", base.name, lambda: self.peers(base))
        self.measured("cascade_sampling", " -> ".join(run.name for run in plan.stages), self.cascade)
        self.measured("data_loader", f"{plan.loader_dataset} JPEG shards, base64", self.loader)
        for run in plan.stages:
            if self.device.type != "cuda":
                self.skip("train_step_compiled", run.name,
                          "CUDA only: the dry run leaves torch.compile out (its CPU compile alone exceeds the dry run)")
            else:
                self.measured("train_step_compiled", run.name, lambda run=run: self.train_step(run, self.compiled))
        self.write_markdown()
        return self.records

    def train_step(self, run: StageRun, settings: SpeedSettings) -> dict:
        return run_train_benchmark(run.config, self.device, settings, run.batch, run.resolution, self.plan.warmup,
                                   self.plan.iters, self.plan.seed)

    def largest_batch(self, run: StageRun) -> dict:
        stage = load_stage(run.config, self.device, self.plan.seed)
        train = prepare_train_step(stage, 1, run.resolution, self.eager, self.plan.seed)

        def fits(batch: int) -> bool:
            if self.budget.refusal("largest_batch") is not None:
                raise BudgetSpent
            return train_step_fits(train, batch, run.resolution, self.plan.seed)

        result = largest_batch(fits, run.batch, run.max_batch)
        return {"benchmark": "largest_batch", "config": run.config, "resolution": run.resolution or stage.image_size,
                **self.eager.describe(), **result, "max_batch": run.max_batch}

    def peers(self, run: StageRun) -> list[dict]:
        from .peer import run_train_step_peers

        return run_train_step_peers(run.config, self.device, self.eager, run.batch, self.plan.warmup, self.plan.iters,
                                    self.plan.seed)

    def cascade(self) -> list[dict]:
        from .sampling import run_cascade_benchmark

        plan = self.plan
        return run_cascade_benchmark([run.config for run in plan.stages], self.device, self.eager, plan.cascade_batch,
                                     ["dpmpp_2m"], list(plan.cascade_steps), plan.guidance, 1, plan.seed)

    def loader(self) -> list[dict]:
        from .loader import run_loader_benchmark

        with tempfile.TemporaryDirectory(prefix="cascade-gpu-bench-") as workdir:
            records = run_loader_benchmark(workdir, [self.plan.loader_dataset], ["base64"], self.plan.loader_samples)
        base = [r for r in self.records if r.get("benchmark") == "train_step" and r.get("what") == self.plan.stages[0].name
                and "images_per_s" in r]
        for record in records:
            if base:
                images_per_s = max(r["images_per_s"] for r in base)
                record["base_images_per_s"] = images_per_s
                record["workers_per_device"] = images_per_s / record["samples_per_s_per_worker"]
        return records

    # ------------------------------------------------------------------ the table
    def write_markdown(self) -> Path:
        path = self.out / MARKDOWN_NAME
        path.write_text(markdown(self.records, self.environment, self.budget), encoding="utf-8")
        return path


class BudgetSpent(Exception):
    """The largest-batch search ran out of its budget share between two probes."""


def train_step_fits(train: TrainStep, batch: int, resolution: int | None, seed: int) -> bool:
    """Whether one train step at `batch` runs (False on torch.OutOfMemoryError), with the same
    stage, optimiser and settings as `train`."""
    out_of_memory = False
    train.batch = {}  # the previous probe's batch is freed before this one is made
    try:
        train.batch = training_batch(train.stage, batch, resolution, train.settings, seed)
        train.step()
    except torch.OutOfMemoryError:
        out_of_memory = True  # the traceback (and the tensors it holds) is released before freeing
    if out_of_memory:
        train.batch = {}
        train.optimizer.zero_grad(set_to_none=True)
        _free_memory(train.stage.device)
    return not out_of_memory


def largest_batch(fits: Callable[[int], bool], start: int, cap: int) -> dict:
    """The largest batch b <= cap with fits(b), assuming fits is monotone: doubling from `start`
    (halving first if `start` does not fit), then bisection between the last fit and the first
    failure. `fits` may raise BudgetSpent: the answer is then the best found so far."""
    probes: list[tuple[int, bool]] = []

    def probe(batch: int) -> bool:
        ok = fits(batch)
        probes.append((batch, ok))
        return ok

    good, bad, stopped = 0, None, None
    try:
        batch = min(start, cap)
        while batch >= 1 and not probe(batch):
            bad, batch = batch, batch // 2
        if batch >= 1:
            good = batch
            while bad is None and good < cap:
                batch = min(2 * good, cap)
                if probe(batch):
                    good = batch
                else:
                    bad = batch
            while bad is not None and bad - good > 1:
                middle = (good + bad) // 2
                good, bad = (middle, bad) if probe(middle) else (good, middle)
    except BudgetSpent:
        stopped = "budget spent during the search: the batch is a lower bound"
    return {"largest_batch": good, "first_failing_batch": bad, "capped": bad is None and good == cap,
            "probes": [f"{b}:{'ok' if ok else 'oom'}" for b, ok in probes], "stopped": stopped}


def _free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _format(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"


def summary(record: dict) -> tuple[str, str, str]:
    """(what, result, notes) of one record, for the table and the progress lines."""
    what = str(record.get("what", record.get("config", "")))
    if record.get("skipped"):
        return what, "skipped", record["skipped"]
    if record.get("error"):
        return what, "failed", record["error"]
    kind = record.get("benchmark")
    if kind == "train_step":
        mfu = record.get("mfu")
        result = (f"{_format(record['ms_per_step'])} ms/step, {_format(record['images_per_s'])} img/s, "
                  f"{_format(record['achieved_tflops'])} TFLOP/s, MFU {'-' if mfu is None else f'{100 * mfu:.1f}%'}")
        notes = (f"batch {record['batch']} at {record['resolution']}, {record['precision']}, compile "
                 f"{record['compile'] or 'off'}, {_format(record['parameters_m'])} M params, attention "
                 f"{record['attention_kernels'] or 'none'}, peak {_format(record['peak_memory_mib'])} MiB"
                 + ("" if mfu is not None else f"; {record['mfu_note']}"))
        return what, result, notes
    if kind == "largest_batch":
        result = f"largest batch {record['largest_batch']}" + (" (the cap)" if record["capped"] else "")
        notes = (f"at {record['resolution']}, first failing {record['first_failing_batch'] or '-'}, cap "
                 f"{record['max_batch']}, probes {' '.join(record['probes'])}"
                 + (f"; {record['stopped']}" if record.get("stopped") else ""))
        return what, result, notes
    if kind == "peer_train_step":
        result = (f"ours {_format(record['ours_ms'])} ms, {record['peer']} {_format(record['peer_ms'])} ms: "
                  f"ours {_format(record['speedup_vs_peer'])}x as fast")
        notes = (f"batch {record['batch']}, params ours {_format(record['ours_parameters_m'])} M / peer "
                 f"{_format(record['peer_parameters_m'])} M (matched: {record['parameters_matched']}), GFLOP ours "
                 f"{_format(record['ours_gflops'])} / peer {_format(record['peer_gflops'])}")
        return what, result, notes
    if kind == "cascade_sampling":
        result = f"{_format(record['seconds_per_image'])} s/image"
        notes = (f"sizes {record['sizes']}, batch {record['batch']}, {record['sampler']} {record['steps']} steps, "
                 f"guidance {record['guidance']}, stage s {record['stage_seconds']}, peak "
                 f"{_format(record['peak_memory_mib'])} MiB ({record['peak_memory_kind']})")
        return what, result, notes
    if kind == "data_loader":
        result = f"{_format(record['samples_per_s_per_worker'])} samples/s per worker"
        workers = record.get("workers_per_device")
        notes = (f"stored at {record['stored_size']}, {record['samples']} samples"
                 + ("" if workers is None else
                    f"; base trains {_format(record['base_images_per_s'])} img/s: {_format(workers)} workers per device"))
        return what, result, notes
    return what, json.dumps(record, default=str)[:80], ""


def markdown(records: list[dict], env: dict, budget: Budget) -> str:
    """The table of every record, one row each, grouped by part in `PARTS` order."""
    lines = [
        "# cascade bench gpu",
        "",
        (f"Device: {env['device']}; torch {env['torch']} (CUDA {env['cuda']}), Lightning {env['lightning']}; "
         f"{env['time_utc']}; {budget.elapsed():.0f} s of a {budget.total_s:.0f} s budget."),
        "",
        "| part | what | result | notes |",
        "|---|---|---|---|",
    ]
    for part in PARTS:
        for record in (r for r in records if r["part"] == part):
            cells = [part, *summary(record)]
            lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def run_gpu_bench(out: str | Path, budget_s: float = 480.0, device: torch.device | None = None, tiny: bool = False,
                  configs_dir: str | Path | None = None, echo: Callable[[str], None] = print) -> list[dict]:
    """Run every part on `device` (default: the first CUDA device) and write out/gpu-bench.jsonl
    and out/gpu-bench.md; `tiny` runs the dry-run plan (micro configs written into out/configs)."""
    device = device or torch.device("cuda")
    plan = full_plan(configs_dir)
    if tiny:
        plan = tiny_plan(plan, Path(out) / "configs")
    return GpuBench(plan, device, out, budget_s, echo).run()
