"""`cascade sr-check`: the SR stage's x0 error per noise level against closed forms."""

from __future__ import annotations

import pytest
import torch

from cascade.cli.sr_check import read_setting
from cascade.demo.sr_check import high_frequency_energy, real_pairs, sampling_errors, x0_errors
from cascade.stages import SamplingSettings, SuperResStage

pytestmark = pytest.mark.usefixtures("one_torch_thread")

UNET = {"image_size": 16, "base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
        "attention_resolutions": [], "norm_groups": 4, "lowres_channels": 3, "use_aug_cond": True}  # fmt: skip


def test_the_noisy_input_error_is_sigma_edm_squared_and_the_upsampled_error_is_the_upsampling_error():
    stage = SuperResStage(unet=UNET, image_size=16, lowres_size=8, conditioning="none")
    scenes, x0, lowres = real_pairs(stage, 6)
    assert x0.shape == (6, 3, 16, 16) and lowres.shape == (6, 3, 8, 8)
    rows = x0_errors(stage, scenes, x0, lowres, log_snrs=(4.0, 0.0))
    upsampled = float(((stage.upsample_lowres(lowres) - x0) ** 2).mean())
    for row in rows:
        # x_t / alpha - x0 = sigma_edm eps, eps ~ N(0, I): the mean square is sigma_edm^2
        assert row["noisy input"] == pytest.approx(row["sigma_edm"] ** 2, rel=0.05)
        assert row["upsampled low-res"] == pytest.approx(upsampled)
        assert row["model"] > 0


def test_high_frequency_energy_is_zero_for_flat_images_and_grows_with_added_noise():
    flat = torch.zeros(2, 3, 16, 16)
    assert high_frequency_energy(flat).tolist() == [0.0, 0.0]
    noisy = flat + 0.1 * torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    noisier = flat + 0.2 * torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert (high_frequency_energy(noisier) == pytest.approx(4 * high_frequency_energy(noisy), rel=1e-5))


def test_sampling_errors_score_each_setting_from_the_real_low_res_input():
    stage = SuperResStage(unet=UNET, image_size=16, lowres_size=8, conditioning="none")
    scenes, x0, lowres = real_pairs(stage, 2)
    rows = sampling_errors(stage, scenes, x0, lowres, [SamplingSettings(steps=2),
                                                       SamplingSettings(steps=2, start_log_snr=6.0)])
    assert [row["start_log_snr"] for row in rows] == [None, 6.0]
    assert all(row["mse"] > 0 and row["high-frequency ratio"] > 0 for row in rows)


def test_settings_are_read_as_cascade_sample_reads_them_and_bad_keys_are_named():
    assert read_setting("steps=5,start-log-snr=6,time_grid=off") == {"steps": 5, "start_log_snr": 6.0,
                                                                     "time_grid": None}
    with pytest.raises(ValueError, match="'colour=red'"):
        read_setting("steps=5,colour=red")
