"""The cascade at inference and `cascade sample`, on tiny random-weight stages."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from cascade.cli.sample import sample as sample_main
from cascade.eval.sweeps import discover_sample_sets
from cascade.files.sample_folder import png_bytes
from cascade.pipeline import Cascade
from cascade.stages import SamplingSettings, StageConfigError
from cascade.stages.base_stage import BaseStage
from cascade.stages.export import write_export
from cascade.stages.super_res import SuperResStage


def tiny_unet(image_size, lowres=False, text=False):
    return {
        "image_size": image_size, "base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
        "attention_resolutions": [image_size // 2], "cross_attention_resolutions": [image_size // 2] if text else [],
        "head_channels": 8, "norm_groups": 4, "num_classes": 0 if text else 3, "text_dim": 384 if text else 0,
        "lowres_channels": 3 if lowres else 0, "use_aug_cond": lowres,
    }


def randomise_output_layers(stage, seed):
    """ADM zero-initialises output layers; random ones make the network's output matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in stage.unet.parameters():
            if parameter.abs().sum() == 0:
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    return stage


def tiny_stages(text=False, sampling=None):
    sampling = sampling or (SamplingSettings(), SamplingSettings())
    conditioning = "text" if text else "class"
    encoder = {"kind": "minilm"} if text else None
    base = BaseStage(unet=tiny_unet(16, text=text), image_size=16, conditioning=conditioning, text_encoder=encoder,
                     sampling=sampling[0])
    sr = SuperResStage(unet=tiny_unet(32, lowres=True, text=text), image_size=32, lowres_size=16,
                       conditioning=conditioning, text_encoder=encoder, sampling=sampling[1])
    return [randomise_output_layers(base, 1).eval(), randomise_output_layers(sr, 2).eval()]


def write_exports(stages, root) -> list[str]:
    return [str(write_export(stage.unet.state_dict(), stage.stage_config(), root / f"stage{index}"))
            for index, stage in enumerate(stages)]


SETTINGS = [SamplingSettings(steps=3, guidance=2.0), SamplingSettings(steps=2, guidance=1.0, aug_level=0.1)]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return write_exports(tiny_stages(), tmp_path_factory.mktemp("exports"))


def test_cascade_shapes_and_intermediate_outputs():
    cascade = Cascade(tiny_stages(), SETTINGS)
    outputs = cascade.generate([1, 2, 3], class_labels=[0, 1, 2], keep_intermediate=True)
    assert [tuple(o.shape) for o in outputs] == [(3, 3, 16, 16), (3, 3, 32, 32)]
    assert all(o.abs().max() <= 1 for o in outputs)
    assert len(cascade.generate([1], class_labels=[0])) == 1


def test_an_image_depends_on_its_seed_not_on_its_batch():
    cascade = Cascade(tiny_stages(), [SamplingSettings(sampler="ddpm", steps=3), SamplingSettings(sampler="ddim", steps=2, aug_level=0.3)])
    together = cascade.generate([10, 11, 12], class_labels=[0, 1, 2])[0]
    alone = cascade.generate([11], class_labels=[1])[0]
    torch.testing.assert_close(alone[0], together[1])
    different_seed = cascade.generate([99], class_labels=[1])[0]
    assert not torch.allclose(different_seed[0], together[1])


def test_text_cascade_encodes_prompts_once_and_uses_them():
    stages = tiny_stages(text=True)
    cascade = Cascade(stages, SETTINGS)
    calls = []
    original = stages[0].text_encoder.encode
    stages[0].text_encoder.encode = lambda prompts, device: calls.append(prompts) or original(prompts, device)
    red, blue = cascade.generate([5, 5], prompts=["a red circle", "two blue squares"])[0]
    assert len(calls) == 1, "prompts are encoded once for all stages sharing an encoder"
    assert not torch.allclose(red, blue)


