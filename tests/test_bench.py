"""`cascade bench` on micro stage configs: JSON lines, FLOP counts, MFU, and the optional peer."""

from __future__ import annotations

import importlib.util
import json
import sys
import time

import pytest
import torch
import yaml

from cascade.bench import flops
from cascade.bench.harness import measure_interleaved
from cascade.cli import main as cascade_main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MICRO_UNET = {
    "image_size": 16,
    "base_channels": 8,
    "channel_mults": [1, 2],
    "num_res_blocks": 1,
    "attention_resolutions": [8],
    "cross_attention_resolutions": [8],
    "head_channels": 8,
    "norm_groups": 4,
}


def write_config(tmp_path, name: str, model: dict) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"model": model}))
    return str(path)


@pytest.fixture
def micro_configs(tmp_path) -> dict[str, str]:
    """A 16x16 text-conditional base (random text tokens, the encoder is never loaded) and a
    16 -> 32 super-resolution stage after it."""
    base = {
        "class_path": "cascade.stages.BaseStage",
        "init_args": {
            "image_size": 16,
            "conditioning": "text",
            "text_encoder": {"kind": "minilm", "max_length": 8},
            "unet": {**MICRO_UNET, "text_dim": 16},
        },
    }
    sr = {
        "class_path": "cascade.stages.SuperResStage",
        "init_args": {
            "image_size": 32,
            "lowres_size": 16,
            "unet": {**MICRO_UNET, "image_size": 32, "attention_resolutions": [], "cross_attention_resolutions": [],
                     "lowres_channels": 3, "use_aug_cond": True},
        },
    }
    return {"base": write_config(tmp_path, "base", base), "sr": write_config(tmp_path, "sr", sr)}


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


FAST = ["--iters", "2", "--warmup", "1", "--batch", "2"]


def test_train_and_sample_step_write_json_lines(micro_configs, tmp_path):
    out = tmp_path / "results.jsonl"
    configs = [micro_configs["base"], micro_configs["sr"]]
    assert cascade_main(["bench", "train", *configs, *FAST, "--jsonl", str(out)]) == 0
    assert cascade_main(["bench", "sample-step", *configs, *FAST, "--jsonl", str(out)]) == 0

    records = read_jsonl(out)
    assert [r["benchmark"] for r in records] == ["train_step", "train_step", "sampling_step", "sampling_step"]
    for record in records:
        assert record["ms_per_step"] > 0 and len(record["ms_per_step_all"]) == 2
        assert record["gflops_per_step"] > 0
        assert record["device"].startswith("cpu") and record["torch"] == torch.__version__
        assert record["precision"] == "fp32" and record.get("mfu") is None  # no MFU on a CPU
    base_train, sr_train, base_step, sr_step = records
    assert base_train["images_per_s"] == pytest.approx(2 / (base_train["ms_per_step"] / 1000))
    assert base_train["attention_kernels"] == {"cpu_flash": 8}  # self + cross at 8x8: 1 down, middle, 2 up
    assert sr_train["attention_kernels"] == {}
    # classifier-free guidance: the conditional and null rows in ONE forward pass
    assert base_step["unet_calls_per_step"] == 1 and base_step["unet_rows_per_call"] == 4
    assert sr_step["unet_calls_per_step"] == 1 and sr_step["unet_rows_per_call"] == 2  # no condition: no CFG


def test_cascade_benchmark_reports_seconds_per_image(micro_configs, tmp_path):
    out = tmp_path / "results.jsonl"
    args = ["cascade", micro_configs["base"], micro_configs["sr"], "--steps", "2", "2", "--samplers", "dpmpp_2m",
            "ddim", *FAST, "--jsonl", str(out)]
    assert cascade_main(["bench", *args]) == 0
    records = read_jsonl(out)
    assert [r["sampler"] for r in records] == ["dpmpp_2m", "ddim"]
    for record in records:
        assert record["sizes"] == "16 -> 32" and record["steps"] == "2/2"
        assert len(record["stage_seconds"]) == 2
        assert record["seconds_per_image"] == pytest.approx(record["seconds_per_batch"] / 2)


