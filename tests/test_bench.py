"""`cascade bench` on micro stage configs: JSON lines, FLOP counts, MFU, and the optional peer."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch
import yaml

from cascade.bench import flops
from cascade.cli import main as cascade_main
from cascade.bench.harness import measure_interleaved

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
    assert "imagen-pytorch" in capsys.readouterr().out
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