def test_ready_made_conditions_give_the_images_prompts_give_and_each_stage_end_is_reported():
    stages = tiny_stages(text=True)
    cascade = Cascade(stages, SETTINGS)
    prompts = ["a red circle", "two blue squares"]
    tokens, mask = stages[0].text_encoder.encode(prompts, stages[0].device)
    conditions = [stage.make_condition(text_tokens=tokens, text_mask=mask) for stage in stages]
    ends = []
    from_conditions = cascade.generate([5, 6], conditions=conditions, keep_intermediate=True,
                                       on_stage_end=lambda index, images: ends.append((index, images)))
    from_prompts = cascade.generate([5, 6], prompts=prompts, keep_intermediate=True)
    for made, expected in zip(from_conditions, from_prompts):
        torch.testing.assert_close(made, expected, rtol=0, atol=0)
    assert [index for index, _ in ends] == [0, 1] and all(a is b for (_, a), b in zip(ends, from_conditions))
    with pytest.raises(ValueError, match="not several"):
        cascade.generate([5, 6], prompts=prompts, conditions=conditions)
    with pytest.raises(ValueError, match="2 conditions for 1 stages|1 conditions for 2 stages"):
        cascade.generate([5, 6], conditions=conditions[:1])


def test_cascade_rejects_mismatched_stages():
    base, sr = tiny_stages()
    with pytest.raises(ValueError, match="first stage"):
        Cascade([sr], SETTINGS[:1])
    with pytest.raises(ValueError, match="settings"):
        Cascade([base, sr], SETTINGS[:1])
    with pytest.raises(TypeError, match="SamplingSettings"):
        Cascade([base, sr], [{"steps": 2}, SETTINGS[1]])


def test_a_cascade_samples_with_each_stages_own_settings_unless_given_others():
    own = (SamplingSettings("ddim", 3, 2.0, 0.9), SamplingSettings(steps=2, aug_level=0.2))
    cascade = Cascade(tiny_stages(sampling=own))
    assert cascade.settings == list(own)
    assert cascade.updated(None, aug_level=0.1).settings == [own[0], own[1].updated(aug_level=0.1)]  # SR only
    with pytest.raises(StageConfigError, match="sampling.steps"):
        cascade.updated(1, steps=0)


@pytest.fixture(scope="module")
def weaker_base(tmp_path_factory):
    """A guide for the base stage of `exports`: the same kind of stage with other (random) weights."""
    base = randomise_output_layers(tiny_stages()[0], 7)
    return write_exports([base], tmp_path_factory.mktemp("guide"))[0]


def test_a_cascade_with_a_guide_samples_end_to_end_and_the_stage_as_its_own_guide_changes_nothing(exports,
                                                                                                weaker_base):
    guided = Cascade.from_paths(exports, [SETTINGS[0].updated(guide=weaker_base), SETTINGS[1]])
    assert isinstance(guided.guide_of(0), BaseStage) and guided.guide_of(1) is None
    seeds, labels = [1, 2], [0, 2]
    with_guide = guided.generate(seeds, class_labels=labels, keep_intermediate=True)
    assert [tuple(o.shape) for o in with_guide] == [(2, 3, 16, 16), (2, 3, 32, 32)]
    plain = guided.updated(0, guide=None)
    cfg = plain.generate(seeds, class_labels=labels)[0]
    assert not torch.allclose(with_guide[-1], cfg)
    # the base export as its own guide: D_main + w (D_main - D_main) = D_main, the guidance-1 images
    itself = guided.updated(0, guide=exports[0]).generate(seeds, class_labels=labels)[0]
    assert torch.equal(itself, plain.updated(0, guidance=1.0).generate(seeds, class_labels=labels)[0])
    assert set(guided.guides) == {weaker_base, exports[0]}, "copies share the guides loaded once per path"