def test_cascade_benchmark_times_cascade_generate_itself(micro_configs):
    from cascade.bench.sampling import sample_cascade
    from cascade.bench.stage_inputs import SpeedSettings, load_stage, random_condition
    from cascade.pipeline import Cascade
    from cascade.stages import SamplingSettings

    stages = [load_stage(micro_configs[name], torch.device("cpu"), seed) for seed, name in enumerate(["base", "sr"])]
    cascade = Cascade(stages, [SamplingSettings(steps=2, guidance=3.0), SamplingSettings("ddpm", 2, aug_level=0.1)])
    stage_ms = [[], []]
    images = sample_cascade(cascade, 2, SpeedSettings(), seed=5, stage_ms=stage_ms)
    generator = torch.Generator().manual_seed(5)  # the benchmark's random text tokens: no encoder is loaded
    conditions = [random_condition(stage, 2, generator) for stage in stages]
    (expected,) = cascade.generate([5, 6], conditions=conditions)
    torch.testing.assert_close(images, expected, rtol=0, atol=0)
    assert [len(ms) for ms in stage_ms] == [1, 1] and min(min(stage_ms)) > 0


def test_bad_arguments_fail_with_a_message(micro_configs, tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    assert cascade_main(["bench", "cascade", micro_configs["base"], micro_configs["sr"], "--steps", "2", "--jsonl", str(out)]) == 2
    assert "one count per stage" in capsys.readouterr().out
    assert not out.exists()


def test_flop_counter_counts_convolutions_and_attention():
    conv = torch.nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 5, 5)
    assert flops.count_flops(lambda: conv(x)) == 2 * 2 * 6 * 4 * 9 * 25
    q = torch.randn(1, 2, 16, 8, requires_grad=True)
    forward = flops.count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q))
    assert forward == 2 * (2 * 2 * 16 * 16 * 8)  # QK^T and PV, counted on the CPU kernel too
    both = flops.count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward())
    assert both > 2 * forward


def test_mfu_and_device_peaks(monkeypatch):
    assert flops.mfu(int(989.4e12), 1000.0, 989.4) == pytest.approx(1.0)
    assert flops.device_peak(torch.device("cpu")) is None
    names = {
        "NVIDIA H100 80GB HBM3": 989.4,
        "NVIDIA H100 PCIe": 756.5,
        "NVIDIA H200": 989.4,
        "NVIDIA A100-SXM4-80GB": 312.0,
        "NVIDIA A100 80GB PCIe": 312.0,
        "NVIDIA GeForce RTX 4090": None,
    }
    for name, peak in names.items():
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        found = flops.device_peak(torch.device("cuda"))
        assert (found and found[1]) == peak, name


def test_interleaved_harness_alternates_calls():
    calls = []
    timings = measure_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                  torch.device("cpu"), warmup=1, iters=2)
    assert calls == ["a", "b"] * 3
    assert len(timings["a"].warmup_ms) == 1 and len(timings["b"].times_ms) == 2


def test_peer_is_skipped_cleanly_without_imagen_pytorch(micro_configs, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "imagen_pytorch", None)  # import fails as if not installed
    out = tmp_path / "results.jsonl"
    assert cascade_main(["bench", "peer", micro_configs["base"], *FAST, "--jsonl", str(out)]) == 1
    printed = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "pip install 'cascade-diffusion[bench]'" in printed  # the extra's name is not eaten as markup
    assert not out.exists()

    args = ["all", "--base", micro_configs["base"], "--sr", micro_configs["sr"], "--steps", "1", "1", "--skip-loader",
            *FAST, "--jsonl", str(out)]
    assert cascade_main(["bench", *args]) == 0
    assert "peer comparison skipped" in capsys.readouterr().out
    assert {r["benchmark"] for r in read_jsonl(out)} == {"train_step", "sampling_step", "cascade_sampling"}


