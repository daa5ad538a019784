"""SuperResStage: noise-conditioning augmentation in training, the aug level at sampling,
blur augmentation, and crop training with full-size sampling (a real Trainer run)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cascade.diffusion import alpha_from_log_snr, sigma_from_log_snr
from cascade.stages import SamplingSettings, SuperResStage, load_stage
from cascade.cli.stage import fit as fit_main
from cascade.stages.super_res import BlurConfig, blur_randomly

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:You are trying to `self.log"),  # training_step outside a Trainer
]

UNET = {"image_size": 16, "base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
        "attention_resolutions": [], "norm_groups": 4, "lowres_channels": 3, "use_aug_cond": True}  # fmt: skip


def sr_stage(**kwargs) -> SuperResStage:
    return SuperResStage(unet=UNET, image_size=16, lowres_size=8, **kwargs)


def record_unet_inputs(stage) -> list[dict]:
    calls = []
    forward = stage.unet.forward

    def recording_forward(x_t, noise_cond, **kwargs):
        calls.append(kwargs)
        return forward(x_t, noise_cond, **kwargs)

    stage.unet.forward = recording_forward
    return calls


def sr_batch(size: int = 64) -> dict:
    torch.manual_seed(0)
    image = torch.rand(size, 3, 16, 16) * 2 - 1
    return {"image": image, "lowres": F.avg_pool2d(image, 2)}


def test_training_noises_the_upsampled_lowres_to_a_random_level():
    stage = sr_stage(aug_max_level=0.5)
    calls = record_unet_inputs(stage)
    batch = sr_batch()
    stage.training_step(batch, 0)
    inputs = calls[0]
    levels = inputs["aug_cond"] / 1000  # noise_cond "t1000": the level in schedule time
    assert levels.min() >= 0 and levels.max() <= 0.5 and levels.std() > 0.1

    clean = stage.upsample_lowres(batch["lowres"])
    log_snr = stage.schedule.log_snr(levels)
    alpha, sigma = alpha_from_log_snr(log_snr), sigma_from_log_snr(log_snr)
    implied_noise = (inputs["lowres"] - alpha[:, None, None, None] * clean) / sigma[:, None, None, None]
    noisy_rows = levels > 0.1
    assert abs(implied_noise[noisy_rows].std().item() - 1.0) < 0.05  # x_s = alpha_s lowres + sigma_s eps

    stage_without_aug = sr_stage(aug_max_level=0.0)
    calls = record_unet_inputs(stage_without_aug)
    stage_without_aug.training_step(batch, 0)
    torch.testing.assert_close(calls[0]["lowres"], clean, atol=1e-3, rtol=0)
    assert (calls[0]["aug_cond"] == 0).all()


def test_sampling_uses_the_aug_level_setting():
    stage = sr_stage(sampling={"steps": 2, "aug_level": 0.2}).eval()
    calls = record_unet_inputs(stage)
    lowres = sr_batch(2)["lowres"]
    stage.generate(lowres=lowres)
    assert torch.allclose(calls[-1]["aug_cond"], torch.full((2,), 200.0))  # the stage's default

    calls.clear()
    stage.generate(lowres=lowres, settings=stage.sampling.updated(aug_level=0.0))
    assert (calls[-1]["aug_cond"] == 0).all()
    torch.testing.assert_close(calls[-1]["lowres"], stage.upsample_lowres(lowres), atol=1e-3, rtol=0)

    calls.clear()
    generator = torch.Generator().manual_seed(0)
    stage.make_denoiser(stage.make_condition(), lowres=lowres, aug_level=0.7, generator=generator)(
        torch.randn(2, 3, 16, 16), torch.full((2,), 0.5)
    )
    assert torch.allclose(calls[-1]["aug_cond"], torch.full((2,), 700.0))
    assert (calls[-1]["lowres"] - stage.upsample_lowres(lowres)).abs().mean() > 0.3


def test_blur_augmentation():
    images = torch.rand(6, 3, 8, 8)
    always = blur_randomly(images, BlurConfig(probability=1.0), torch.Generator().manual_seed(0))
    never = blur_randomly(images, BlurConfig(probability=0.0), None)
    assert always.shape == images.shape and torch.equal(never, images)
    assert (always - images).abs().mean() > 0.01
    torch.testing.assert_close(always.mean(dim=(2, 3)), images.mean(dim=(2, 3)), atol=0.02, rtol=0)


def test_lowres_size_must_divide_image_size():
    with pytest.raises(ValueError, match="lowres_size"):
        SuperResStage(unet=UNET, image_size=16, lowres_size=6)


def test_trains_on_crops_and_samples_at_full_size(write_stage_config, tmp_path):
    # 32x32 images with 16x16 low-res inputs, trained on 16x16 crops (8x8 low-res crops).
    config, run_dir = write_stage_config(
        stage="sr", max_steps=3, val_every=3, image_size=32, lowres_size=16, blur={"probability": 0.5},
    )  # fmt: skip
    crops = ["--data.init_args.crop_size=16", "--data.init_args.random_crop=true"]  # the sizes follow the stage
    assert fit_main(["-c", str(config), *crops]) == 0

    stage = load_stage(run_dir / "checkpoints" / "last.ckpt")
    assert isinstance(stage, SuperResStage) and stage.blur.probability == 0.5
    lowres = torch.rand(2, 3, 16, 16) * 2 - 1
    images = stage.generate(lowres=lowres, settings=SamplingSettings(steps=2), generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 32, 32)
    assert images.abs().max() <= 1


def test_one_generator_per_row_makes_each_image_independent_of_its_batch():
    stage = sr_stage(sampling=SamplingSettings(sampler="ddpm", steps=2, aug_level=0.3)).eval()
    torch.manual_seed(0)
    for parameter in stage.unet.parameters():
        parameter.data.normal_(0, 0.1)
    lowres = sr_batch(3)["lowres"]

    def generators(seeds):
        return [torch.Generator().manual_seed(seed) for seed in seeds]

    together = stage.generate(lowres=lowres, generator=generators([7, 8, 9]))
    alone = stage.generate(lowres=lowres[1:2], generator=generators([8]))
    torch.testing.assert_close(together[1:2], alone, atol=1e-5, rtol=1e-5)


def test_sampling_started_at_a_log_snr_begins_from_the_noised_upsampled_lowres_and_spans_the_rest():
    """SDEdit (Meng et al. 2022): x_{t_s} = alpha_s up(lowres) + sigma_s eps at t_s = t(lambda_s);
    every step lies in [0, t_s], uniform in log-SNR from lambda_s on the log_snr grid."""
    from cascade.diffusion import time_grid

    stage = sr_stage(noise_cond="log_snr").eval()
    calls, forward = [], stage.unet.forward

    def recording_forward(x_t, noise_cond, **kwargs):
        calls.append({"x_t": x_t.clone(), "noise_cond": noise_cond.clone()})
        return forward(x_t, noise_cond, **kwargs)

    stage.unet.forward = recording_forward
    lowres = torch.rand(2, 3, 8, 8) * 2 - 1
    eps = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    start = 4.0
    settings = SamplingSettings("dpmpp_2m", 5, time_grid="log_snr", start_log_snr=start)
    stage.generate(lowres=lowres, settings=settings, x_T=eps.clone())
    assert len(calls) == 5
    log_snrs = torch.stack([call["noise_cond"][0] for call in calls])  # noise_cond log_snr: lambda(t_i)
    torch.testing.assert_close(log_snrs[0], torch.tensor(start), atol=1e-4, rtol=0)
    assert bool((log_snrs[1:] > log_snrs[:-1]).all())
    t_start = float(stage.schedule.t_from_log_snr(torch.tensor([start], dtype=torch.float64)))
    expected = stage.schedule.log_snr_unchecked(time_grid(stage.schedule, 5, "log_snr", t_start)[:-1].float())
    torch.testing.assert_close(log_snrs, expected)
    upsampled = stage.upsample_lowres(lowres)
    alpha, sigma = alpha_from_log_snr(torch.tensor(start)), sigma_from_log_snr(torch.tensor(start))
    torch.testing.assert_close(calls[0]["x_t"], alpha * upsampled + sigma * eps, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("value", "message"), [(100.0, "log_snr must lie in"), (float("nan"), "finite log-SNR"),
                                                ("high", "finite log-SNR")])
def test_a_start_log_snr_outside_the_schedule_is_refused_naming_the_key(value, message):
    from cascade.stages import StageConfigError

    stage = sr_stage().eval()
    with pytest.raises(StageConfigError, match=f"sampling.start_log_snr: .*{message}"):
        stage.generate(lowres=torch.zeros(1, 3, 8, 8), settings=SamplingSettings(steps=2).updated(start_log_snr=value))