def test_a_cascade_refuses_a_guide_of_another_stage_naming_sampling_guide_and_what_differs(exports, tmp_path):
    cascade = Cascade.from_paths(exports)
    with pytest.raises(StageConfigError) as raised:
        cascade.updated(0, guide=exports[1])
    message = str(raised.value)
    assert message.startswith(f"sampling.guide: stage 0: {exports[1]}: the guide differs from the stage it guides in")
    assert "stage kind 'SuperResStage'" in message and "image_size 32" in message and "\n" not in message
    text_base = write_exports(tiny_stages(text=True)[:1], tmp_path)[0]
    with pytest.raises(StageConfigError, match="^sampling.guide: stage 0: .*conditioning 'text'.*text_encoder"):
        cascade.updated(0, guide=text_base)
    with pytest.raises(StageConfigError, match="^sampling.guide: stage 1: cannot load"):
        cascade.updated(1, guide=str(tmp_path / "missing"))


def test_a_stage_whose_own_settings_name_a_guide_is_guided_by_it(weaker_base, tmp_path):
    stages = tiny_stages(sampling=(SamplingSettings(steps=2, guidance=2.0, guidance_interval=(-3.0, 3.0),
                                                    guide=weaker_base), SamplingSettings(steps=2)))
    exports = write_exports(stages, tmp_path)
    cascade = Cascade.from_paths(exports)
    assert cascade.settings[0].guide == weaker_base and cascade.settings[0].guidance_interval == (-3.0, 3.0)
    assert cascade.guide_of(0) is cascade.guides[weaker_base]
    assert cascade.generate([3], class_labels=[1])[0].shape == (1, 3, 32, 32)


def test_sample_takes_a_guide_and_a_guidance_interval_per_stage_and_sweeps_the_guide(exports, weaker_base, tmp_path):
    run_sample(exports, tmp_path / "flags", "--guidance", "2,1", "--guide", f"{weaker_base},off",
               "--guidance-interval=-3:3,off")
    base, sr = read_lines(tmp_path / "flags")[0]["stages"]
    assert (base["guide"], base["guidance_interval"], sr["guide"], sr["guidance_interval"]) == (
        weaker_base, [-3.0, 3.0], None, None)
    run_sample(exports, tmp_path / "sweep", "--guidance", "2,1", "--sweep", f"base.guide={weaker_base},off",
               "--batch-size", "1")
    guided_folder = f"base.guide={weaker_base.strip('/').replace('/', '_')}"  # a folder name holds no path
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == sorted(["base.guide=None", guided_folder])
    assert read_lines(tmp_path / "sweep" / "base.guide=None")[0]["stages"][0]["guide"] is None
    cascade = Cascade.from_paths(exports).updated(None, steps=2).updated(0, guidance=2.0, guide=weaker_base)
    for line in read_lines(tmp_path / "sweep" / guided_folder)[:2]:  # the images the guided cascade makes
        assert line["stages"][0]["guide"] == weaker_base
        (images,) = cascade.generate([line["seed"]], class_labels=[line["class_label"]])
        assert png_bytes(images[0]) == (tmp_path / "sweep" / guided_folder / line["file"]).read_bytes()


def run_sample(exports, out, *extra):
    argv = ["--stages", *exports, "--classes", "0,1,2", "--n-per-condition", "2", "--out", str(out),
            "--steps", "2", "--batch-size", "2", "--no-progress", *extra]
    assert sample_main(argv) == 0


def read_lines(folder):
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


def test_sample_writes_images_metadata_and_rerun_reproduces(exports, tmp_path):
    run_sample(exports, tmp_path / "a", "--guidance", "2,1", "--keep-intermediate")
    lines = read_lines(tmp_path / "a")
    assert len(lines) == 6 and len({line["file"] for line in lines}) == 6
    first = lines[0]
    assert first["class_label"] == 0 and len(first["stages"]) == 2 and first["stages"][0]["guidance"] == 2.0
    assert first["stages"][0]["sha256"] and first["stages"][1]["aug_level"] == 0.0
    assert len(list((tmp_path / "a" / "intermediate" / "stage0_16px").glob("*.png"))) == 6
    # A rerun reproduces every file byte for byte.
    run_sample(exports, tmp_path / "b", "--guidance", "2,1")
    for line in lines:
        assert (tmp_path / "a" / line["file"]).read_bytes() == (tmp_path / "b" / line["file"]).read_bytes()
    # Another batch size gives the same images: each depends only on its seed, up to the float
    # rounding of batch-size-dependent CPU kernels (at most one level of 255 in a pixel).
    run_sample(exports, tmp_path / "c", "--guidance", "2,1", "--batch-size", "4")
    for line in lines:
        a, c = (np.asarray(Image.open(tmp_path / run / line["file"]), dtype=np.int16) for run in ("a", "c"))
        assert np.abs(a - c).max() <= 1, line["file"]