@pytest.mark.slow
def test_peer_runs_when_imagen_pytorch_is_installed(micro_configs, tmp_path):
    if importlib.util.find_spec("imagen_pytorch") is None:
        pytest.skip("imagen-pytorch is not installed (the optional `bench` extra)")
    out = tmp_path / "results.jsonl"
    assert cascade_main(["bench", "peer", micro_configs["base"], *FAST, "--jsonl", str(out)]) == 0
    train, cfg = read_jsonl(out)
    assert train["benchmark"] == "peer_train_step" and cfg["benchmark"] == "peer_cfg_step"
    for record in (train, cfg):
        assert record["ours_ms"] > 0 and record["peer_ms"] > 0
        assert record["speedup_vs_peer"] == pytest.approx(record["peer_ms"] / record["ours_ms"])
        assert record["peer"].startswith("imagen-pytorch")
    assert train["peer_unet_kwargs"]["max_text_len"] == 8 and train["peer_unet_kwargs"]["text_embed_dim"] == 16
    assert train["peer_unet_kwargs"]["layer_cross_attns"] == [False, True]
    assert "memory_efficient" not in train["peer_unet_kwargs"]
    assert cascade_main(["bench", "peer", micro_configs["base"], *FAST, "--peer-memory-efficient",
                         "--jsonl", str(out)]) == 0
    train = read_jsonl(out)[2]
    assert train["peer_unet_kwargs"]["memory_efficient"] is True and train["peer_ms"] > 0


def test_peer_memory_efficient_flag_reaches_every_imagen_unet_the_matching_builds(micro_configs, tmp_path, monkeypatch):
    """`--peer-memory-efficient` builds imagen-pytorch's Unet with memory_efficient=True (its
    Efficient U-Net block order): checked with a stand-in module whose Unet records its arguments
    and fails the timed run once built."""
    import types

    from cascade.bench.peer import PeerUnavailable

    built: list[dict] = []

    class RecordingUnet(torch.nn.Module):
        def __init__(self, dim: int, **kwargs):
            super().__init__()
            built.append(kwargs)
            self.weight = torch.nn.Parameter(torch.zeros(dim, dim))
            if torch.empty(0).device.type != "meta":  # the peer itself, after the meta-device matching
                raise PeerUnavailable("stand-in imagen-pytorch: built")

    stand_in = types.ModuleType("imagen_pytorch")
    stand_in.Unet, stand_in.__version__ = RecordingUnet, "0"
    monkeypatch.setitem(sys.modules, "imagen_pytorch", stand_in)
    for flag, expected in (([], None), (["--peer-memory-efficient"], True)):
        built.clear()
        assert cascade_main(["bench", "peer", micro_configs["base"], *FAST, *flag,
                             "--jsonl", str(tmp_path / "r.jsonl")]) == 1
        assert len(built) > 2 and all(kwargs.get("memory_efficient") is expected for kwargs in built)


def test_loader_benchmark_reports_the_data_package_measurement(tmp_path, monkeypatch):
    from cascade.data import bench as data_bench

    calls = []

    def fake_run(workdir, datasets, stages, samples):
        calls.append((workdir, datasets, stages, samples))
        return [data_bench.Measurement("synthetic", "base64", 128, 64, cpu_seconds=0.5, wall_seconds=1.0)]

    monkeypatch.setattr(data_bench, "run", fake_run)
    out = tmp_path / "results.jsonl"
    assert cascade_main(["bench", "loader", "--workdir", str(tmp_path / "work"), "--samples", "64", "--jsonl", str(out)]) == 0
    assert calls == [(str(tmp_path / "work"), ["synthetic"], ["base64"], 64)]
    (record,) = read_jsonl(out)
    assert record["benchmark"] == "data_loader" and record["samples_per_s_per_worker"] == pytest.approx(128.0)