def test_sample_writes_the_images_cascade_generate_makes(exports, tmp_path):
    run_sample(exports, tmp_path, "--guidance", "2,1", "--aug-level", "0.1", "--batch-size", "1")
    cascade = Cascade.from_paths(exports).updated(None, steps=2, aug_level=0.1).updated(0, guidance=2.0)
    lines = read_lines(tmp_path)
    assert [stage["guidance"] for stage in lines[0]["stages"]] == [2.0, 1.0]
    for line in lines:
        (images,) = cascade.generate([line["seed"]], class_labels=[line["class_label"]])
        assert png_bytes(images[0]) == (tmp_path / line["file"]).read_bytes(), line["file"]


def test_sample_keeps_each_stages_own_settings_unless_a_flag_changes_them(tmp_path):
    own = (SamplingSettings("ddim", 2, 2.0, 0.9), SamplingSettings("ddpm", 2, 1.0, None, 0.2))
    exports = write_exports(tiny_stages(sampling=own), tmp_path / "exports")
    argv = ["--stages", *exports, "--classes", "0", "--out", str(tmp_path / "out"), "--no-progress"]
    assert sample_main([*argv, "--guidance", "3"]) == 0
    base, sr = read_lines(tmp_path / "out")[0]["stages"]
    assert {key: base[key] for key in own[0].to_dict()} == own[0].updated(guidance=3.0).to_dict()
    assert {key: sr[key] for key in own[1].to_dict()} == own[1].updated(guidance=3.0).to_dict()


def test_sweep_writes_one_folder_per_setting(exports, tmp_path):
    run_sample(exports, tmp_path, "--sweep", "guidance=1,3", "--sweep", "aug_level=0,0.2")
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == ["guidance=1.0,aug_level=0.0", "guidance=1.0,aug_level=0.2",
                       "guidance=3.0,aug_level=0.0", "guidance=3.0,aug_level=0.2"]
    line = read_lines(tmp_path / folders[-1])[0]
    assert line["stages"][0]["guidance"] == 3.0 and line["stages"][0]["aug_level"] == 0.0
    assert line["stages"][1]["aug_level"] == 0.2


@pytest.mark.parametrize("argv, message", [
    (["--steps", "1,2,3"], "--steps"),
    (["--sweep", "cfg=1,2"], "--sweep"),
    (["--batch-size", "0"], "--batch-size"),
    (["--steps", "0"], "--steps: stage 0: must be an integer >= 1, got 0"),
    (["--dynamic-threshold", "off,1.5"], "--dynamic-threshold: stage 1: must be a percentile"),
    (["--sweep", "guidance=1,-1"], "--sweep guidance=-1.0: must be a number >= 0"),
    (["--guidance", "5,1", "--sweep", "guidance=1,3"], "--sweep 'guidance=1,3': --guidance also sets guidance"),
    (["--aug-level", "0.1", "--sweep", "aug_level=0,0.2"], "--sweep 'aug_level=0,0.2': --aug-level also sets aug_level"),
    (["--sweep", "sr2.guidance=1,3"], "--sweep 'sr2.guidance=1,3': the cascade has no stage 'sr2' (its 2 stages: base, sr1)"),
    (["--sweep", "base.aug_level=0,0.1"], "--sweep 'base.aug_level=0,0.1': the base stage has no noise-augmentation level"),
    (["--sweep", "guidance=1,3", "--sweep", "0.guidance=2"], "--sweep '0.guidance=2': --sweep guidance=... already sweeps"),
])
def test_bad_arguments_name_the_flag(exports, tmp_path, capsys, argv, message):
    code = sample_main(["--stages", *exports, "--classes", "0", "--out", str(tmp_path), "--no-progress", *argv])
    assert code == 2
    assert message in capsys.readouterr().err


def test_a_sweep_key_naming_a_stage_changes_that_stage_only_and_the_flags_set_the_others(exports, tmp_path):
    run_sample(exports, tmp_path, "--guidance", "5,2", "--sweep", "base.guidance=1,3", "--sweep", "1.aug_level=0.2")
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == ["base.guidance=1.0,sr1.aug_level=0.2", "base.guidance=3.0,sr1.aug_level=0.2"]
    for folder, base_guidance in zip(folders, (1.0, 3.0)):
        base, sr = read_lines(tmp_path / folder)[0]["stages"]
        assert (base["guidance"], sr["guidance"], sr["aug_level"]) == (base_guidance, 2.0, 0.2)
    sets = discover_sample_sets(tmp_path)  # the evaluation finds and reads the stage-named settings
    assert [s.setting for s in sets] == [{"base.guidance": 1.0, "sr1.aug_level": 0.2},
                                         {"base.guidance": 3.0, "sr1.aug_level": 0.2}]


def _fail_if_loaded(path, device="cpu"):
    pytest.fail(f"a checkpoint was loaded ({path}) before the command line was checked")


def test_stage_shapes_are_read_through_the_export_reader(tmp_path):
    """StageShape.read takes what `load_stage` takes (an export or a .ckpt) and refuses what it
    refuses (an export of another format version, a checkpoint without a cascade stage)."""
    import yaml

    from cascade.pipeline import StageShape

    stages = tiny_stages()
    exports = write_exports(stages, tmp_path)
    checkpoint = tmp_path / "sr.ckpt"
    torch.save({"cascade_stage": stages[1].stage_config(), "state_dict": stages[1].state_dict()}, checkpoint)
    assert StageShape.read(exports[0]) == StageShape(exports[0], False, 16, None)
    assert StageShape.read(checkpoint) == StageShape(str(checkpoint), True, 32, 16)
    config = tmp_path / "stage0" / "config.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "format_version": 2}))
    with pytest.raises(ValueError, match="config.yaml: unsupported format_version 2"):
        StageShape.read(exports[0])
    torch.save({"state_dict": {}}, checkpoint)
    with pytest.raises(ValueError, match="sr.ckpt was not written by a cascade stage"):
        StageShape.read(checkpoint)


def test_settings_and_the_stage_order_are_checked_before_any_checkpoint_is_loaded(exports, tmp_path, capsys,
                                                                                   monkeypatch):
    import cascade.pipeline

    base, sr = exports
    sr_checkpoint = tmp_path / "sr.ckpt"
    sr_stage = tiny_stages()[1]
    torch.save({"cascade_stage": sr_stage.stage_config(), "state_dict": sr_stage.state_dict()}, sr_checkpoint)
    not_a_stage = tmp_path / "notes.txt"
    not_a_stage.write_text("not a checkpoint\n")
    monkeypatch.setattr(cascade.pipeline, "load_stage", _fail_if_loaded)
    for stages, extra, message in [
        ([str(sr_checkpoint), base], [], f"--stages: the first stage must be a base stage, but stage 0 ({sr_checkpoint})"),
        ([base, base], [], f"--stages: stage 1 ({base}) is a base stage; every stage after the first must be"),
        ([base, sr, sr], [], f"--stages: stage 2 ({sr}) takes 16x16 inputs but stage 1 ({sr}) makes 32x32 images"),
        ([base, str(not_a_stage)], [], f"--stages: {not_a_stage}: cannot be read as a cascade stage"),
        ([base, sr], ["--sampler", "ddim,euler"], "--sampler: stage 1: must be one of"),
        ([base, sr], ["--sweep", "sampler=ddim,euler"], "--sweep sampler=euler: must be one of"),
        ([base, sr], ["--guide", str(tmp_path / "missing")], f"--guide: {tmp_path / 'missing'} does not exist"),
        ([base, sr], ["--guidance-interval=3:-3"], "--guidance-interval: stage 0: must be [lambda_lo, lambda_hi]"),
        ([base, sr], ["--guidance-interval", "wide"], "--guidance-interval: cannot read 'wide'"),
    ]:
        code = sample_main(["--stages", *stages, "--classes", "0", "--out", str(tmp_path / "out"), "--no-progress",
                            *extra])
        error = capsys.readouterr().err.strip()
        assert code == 2 and message in error and len(error.splitlines()) == 1, error