@pytest.mark.slow
def test_memory_estimate_grows_with_the_batch_and_finds_a_largest_batch(micro_configs, tmp_path):
    out = tmp_path / "results.jsonl"
    assert cascade_main(["bench", "memory", micro_configs["sr"], "--mode", "sample", "--batch", "1", "--jsonl", str(out)]) == 0
    assert cascade_main(["bench", "memory", micro_configs["sr"], "--mode", "sample", "--batch", "3", "--jsonl", str(out)]) == 0
    one, many = read_jsonl(out)
    assert one["unet_rows"] == 1 and many["unet_rows"] == 3  # unconditional SR: no CFG rows
    assert many["by_kind_gib"]["activation"] > one["by_kind_gib"]["activation"]
    assert many["estimated_peak_gib"] > one["estimated_peak_gib"]

    budget = many["estimated_peak_gib"]
    assert cascade_main(["bench", "memory", micro_configs["sr"], "--mode", "sample", "--fit-gib", str(budget), "--jsonl", str(out)]) == 0
    fit = read_jsonl(out)[-1]
    assert fit["benchmark"] == "memory_largest_batch" and fit["batch"] == 3
    assert fit["estimated_peak_gib"] <= budget < fit["next_batch_gib"]


def test_gpu_dry_run_measures_or_skips_every_part_and_tables_them(tmp_path):
    """`cascade bench gpu --dry-run`: every part on CPU with the tiny configs, through the same
    functions as on a GPU; torch.compile (CUDA only here) and absent peers are recorded skips."""
    from cascade.bench.gpu import JSONL_NAME, MARKDOWN_NAME, PARTS

    out = tmp_path / "gpu"
    cpu_start = time.process_time()
    assert cascade_main(["bench", "gpu", "--dry-run", "--out", str(out)]) == 0
    cpu_seconds = time.process_time() - cpu_start
    assert cpu_seconds < 60, cpu_seconds

    records = read_jsonl(out / JSONL_NAME)
    by_part = {part: [r for r in records if r["part"] == part] for part in PARTS}
    assert all(by_part.values()), {part: len(rs) for part, rs in by_part.items()}
    for record in records:
        assert "error" not in record, record
        assert record.get("skipped") is None or record["skipped"].strip(), record
        assert record["device"].startswith("cpu")

    train = {r["what"]: r for r in by_part["train_step"]}
    assert sorted(train) == ["base64_text", "sr1024", "sr256"]
    assert [train[name]["resolution"] for name in ("base64_text", "sr256", "sr1024")] == [8, 32, 32]  # sr1024: crops
    for record in train.values():
        assert record["images_per_s"] == pytest.approx(record["batch"] / (record["ms_per_step"] / 1000))
        assert record["achieved_tflops"] == pytest.approx(record["flops_per_step"] / (record["ms_per_step"] / 1000) / 1e12)
        assert record["mfu"] is None and "no dense bf16 peak known" in record["mfu_note"]
    assert train["base64_text"]["attention_kernels"] == {"cpu_flash": 8}  # self + cross at the 4x4 level

    for record in by_part["largest_batch"]:
        assert record["largest_batch"] == 4 and record["capped"] and record["probes"] == ["2:ok", "4:ok"]
    assert all("CUDA only" in r["skipped"] for r in by_part["train_step_compiled"])

    peers = {r["peer"].split()[0]: r for r in by_part["peer_train_step"]}
    assert set(peers) == {"imagen-pytorch", "diffusers"}
    if importlib.util.find_spec("imagen_pytorch") is None:
        assert "not installed" in peers["imagen-pytorch"]["skipped"]
    diffusers = peers["diffusers"]
    assert diffusers["speedup_vs_peer"] == pytest.approx(diffusers["peer_ms"] / diffusers["ours_ms"])
    assert diffusers["parameters_matched"]

    (cascade,) = by_part["cascade_sampling"]
    assert cascade["sizes"] == "8 -> 32 -> 128" and cascade["steps"] == "3/2/2"
    assert cascade["seconds_per_image"] == pytest.approx(cascade["seconds_per_batch"] / 2)

    for loader in by_part["data_loader"]:
        assert loader["dataset"] == "photos" and loader["base_images_per_s"] == train["base64_text"]["images_per_s"]
        assert loader["workers_per_device"] == pytest.approx(loader["base_images_per_s"] / loader["samples_per_s_per_worker"])

    table = (out / MARKDOWN_NAME).read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| part")]
    assert len(rows) == len(records)
    assert {row.split(" | ")[0].removeprefix("| ") for row in rows} == set(PARTS)