def sample_command(exports, out, extra_env=None):
    command = [sys.executable, "-m", "cascade", "sample", "--stages", *exports, "--classes", "0,1,2,0,1,2",
               "--n-per-condition", "3", "--out", str(out), "--steps", "2", "--batch-size", "1", "--no-progress"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(extra_env or {})}
    for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        environment.pop(key, None)
    environment.update(extra_env or {})
    return command, environment


@pytest.mark.slow
def test_sample_resumes_after_a_kill_without_duplicates(exports, tmp_path):
    command, environment = sample_command(exports, tmp_path)
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("*.json"))) < 3 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    partial = {p.name for p in tmp_path.glob("*.json")}
    assert 3 <= len(partial) < 18, "the kill should land mid-run"
    before = {name: (tmp_path / name.replace(".json", ".png")).read_bytes() for name in partial}
    subprocess.run(command, env=environment, check=True, timeout=300, capture_output=True)
    lines = read_lines(tmp_path)
    assert sorted(line["file"] for line in lines) == sorted({line["file"] for line in lines})
    assert len(lines) == 18
    for name, png in before.items():
        assert (tmp_path / name.replace(".json", ".png")).read_bytes() == png, "finished images are kept"
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.slow
def test_two_ranks_split_the_work_with_no_overlap_and_no_gaps(exports, tmp_path):
    processes = []
    for rank in range(2):
        command, environment = sample_command(exports, tmp_path, {
            "RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29631",
        })
        processes.append(subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outputs = [process.communicate(timeout=300)[0].decode() for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    lines = read_lines(tmp_path)
    assert len(lines) == 18 and len({line["file"] for line in lines}) == 18
    assert "wrote 9 images" in outputs[0] and "wrote 9 images" in outputs[1]


def test_local_ranks_split_every_folder_and_draw_the_images_one_process_draws(exports, tmp_path, one_torch_thread):
    """Two one-thread processes fill a folder between them with the images (and metadata) that this
    process draws alone, up to the rounding of batch-size-dependent CPU kernels; a rerun writes nothing."""
    from cascade.files.sample_folder import merge_metadata
    from cascade.pipeline.to_folder import FolderJob, LocalRanks, sample_folder

    cascade = Cascade.from_paths(exports, SETTINGS)
    conditions = [(label, None) for label in (0, 1, 2)]
    job = FolderJob(n_per_condition=2, batch_size=4, progress=False)
    sample_folder(cascade, conditions, job, tmp_path / "one", console=None)
    with LocalRanks(2) as ranks:
        assert ranks.fill(cascade, conditions, job, tmp_path / "two") == 6
        assert ranks.fill(cascade, conditions, job, tmp_path / "two") == 0
    for folder in ("one", "two"):
        merge_metadata(tmp_path / folder)
    one, two = read_lines(tmp_path / "one"), read_lines(tmp_path / "two")
    assert one == two and len(one) == 6
    for line in one:
        a, b = (np.asarray(Image.open(tmp_path / run / line["file"]), dtype=np.int16) for run in ("one", "two"))
        assert np.abs(a - b).max() <= 1, line["file"]


def test_a_folder_sampled_with_other_settings_or_weights_is_not_resumed(exports, tmp_path):
    """Resuming would mix images of two settings in one folder: refused, naming the folder, the stage
    and the key, before anything is written; the same settings resume."""
    from cascade.pipeline.to_folder import FolderJob, sample_folder

    cascade = Cascade.from_paths(exports, SETTINGS)
    conditions = [(label, None) for label in (0, 1)]
    sample_folder(cascade, conditions, FolderJob(n_per_condition=1, batch_size=4, progress=False), tmp_path,
                  console=None)
    more = FolderJob(n_per_condition=2, batch_size=4, progress=False)
    before = sorted(path.name for path in tmp_path.iterdir())
    for changed in (cascade.updated(0, guidance=SETTINGS[0].guidance + 1.0),
                    cascade.updated(0, guidance_interval=(-2.0, 2.0))):
        with pytest.raises(ValueError, match=r"stage 0 guidance(_interval)?=.*another folder"):
            sample_folder(changed, conditions, more, tmp_path, console=None)
        assert sorted(path.name for path in tmp_path.iterdir()) == before
    assert sample_folder(cascade, conditions, more, tmp_path, console=None) == 2


def test_local_ranks_refuse_zero_processes():
    from cascade.pipeline.to_folder import LocalRanks

    with pytest.raises(ValueError, match="processes must be >= 1"):
        LocalRanks(0)


def test_negative_prompts_guide_each_image_away_from_its_own_and_none_is_plain_guidance():
    """Each image's negative prompt takes its unconditional prediction's place in the guided stage
    (the base here; the SR stage samples unguided): an image without one, or a batch given none, is
    the plain classifier-free-guided image, an image with one depends on it and on nothing else."""
    cascade = Cascade(tiny_stages(text=True), SETTINGS)
    prompts = ["a red circle", "two blue squares"]
    plain = cascade.generate([5, 6], prompts=prompts)[0]
    torch.testing.assert_close(cascade.generate([5, 6], prompts=prompts, negative_prompts=[None, None])[0], plain)
    negative = cascade.generate([5, 6], prompts=prompts, negative_prompts=["a blue circle", None])[0]
    torch.testing.assert_close(negative[1], plain[1], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(negative[0], plain[0], atol=1e-3)
    alone = cascade.generate([5], prompts=prompts[:1], negative_prompts=["a blue circle"])[0]
    torch.testing.assert_close(alone[0], negative[0], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="1 negative prompts for 2 seeds"):
        cascade.generate([5, 6], prompts=prompts, negative_prompts=["a blue circle"])


def test_sample_reads_negative_prompts_from_the_prompt_file_and_records_them(tmp_path):
    exports = write_exports(tiny_stages(text=True), tmp_path / "exports")
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,negative_prompt\na red circle,a blue circle\ntwo blue squares,\n", encoding="utf-8")
    argv = ["--stages", *exports, "--prompts", str(prompts), "--out", str(tmp_path / "out"), "--steps", "2",
            "--guidance", "2,1", "--batch-size", "2", "--no-progress"]
    assert sample_main(argv) == 0
    lines = read_lines(tmp_path / "out")
    assert [line.get("negative_prompt") for line in lines] == ["a blue circle", None]
    cascade = Cascade.from_paths(exports).updated(None, steps=2).updated(0, guidance=2.0)
    (images,) = cascade.generate([lines[0]["seed"]], prompts=["a red circle"], negative_prompts=["a blue circle"])
    alone = np.asarray(Image.open(io.BytesIO(png_bytes(images[0]))), dtype=np.int16)
    written = np.asarray(Image.open(tmp_path / "out" / lines[0]["file"]), dtype=np.int16)
    assert np.abs(alone - written).max() <= 1  # alone vs in a batch of 2: CPU kernels round otherwise