def test_largest_batch_search_finds_the_last_batch_that_fits():
    from cascade.bench.gpu import BudgetSpent, largest_batch

    def memory_limit(limit: int):
        return lambda batch: batch <= limit

    grows = largest_batch(memory_limit(37), start=8, cap=1024)
    assert (grows["largest_batch"], grows["first_failing_batch"], grows["capped"]) == (37, 38, False)
    assert grows["probes"][:4] == ["8:ok", "16:ok", "32:ok", "64:oom"]
    shrinks = largest_batch(memory_limit(20), start=64, cap=1024)  # the nominal batch itself does not fit
    assert (shrinks["largest_batch"], shrinks["first_failing_batch"]) == (20, 21)
    capped = largest_batch(memory_limit(5000), start=64, cap=100)
    assert (capped["largest_batch"], capped["capped"], capped["probes"][-1]) == (100, True, "100:ok")
    assert largest_batch(memory_limit(0), start=4, cap=8)["largest_batch"] == 0

    probes = []

    def budget_runs_out(batch: int) -> bool:
        probes.append(batch)
        if len(probes) > 2:
            raise BudgetSpent
        return True

    stopped = largest_batch(budget_runs_out, start=8, cap=1024)
    assert stopped["largest_batch"] == 16 and "lower bound" in stopped["stopped"]


def test_a_train_step_that_runs_out_of_memory_does_not_fit(micro_configs, monkeypatch):
    from cascade.bench.gpu import train_step_fits
    from cascade.bench.stage_inputs import SpeedSettings, load_stage
    from cascade.bench.train_step import prepare_train_step

    train = prepare_train_step(load_stage(micro_configs["base"], torch.device("cpu")), 1, None, SpeedSettings())
    real_step = train.step

    def step_with_a_memory_limit():
        if train.batch["image"].shape[0] > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step()

    monkeypatch.setattr(train, "step", step_with_a_memory_limit)
    assert train_step_fits(train, 3, None, seed=0)
    assert not train_step_fits(train, 4, None, seed=0)
    assert train.batch == {} and all(p.grad is None for p in train.stage.unet.parameters())


def test_budget_refuses_a_part_whose_share_or_the_total_is_spent(monkeypatch):
    from cascade.bench import gpu

    now = [0.0]
    monkeypatch.setattr(gpu.time, "monotonic", lambda: now[0])
    budget = gpu.Budget(total_s=100.0)
    assert budget.refusal("train_step") is None
    budget.charge("train_step", 5.0)  # 5 + 5 <= 12: one more 5 s measurement fits the share
    assert budget.refusal("train_step") is None
    budget.charge("train_step", 4.0)  # 9 + 5 > 12
    assert "part train_step used 9 s of its 12 s share (longest 5 s)" in budget.refusal("train_step")
    assert budget.refusal("cascade_sampling") is None
    budget.charge("train_step_compiled", 20.0)
    now[0] = 85.0  # 85 + 20 > 100: the next compiled step would end past the total
    assert budget.refusal("cascade_sampling") is None
    assert "85 s of --budget-s 100 elapsed" in budget.refusal("train_step_compiled")
    now[0] = 100.0
    assert "100 s of --budget-s 100 elapsed" in budget.refusal("cascade_sampling")


def test_a_compilation_does_not_start_unless_the_budget_left_covers_its_expected_time(monkeypatch):
    """Before any compiled step has run, the part's first measurement is taken to last its
    measured estimate (253 s on an H200), so it is refused with less than that left, not started
    and left to run the whole bench past its budget."""
    from cascade.bench import gpu

    now = [0.0]
    monkeypatch.setattr(gpu.time, "monotonic", lambda: now[0])
    budget = gpu.Budget(total_s=480.0, first_s=gpu.FIRST_MEASUREMENT_S)
    now[0] = 133.0  # what the eager parts took on the H200
    assert budget.refusal("train_step_compiled") is None  # 133 + 260 < 480
    now[0] = 250.0
    assert "expected to take 260 s" in budget.refusal("train_step_compiled")
    assert budget.refusal("cascade_sampling") is None  # the other parts have no estimate


ATTENTION_BLOCKS = {  # levels 64, 32, 16, 8; a CrossAttn block where ours has self- or cross-attention
    "configs/bench/base64_text_small.yaml": ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "configs/base64_text.yaml": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
}


@pytest.mark.parametrize("config", sorted(ATTENTION_BLOCKS))
def test_diffusers_peer_is_built_to_our_parameter_count_and_layout(config):
    from cascade.bench.peer import (
        PARAMETER_TOLERANCE,
        _diffusers_unet,
        import_diffusers,
        matched_diffusers_kwargs,
    )
    from cascade.nn import count_parameters
    from cascade.stages.export import build_stage, read_stage_config

    with torch.device("meta"):
        ours = build_stage(read_stage_config(config)).unet
    diffusers = import_diffusers()
    kwargs = matched_diffusers_kwargs(diffusers, ours.config)
    peer = _diffusers_unet(diffusers, "meta", kwargs)
    assert abs(count_parameters(peer) / count_parameters(ours) - 1) <= PARAMETER_TOLERANCE
    assert kwargs["down_block_types"] == ATTENTION_BLOCKS[config]
    assert kwargs["up_block_types"] == tuple(b.replace("Down", "Up") for b in reversed(ATTENTION_BLOCKS[config]))
    assert kwargs["layers_per_block"] == tuple(ours.config.res_blocks_per_level)
    assert kwargs["cross_attention_dim"] == ours.config.text_dim and kwargs["sample_size"] == 64
    widths = kwargs["block_out_channels"]
    assert [w / widths[0] for w in widths] == list(ours.config.channel_mults)
    assert all(w % kwargs["norm_num_groups"] == 0 and w % h == 0 for w, h in zip(widths, kwargs["attention_head_dim"]))
    head_sizes = [w // h for w, h in zip(widths, kwargs["attention_head_dim"])]
    assert all(abs(size - ours.config.head_channels) <= ours.config.head_channels / 4 for size in head_sizes), head_sizes


def test_a_failing_measurement_is_recorded_and_the_run_goes_on(tmp_path):
    from cascade.bench.gpu import JSONL_NAME, MARKDOWN_NAME, GpuBench, GpuBenchPlan

    bench = GpuBench(GpuBenchPlan(stages=()), torch.device("cpu"), tmp_path, budget_s=1000.0, echo=lambda line: None)

    def broken() -> dict:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    assert bench.measured("train_step", "sr256", broken) == []
    bench.budget.charge("largest_batch", 150.0)  # its whole 15% share
    assert bench.measured("largest_batch", "sr256", lambda: pytest.fail("must not run")) == []
    failed, skipped = read_jsonl(tmp_path / JSONL_NAME)
    assert failed["error"].startswith("OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB (test_bench.py:")
    assert "part largest_batch used 150 s of its 150 s share" in skipped["skipped"]
    table = (tmp_path / MARKDOWN_NAME).read_text()
    assert "| train_step | sr256 | failed | OutOfMemoryError" in table and "| largest_batch | sr256 | skipped |" in table


def test_gpu_command_refuses_what_it_cannot_run(tmp_path, capsys):
    out = str(tmp_path / "gpu")
    assert cascade_main(["bench", "gpu", "--device", "cpu", "--out", out]) == 2
    assert "--device cpu runs only the tiny configs" in capsys.readouterr().out
    assert cascade_main(["bench", "gpu", "--dry-run", "--budget-s", "0", "--out", out]) == 2
    assert "--budget-s must be > 0" in capsys.readouterr().out
    if not torch.cuda.is_available():
        assert cascade_main(["bench", "gpu", "--out", out]) == 2
        assert "CUDA is not available" in capsys.readouterr().out
