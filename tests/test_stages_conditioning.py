"""CFG dropout, the guided denoiser (one batched forward pass), the frozen text encoder."""

from __future__ import annotations

import copy

import pytest
import torch

from cascade.diffusion import cfg_combine, predicted_x0
from cascade.stages import (
    BaseStage,
    Condition,
    SamplingSettings,
    StageConfigError,
    SuperResStage,
)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:You are trying to `self.log"),  # training_step outside a Trainer
]

UNET = {"image_size": 16, "base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
        "attention_resolutions": [8], "norm_groups": 4}  # fmt: skip


def class_stage(**kwargs) -> BaseStage:
    return BaseStage(unet={**UNET, "num_classes": 5}, image_size=16, conditioning="class", **kwargs)


def text_stage(**kwargs) -> BaseStage:
    unet = {**UNET, "text_dim": 12, "cross_attention_resolutions": [8]}
    return BaseStage(unet=unet, image_size=16, conditioning="text", text_encoder={"kind": "minilm"}, **kwargs)


def batch_for(stage: BaseStage, size: int = 4) -> dict:
    batch = {"image": torch.rand(size, 3, 16, 16) * 2 - 1, "class_label": torch.arange(size) % 5}
    if stage.conditioning == "text":
        batch["text_tokens"] = torch.randn(size, 6, 12)
        batch["text_mask"] = torch.arange(6)[None].expand(size, 6) < 4
    return batch


class RecordUNetCalls:
    """Wraps stage.unet.forward and keeps the inputs of every call (run=False: skip the network
    and return zeros)."""

    def __init__(self, stage, run: bool = True):
        self.calls: list[dict] = []
        forward = stage.unet.forward

        def recording_forward(x_t, noise_cond, **kwargs):
            self.calls.append({"x_t": x_t, "noise_cond": noise_cond, **kwargs})
            return forward(x_t, noise_cond, **kwargs) if run else torch.zeros_like(x_t)

        stage.unet.forward = recording_forward


def make_outputs_nonzero(stage):
    """The UNet's last conv starts at zero; give it weights so conditional and null outputs differ."""
    torch.manual_seed(0)
    for parameter in stage.unet.parameters():
        parameter.data.normal_(0, 0.2)


@pytest.mark.parametrize("make_stage", [class_stage, text_stage], ids=["class", "text"])
def test_whole_batch_nulled_still_gives_every_parameter_a_gradient(make_stage):
    stage = make_stage(p_uncond=1.0)
    calls = RecordUNetCalls(stage)
    loss = stage.training_step(batch_for(stage), 0)
    loss.backward()
    assert calls.calls[0]["null_cond"].all()
    missing = [name for name, p in stage.named_parameters() if p.grad is None]
    assert not missing, missing


def test_cfg_dropout_nulls_rows_at_rate_p_uncond():
    stage = class_stage(p_uncond=0.3)
    calls = RecordUNetCalls(stage, run=False)
    torch.manual_seed(0)
    for _ in range(50):
        stage.training_step(batch_for(stage, size=32), 0)
    rate = torch.cat([call["null_cond"] for call in calls.calls]).float().mean().item()
    assert abs(rate - 0.3) < 0.05


@pytest.mark.parametrize("make_stage", [class_stage, text_stage], ids=["class", "text"])
def test_guided_denoiser_runs_cond_and_null_rows_in_one_forward(make_stage):
    stage = make_stage().eval()
    make_outputs_nonzero(stage)
    batch = batch_for(stage, size=3)
    condition = stage.condition_from_batch(batch)
    x_t, t = torch.randn(3, 3, 16, 16), torch.full((3,), 0.6)

    calls = RecordUNetCalls(stage)
    guided = stage.make_denoiser(condition, guidance=4.0)(x_t, t)
    assert len(calls.calls) == 1
    call = calls.calls[0]
    assert call["x_t"].shape[0] == 6
    assert call["null_cond"].tolist() == [False] * 3 + [True] * 3

    with torch.no_grad():
        cond_out = stage(x_t, t, condition)
        null_out = stage(x_t, t, condition.with_null(torch.ones(3, dtype=torch.bool)))
    expected = cfg_combine(
        predicted_x0(cond_out, x_t, t, stage.schedule, stage.target),
        predicted_x0(null_out, x_t, t, stage.schedule, stage.target),
        4.0,
    ).clamp(-1, 1)
    torch.testing.assert_close(guided, expected, atol=1e-5, rtol=1e-4)

    calls.calls.clear()
    stage.make_denoiser(condition, guidance=1.0)(x_t, t)
    assert calls.calls[0]["x_t"].shape[0] == 3 and calls.calls[0]["null_cond"] is None


def test_dynamic_threshold_option_and_generate_shapes():
    stage = class_stage().eval()
    make_outputs_nonzero(stage)
    condition = stage.make_condition(class_labels=[0, 1])
    x_t, t = torch.randn(2, 3, 16, 16) * 3, torch.full((2,), 0.05)  # |x0_hat| well above 1
    static = stage.make_denoiser(condition, guidance=8.0)(x_t, t)
    dynamic = stage.make_denoiser(condition, guidance=8.0, dynamic_threshold=0.9)(x_t, t)
    assert static.abs().max() <= 1 and dynamic.abs().max() <= 1 and not torch.equal(static, dynamic)

    settings = SamplingSettings(guidance=3.0, steps=3)
    first = stage.generate(condition, settings=settings, generator=torch.Generator().manual_seed(1))
    again = stage.generate(condition, settings=settings, generator=torch.Generator().manual_seed(1))
    assert first.shape == (2, 3, 16, 16) and torch.equal(first, again)


def test_generate_with_progress_shows_the_sampler_steps_and_gives_the_same_images(capsys):
    stage = class_stage().eval()
    condition = stage.make_condition(class_labels=[0, 1])
    settings = stage.sampling.updated(sampler="ddim", steps=3)
    quiet = stage.generate(condition, settings=settings, generator=torch.Generator().manual_seed(1))
    shown = stage.generate(condition, settings=settings, generator=torch.Generator().manual_seed(1), progress=True)
    assert torch.equal(quiet, shown)
    shown_bar = capsys.readouterr().err
    assert "sampling (ddim)" in shown_bar and "/3" in shown_bar


def test_text_encoder_is_frozen_outside_the_state_dict_and_shared_by_copies():
    stage = text_stage()
    assert all(name.startswith("unet.") for name in stage.state_dict())
    assert copy.deepcopy(stage).text_encoder is stage.text_encoder  # the EMA copy holds no second encoder

    unet = {**UNET, "text_dim": 384, "cross_attention_resolutions": [8]}
    encoder = {"kind": "minilm", "max_length": 8}
    minilm_stage = BaseStage(unet=unet, image_size=16, conditioning="text", text_encoder=encoder)
    condition = minilm_stage.make_condition(prompts=["a red circle", "two blue squares"])
    assert condition.text_tokens.shape == (2, 8, 384) and condition.text_mask[:, 0].all()
    assert all(name.startswith("unet.") for name in minilm_stage.state_dict())
    assert not any(p.requires_grad for p in minilm_stage.text_encoder.encoder.parameters())
    # Captions in a batch go through the same encoder (and its cache) when no tokens are precomputed.
    from_batch = minilm_stage.condition_from_batch({"caption": ["a red circle", "two blue squares"]})
    torch.testing.assert_close(from_batch.text_tokens, condition.text_tokens)


def test_condition_helpers():
    condition = Condition(class_labels=torch.tensor([3, 4]))
    doubled = condition.with_null_rows()
    assert doubled.class_labels.tolist() == [3, 4, 3, 4] and doubled.null.tolist() == [False, False, True, True]
    assert Condition().unet_kwargs() == {}
    with pytest.raises(ValueError, match="needs a class or text condition"):
        Condition().with_null_rows()
    sr = SuperResStage(unet={**UNET, "lowres_channels": 3, "use_aug_cond": True}, image_size=16, lowres_size=8)
    assert sr.make_condition().is_empty


def rows_per_call(calls: RecordUNetCalls) -> list[int]:
    return [call["x_t"].shape[0] for call in calls.calls]


def test_guidance_interval_guides_exactly_the_steps_whose_log_snr_lies_in_it():
    """Kynkaenniemi et al. 2024: inside [lambda_lo, lambda_hi] a step runs the conditional and
    null rows (2B network evaluations); outside it only the B conditional rows (one pass)."""
    stage = class_stage().eval()
    make_outputs_nonzero(stage)
    condition = stage.make_condition(class_labels=[0, 1, 2])
    steps, interval = 10, (-2.0, 3.0)
    times = torch.linspace(1.0, 0.0, steps + 1)[:steps]  # the samplers' uniform grid
    inside = [(interval[0] <= value <= interval[1]) for value in stage.schedule.log_snr(times).tolist()]
    assert 0 < sum(inside) < steps, "the interval must cut the grid for this test to mean anything"
    calls = RecordUNetCalls(stage)
    stage.generate(condition, settings=SamplingSettings("ddim", steps, 3.0, guidance_interval=interval,
                                                         time_grid="uniform_t"),
                   generator=torch.Generator().manual_seed(0))
    assert rows_per_call(calls) == [6 if guided else 3 for guided in inside]
    torch.testing.assert_close(torch.stack([call["noise_cond"][0] for call in calls.calls]), 1000 * times)
    for call, guided in zip(calls.calls, inside):
        assert call["null_cond"] is None if not guided else call["null_cond"].tolist() == [False] * 3 + [True] * 3


def test_an_interval_covering_every_step_is_plain_cfg_and_one_covering_none_is_the_conditional_model():
    stage = class_stage().eval()
    make_outputs_nonzero(stage)
    condition = stage.make_condition(class_labels=[0, 1, 2])

    def images(**changes):
        settings = SamplingSettings("dpmpp_2m", 6, 3.0).updated(**changes)
        return stage.generate(condition, settings=settings, generator=torch.Generator().manual_seed(0))

    cfg = images()
    assert torch.equal(images(guidance_interval=(-100.0, 100.0)), cfg)
    assert torch.equal(images(guidance_interval=(50.0, 60.0)), images(guidance=1.0))
    assert not torch.equal(images(guidance=1.0), cfg)


def test_autoguidance_with_the_model_itself_as_guide_is_the_conditional_model():
    """D_guide + w (D_main - D_guide) with D_guide = D_main is D_main, whatever w."""
    stage = class_stage().eval()
    make_outputs_nonzero(stage)
    condition = stage.make_condition(class_labels=[0, 1, 2])
    settings = SamplingSettings("dpmpp_2m", 5, 1.0)
    plain = stage.generate(condition, settings=settings, generator=torch.Generator().manual_seed(0))
    for guidance in (0.0, 2.0, 7.5):
        guided = stage.generate(condition, settings=settings.updated(guidance=guidance, guide="itself"), guide=stage,
                                generator=torch.Generator().manual_seed(0))
        assert torch.equal(guided, plain), guidance


def test_autoguidance_is_the_guides_conditional_prediction_extrapolated_towards_the_main_models():
    """Karras et al. 2024, eq. 2, element-wise: clip(D_g(x|c) + w (D_m(x|c) - D_g(x|c))), one pass of
    each network per guided step, one of the main model outside the guidance interval."""
    main, guide = class_stage().eval(), class_stage(target="eps").eval()  # a different network and target
    make_outputs_nonzero(main)
    torch.manual_seed(1)
    for parameter in guide.unet.parameters():
        parameter.data.normal_(0, 0.2)
    condition = main.make_condition(class_labels=[0, 3])
    x_t, t = torch.randn(2, 3, 16, 16), torch.full((2,), 0.5)
    with torch.no_grad():
        main_x0 = predicted_x0(main(x_t, t, condition), x_t, t, main.schedule, "v")
        guide_x0 = predicted_x0(guide(x_t, t, condition), x_t, t, guide.schedule, "eps")
    main_calls, guide_calls = RecordUNetCalls(main), RecordUNetCalls(guide)
    denoised = main.make_denoiser(condition, guidance=2.5, guide=guide)(x_t, t)
    torch.testing.assert_close(denoised, (guide_x0 + 2.5 * (main_x0 - guide_x0)).clamp(-1, 1), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(denoised, main_x0.clamp(-1, 1))
    assert rows_per_call(main_calls) == [2] and rows_per_call(guide_calls) == [2]
    assert main_calls.calls[0]["null_cond"] is None and guide_calls.calls[0]["null_cond"] is None
    log_snr = main.schedule.log_snr(t)[0].item()
    outside = main.make_denoiser(condition, guidance=2.5, guide=guide,
                                 guidance_interval=(log_snr + 1, log_snr + 2))(x_t, t)
    torch.testing.assert_close(outside, main_x0.clamp(-1, 1), atol=1e-6, rtol=1e-5)
    assert rows_per_call(main_calls) == [2, 2] and rows_per_call(guide_calls) == [2]


def test_a_super_resolution_guide_receives_the_same_noised_lowres_input():
    unet = {**UNET, "lowres_channels": 3, "use_aug_cond": True}
    main = SuperResStage(unet=unet, image_size=16, lowres_size=8).eval()
    guide = SuperResStage(unet={**unet, "base_channels": 4}, image_size=16, lowres_size=8).eval()
    main_calls, guide_calls = RecordUNetCalls(main), RecordUNetCalls(guide)
    lowres = torch.rand(2, 3, 8, 8) * 2 - 1
    main.make_denoiser(Condition(), guidance=2.0, lowres=lowres, aug_level=0.3, guide=guide,
                       generator=torch.Generator().manual_seed(0))(torch.randn(2, 3, 16, 16), torch.full((2,), 0.4))
    (main_call,), (guide_call,) = main_calls.calls, guide_calls.calls
    assert torch.equal(main_call["lowres"], guide_call["lowres"]) and torch.equal(main_call["aug_cond"], guide_call["aug_cond"])


@pytest.mark.parametrize(
    ("guide", "difference"),
    [(lambda: text_stage(), "conditioning"),
     (lambda: BaseStage(unet={**UNET, "image_size": 8, "num_classes": 5}, image_size=8), "image_size"),
     (lambda: BaseStage(unet={**UNET, "num_classes": 7}, image_size=16), "unet.num_classes"),
     (lambda: class_stage(schedule={"name": "shifted_cosine", "params": {"shift": 0.5}}), "schedule"),
     (lambda: SuperResStage(unet={**UNET, "lowres_channels": 3, "use_aug_cond": True, "num_classes": 5},
                            image_size=16, lowres_size=8, conditioning="class"), "stage kind")],
)  # fmt: skip
def test_a_guide_of_another_kind_of_stage_is_refused_naming_sampling_guide_and_what_differs(guide, difference):
    stage = class_stage()
    with pytest.raises(StageConfigError) as raised:
        stage.make_denoiser(stage.make_condition(class_labels=[0]), guidance=2.0, guide=guide())
    message = str(raised.value)
    assert message.startswith("sampling.guide: the guide differs") and difference in message and "\n" not in message


def test_generate_with_a_guide_setting_needs_the_loaded_guide():
    stage = class_stage()
    with pytest.raises(StageConfigError, match="^sampling.guide: is 'runs/small': pass the loaded guide"):
        stage.generate(stage.make_condition(class_labels=[0]), settings=SamplingSettings(guide="runs/small"))


def test_a_text_encoder_layer_that_is_not_a_layer_number_is_refused_naming_the_key():
    unet = {**UNET, "text_dim": 12, "cross_attention_resolutions": [8]}
    for bad in (-1, 2.5, True):
        with pytest.raises(StageConfigError, match="text_encoder.layer"):
            BaseStage(unet=unet, image_size=16, conditioning="text", text_encoder={"kind": "minilm", "layer": bad})
    assert BaseStage(unet=unet, image_size=16, conditioning="text",
                     text_encoder={"kind": "minilm", "layer": 3}).text_encoder.config.layer == 3


def layout_stage(unet: dict | None = None, **kwargs) -> BaseStage:
    """A text stage with an 8-px layout map and its head; `unet` changes more of its UNet settings."""
    unet = {**UNET, "text_dim": 12, "cross_attention_resolutions": [8], "text_layout_resolution": 8,
            "text_layout_head": True, **(unet or {})}
    return BaseStage(unet=unet, image_size=16, conditioning="text", text_encoder={"kind": "minilm"}, **kwargs)


def test_the_layout_loss_is_the_mse_of_the_layout_image_to_the_target_averaged_to_its_resolution(monkeypatch):
    """`layout_loss_weight` w adds w * mean((layout_prediction - avgpool_r(x0))^2) to the denoising loss,
    on the rows of the batch as they are after CFG dropout (a null row's target is the image too)."""
    stage = layout_stage(layout_loss_weight=0.5, p_uncond=0.0)
    make_outputs_nonzero(stage)
    batch = batch_for(stage)
    monkeypatch.setattr(stage, "weighted_loss", lambda prediction, x0, *args: torch.zeros(x0.shape[0]))
    loss = stage.training_step(batch, 0)
    with torch.no_grad():
        painted = stage.unet.layout_prediction(batch["text_tokens"], batch["text_mask"], torch.zeros(4, dtype=torch.bool)).images
        x0 = batch["image"]
        averaged = (x0[..., 0::2, 0::2] + x0[..., 1::2, 0::2] + x0[..., 0::2, 1::2] + x0[..., 1::2, 1::2]) / 4
    assert painted.shape == (4, 3, 8, 8)
    torch.testing.assert_close(loss.detach(), 0.5 * ((painted - averaged) ** 2).mean())


def test_one_pass_of_the_text_path_gives_the_denoisers_output_and_the_layout_image():
    """`UNet(..., return_layout=True)` (what the layout loss trains with) equals the plain forward and
    `layout_prediction` run apart, with the rows' null flags, so the text path need run once per step."""
    stage = layout_stage(layout_loss_weight=1.0)
    make_outputs_nonzero(stage)
    batch = batch_for(stage)
    null = torch.tensor([False, True, False, True])
    x_t, noise_cond = torch.randn_like(batch["image"]), torch.rand(4)
    kwargs = dict(text_tokens=batch["text_tokens"], text_mask=batch["text_mask"], null_cond=null)
    with torch.no_grad():
        output, layout = stage.unet(x_t, noise_cond, **kwargs, return_layout=True)
        torch.testing.assert_close(output, stage.unet(x_t, noise_cond, **kwargs))
        torch.testing.assert_close(layout.images,
                                   stage.unet.layout_prediction(batch["text_tokens"], batch["text_mask"], null).images)
    with pytest.raises(ValueError, match="return_layout needs unet.text_layout_head"):
        headless = BaseStage(unet={**UNET, "text_dim": 12, "cross_attention_resolutions": [8], "text_layout_resolution": 8},
                             image_size=16, conditioning="text", text_encoder={"kind": "minilm"})
        headless.unet(x_t, noise_cond, **kwargs, return_layout=True)


def test_a_layout_stage_with_its_whole_batch_nulled_still_gives_every_parameter_a_gradient():
    stage = layout_stage(layout_loss_weight=1.0, p_uncond=1.0)
    stage.training_step(batch_for(stage), 0).backward()
    missing = [name for name, p in stage.named_parameters() if p.grad is None]
    assert not missing, missing


@pytest.mark.parametrize(
    "unet_head, weight, message",
    [
        (True, -1.0, "^layout_loss_weight: must be a finite number >= 0, got -1.0"),
        (True, float("nan"), "^layout_loss_weight: must be a finite number >= 0"),
        (False, 1.0, r"^layout_loss_weight: needs unet.text_layout_head: true"),
        (True, 0.0, r"^unet.text_layout_head: needs layout_loss_weight > 0"),
    ],
)
def test_a_bad_layout_loss_setting_is_refused_naming_its_key(unet_head, weight, message):
    unet = {**UNET, "text_dim": 12, "cross_attention_resolutions": [8], "text_layout_resolution": 8,
            "text_layout_head": unet_head}
    with pytest.raises(StageConfigError, match=message):
        BaseStage(unet=unet, image_size=16, conditioning="text", text_encoder={"kind": "minilm"},
                  layout_loss_weight=weight)


def test_layout_pretraining_fits_the_layout_path_alone_on_the_first_images():
    """`layout_pretraining`: Adam on the layout loss over the first `images` images of the batches
    (the rest are not read), moving the text conditioning, the layout map and its head and nothing
    else, and leaving no gradient behind for the denoiser's optimiser."""
    stage = layout_stage(layout_loss_weight=1.0,
                         layout_pretraining={"steps": 150, "batch_size": 8, "lr": 1e-2, "images": 8, "seed": 0})
    torch.manual_seed(0)
    batches = [batch_for(stage) for _ in range(2)] + [None]  # None: must not be read (8 images = 2 batches)
    images = torch.cat([b["image"] for b in batches[:2]])
    tokens = torch.cat([b["text_tokens"] for b in batches[:2]])
    masks = torch.cat([b["text_mask"] for b in batches[:2]])
    target = torch.nn.functional.adaptive_avg_pool2d(images, 8)

    def layout_loss() -> float:
        with torch.no_grad():
            return float(((stage.unet.layout_prediction(tokens, masks).images - target) ** 2).mean())

    before_loss = layout_loss()
    before = {name: p.detach().clone() for name, p in stage.unet.named_parameters()}
    stage.pretrain_layout(iter(batches))
    assert layout_loss() < 0.5 * before_loss
    path = ("text_conditioning.", "text_layout.", "layout_head.")
    moved = {name for name, p in stage.unet.named_parameters() if not torch.equal(p, before[name])}
    assert moved and all(name.startswith(path) for name in moved)
    assert any(name.startswith("text_layout.") for name in moved) and any(name.startswith("layout_head.") for name in moved)
    assert all(p.grad is None for p in stage.parameters())


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"steps": -1}, r"^layout_pretraining.steps: must be an int >= 0, got -1"),
        ({"steps": 10, "batch_size": 0}, r"^layout_pretraining.batch_size: must be an int >= 1, got 0"),
        ({"steps": 10, "lr": 0.0}, r"^layout_pretraining.lr: must be a finite number > 0, got 0.0"),
        ({"steps": 10, "images": 0}, r"^layout_pretraining.images: must be an int >= 1, got 0"),
    ],
)
def test_a_bad_layout_pretraining_setting_is_refused_naming_its_key(settings, message):
    with pytest.raises(StageConfigError, match=message):
        layout_stage(layout_loss_weight=1.0, layout_pretraining=settings)


def test_layout_pretraining_needs_the_layout_head():
    with pytest.raises(StageConfigError, match=r"^layout_pretraining.steps: needs unet.text_layout_head: true"):
        text_stage(layout_pretraining={"steps": 10})


@pytest.mark.parametrize("make_stage", [class_stage, text_stage], ids=["class", "text"])
def test_a_negative_condition_takes_the_unconditional_predictions_place_row_by_row(make_stage):
    """x0 = D(x|neg) + w (D(x|c) - D(x|neg)) in the one pass of 2B rows, element-wise; a row whose
    negative is null is plain classifier-free guidance."""
    stage = make_stage().eval()
    make_outputs_nonzero(stage)
    condition = stage.condition_from_batch(batch_for(stage, size=3))
    if make_stage is class_stage:
        negative = stage.make_condition(class_labels=[4, 2, 0])
    else:
        negative = stage.make_condition(text_tokens=torch.randn(3, 6, 12), text_mask=torch.arange(6)[None].expand(3, 6) < 5)
    negative.null = torch.tensor([False, True, False])
    x_t, t = torch.randn(3, 3, 16, 16), torch.full((3,), 0.6)
    with torch.no_grad():
        cond_x0 = predicted_x0(stage(x_t, t, condition), x_t, t, stage.schedule, stage.target)
        negative_x0 = predicted_x0(stage(x_t, t, negative), x_t, t, stage.schedule, stage.target)
    plain_cfg = stage.make_denoiser(condition, guidance=4.0)(x_t, t)
    calls = RecordUNetCalls(stage)
    guided = stage.make_denoiser(condition, guidance=4.0, negative=negative)(x_t, t)
    assert rows_per_call(calls) == [6] and calls.calls[0]["null_cond"].tolist() == [False] * 4 + [True, False]
    for row in (0, 2):
        torch.testing.assert_close(guided[row], cfg_combine(cond_x0, negative_x0, 4.0)[row].clamp(-1, 1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(guided[1], plain_cfg[1], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(guided[0], plain_cfg[0])
    only_negative = stage.make_denoiser(condition, guidance=0.0, negative=negative)(x_t, t)
    torch.testing.assert_close(only_negative[[0, 2]], negative_x0[[0, 2]].clamp(-1, 1), atol=1e-5, rtol=1e-4)


def test_negative_text_of_another_length_is_padded_with_masked_tokens_that_change_nothing():
    stage = text_stage().eval()
    make_outputs_nonzero(stage)
    condition = stage.condition_from_batch(batch_for(stage, size=2))
    tokens = torch.randn(2, 4, 12)
    short = stage.make_condition(text_tokens=tokens, text_mask=torch.ones(2, 4, dtype=torch.bool))
    padded = stage.make_condition(text_tokens=torch.cat([tokens, torch.randn(2, 5, 12)], dim=1),
                                  text_mask=torch.arange(9)[None].expand(2, 9) < 4)
    x_t, t = torch.randn(2, 3, 16, 16), torch.full((2,), 0.4)
    torch.testing.assert_close(stage.make_denoiser(condition, guidance=3.0, negative=short)(x_t, t),
                               stage.make_denoiser(condition, guidance=3.0, negative=padded)(x_t, t), atol=1e-6, rtol=1e-5)


def test_a_negative_condition_is_refused_with_a_guide_or_the_wrong_number_of_rows():
    stage = class_stage().eval()
    condition = stage.make_condition(class_labels=[0, 1])
    with pytest.raises(ValueError, match="negative condition and an autoguidance guide"):
        stage.make_denoiser(condition, guidance=2.0, guide=stage, negative=stage.make_condition(class_labels=[2, 3]))
    with pytest.raises(ValueError, match="3 rows for 2 conditions"):
        stage.make_denoiser(condition, guidance=2.0, negative=stage.make_condition(class_labels=[2, 3, 4]))


# ------------------------------------------------------------------ layout choices (`unet.text_layout_choices`)
def choices_stage(choices: int = 3, unet: dict | None = None, **kwargs) -> BaseStage:
    return layout_stage({"text_layout_choices": choices, **(unet or {})}, layout_loss_weight=1.0, **kwargs)


def test_relaxed_winner_takes_all_fits_each_choice_to_its_mode_and_the_classifier_to_the_modes_frequencies():
    """Fitted by `layout_loss` to a target that is layout A in 7 rows of 10 and layout B in 3, two
    choices converge to the stationary points of the relaxed winner-takes-all loss with eps = 0.05,
    c_A = (0.7 (1 - eps) A + 0.3 eps B) / (0.7 (1 - eps) + 0.3 eps) (and c_B alike), not to the
    mean 0.7 A + 0.3 B that one map fitted by squared error paints; the classifier's probabilities
    converge to the frequencies (0.7, 0.3)."""
    from cascade.nn.unet import LayoutPrediction, layout_loss

    torch.manual_seed(0)
    a, b = torch.randn(3, 8, 8), torch.randn(3, 8, 8)
    target = torch.stack([a] * 7 + [b] * 3)
    choices = torch.stack([0.8 * a + 0.2 * b, 0.2 * a + 0.8 * b]).requires_grad_()
    logits = torch.zeros(2, requires_grad=True)
    optimizer = torch.optim.Adam([choices, logits], lr=0.02)
    for step in range(3000):
        if step == 2000:  # Adam's last steps jitter by its lr: finish at a smaller one
            optimizer.param_groups[0]["lr"] = 1e-3
        loss = layout_loss(LayoutPrediction(choices[None].expand(10, -1, -1, -1, -1), logits[None].expand(10, -1)),
                           target, relaxation=0.05)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    eps = 0.05
    c_a = (0.7 * (1 - eps) * a + 0.3 * eps * b) / (0.7 * (1 - eps) + 0.3 * eps)
    c_b = (0.3 * (1 - eps) * b + 0.7 * eps * a) / (0.3 * (1 - eps) + 0.7 * eps)
    torch.testing.assert_close(choices.detach(), torch.stack([c_a, c_b]), atol=2e-3, rtol=0)
    torch.testing.assert_close(logits.detach().softmax(0), torch.tensor([0.7, 0.3]), atol=2e-3, rtol=0)
    one = layout_loss(LayoutPrediction(target), target)  # one choice: the plain mean squared error
    assert float(one) == 0.0 and torch.isclose(layout_loss(LayoutPrediction(torch.zeros_like(target)), target),
                                               (target ** 2).mean())


def test_gated_choices_fitted_to_two_layouts_of_one_caption_paint_each_layout_where_one_map_paints_their_mean():
    """`text_layout_choice_form: gates`: one caption's map m, two choices gating its cells (r^2 softmax over
    the cells, `TextLayout.choice_maps`) and a 1x1 painting head, fitted by `layout_loss` (eps = 0.05, the
    one map's own error included, as `UNet._paint` gives it) to a target that is layout A (objects side by side)
    in 7 rows of 10 and B (one above the other) in 3. The one map paints the mean 0.7 A + 0.3 B, as it
    would without choices, and the gates of its cells reach the stationary points of free choices,
    c_A = (0.7 (1 - eps) A + 0.3 eps B) / (0.7 (1 - eps) + 0.3 eps) and c_B alike; the classifier's
    probabilities converge to (0.7, 0.3)."""
    from cascade.nn.text_conditioning import TextLayout
    from cascade.nn.unet import LayoutPrediction, layout_loss, paint_choices

    torch.manual_seed(0)
    r, channels = 4, 8
    a, b = torch.zeros(1, r, r), torch.zeros(1, r, r)
    a[0, 1, 0] = a[0, 1, 3] = 1.0  # side by side
    b[0, 0, 1] = b[0, 3, 1] = 1.0  # one above the other
    target = torch.stack([a] * 7 + [b] * 3)
    layout = TextLayout(channels, channels, r, num_heads=1, choices=2, choice_form="gates")
    head = torch.nn.Conv2d(channels, 1, 1)
    one_map = torch.nn.Parameter(torch.randn(1, channels, r, r))
    logits = torch.zeros(2, requires_grad=True)
    optimizer = torch.optim.Adam([one_map, logits, *layout.choice_gates.parameters(), layout.choice_gate_logits,
                                  *head.parameters()], lr=0.02)
    for step in range(3000):
        if step == 2000:
            optimizer.param_groups[0]["lr"] = 1e-3
        images, one = paint_choices(head, layout, one_map), head(one_map)  # (1, 2, 1, r, r), (1, 1, r, r)
        loss = layout_loss(LayoutPrediction(images.expand(10, -1, -1, -1, -1), logits[None].expand(10, -1),
                                            one.expand(10, -1, -1, -1)), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        images, one = paint_choices(head, layout, one_map)[0], head(one_map)[0]
    torch.testing.assert_close(one, 0.7 * a + 0.3 * b, atol=1e-4, rtol=0)  # the one map: the mean
    k_a = int((images - a).square().flatten(1).mean(1).argmin())
    eps = 0.05
    c_a = (0.7 * (1 - eps) * a + 0.3 * eps * b) / (0.7 * (1 - eps) + 0.3 * eps)
    c_b = (0.3 * (1 - eps) * b + 0.7 * eps * a) / (0.3 * (1 - eps) + 0.7 * eps)
    torch.testing.assert_close(images[[k_a, 1 - k_a]], torch.stack([c_a, c_b]), atol=2e-3, rtol=0)
    probabilities = logits.detach().softmax(0)
    torch.testing.assert_close(probabilities[[k_a, 1 - k_a]], torch.tensor([0.7, 0.3]), atol=5e-3, rtol=0)


def test_a_gated_choice_scales_each_cells_whole_vector_by_a_gate_of_mean_one_over_the_cells():
    """Where, not what: every cell of a gated choice's map is its one-map vector times a gate g >= 0, the
    gates of a choice average 1 over the cells, and a row's own choice is that choice's map."""
    stage = choices_stage(3, unet={"text_layout_choice_form": "gates"})
    maps = torch.randn(2, stage.unet.config.embedding_channels, 8, 8)
    chosen = stage.unet.text_layout.choice_maps(maps)  # (B, K, C, r, r)
    gates = chosen.norm(dim=2) / maps.norm(dim=1)[:, None]
    torch.testing.assert_close(chosen, maps[:, None] * gates[:, :, None])  # parallel, same orientation
    torch.testing.assert_close(gates.mean(dim=(2, 3)), torch.ones(2, 3))
    assert gates.std() > 0.1  # the choices start apart
    torch.testing.assert_close(stage.unet.text_layout.choice_maps(maps, torch.tensor([2, 0])), chosen[[0, 1], [2, 0]])
    batch = batch_for(stage)
    painted = stage.unet.layout_prediction(batch["text_tokens"], batch["text_mask"])
    assert painted.images.shape == (4, 3, 3, 8, 8) and painted.caption_images.shape == (4, 3, 8, 8)  # the one map's


def test_the_gated_choices_classifier_learns_from_the_text_without_training_the_text_path():
    """Its cross-entropy reaches the classifier alone: with its gradient in the text path, a layout
    pre-training did not learn the side of "A left of B" (docs/benchmarks.md, "Gated layout choices")."""
    from cascade.nn.unet import LayoutPrediction, layout_loss

    stage = choices_stage(3, unet={"text_layout_choice_form": "gates"})
    make_outputs_nonzero(stage)
    batch = batch_for(stage)
    painted = stage.unet.layout_prediction(batch["text_tokens"], batch["text_mask"])
    images = painted.images.detach()
    target = images[:, 0] + 0.01  # every row nearest choice 0: the winner-takes-all term has no gradient
    layout_loss(LayoutPrediction(images, painted.logits), target).backward()
    for name, parameter in stage.unet.named_parameters():
        moved = parameter.grad is not None and bool(parameter.grad.abs().sum() > 0)
        assert moved is name.startswith("layout_choice."), name


def test_the_layout_loss_weighs_the_nearest_choice_and_teaches_the_classifier_which_it_is():
    from cascade.nn.unet import LayoutPrediction, layout_loss, nearest_choice

    target = torch.zeros(2, 1, 1, 1)
    images = torch.tensor([[1.0, 2.0, 3.0], [3.0, -1.0, 2.0]]).reshape(2, 3, 1, 1, 1)  # errors 1,4,9 / 9,1,4
    logits = torch.tensor([[0.0, 1.0, 2.0], [0.5, 0.0, 0.0]])
    assert nearest_choice(images, target).tolist() == [0, 1]
    eps = 0.1
    expected = ((1 - eps) * 1 + eps / 2 * 13 + (1 - eps) * 1 + eps / 2 * 13) / 2 \
        + torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1]))
    torch.testing.assert_close(layout_loss(LayoutPrediction(images, logits), target, relaxation=eps), expected)
    # gated choices: the one map they gate adds its own squared error (here 1.5^2)
    torch.testing.assert_close(layout_loss(LayoutPrediction(images, logits, target + 1.5), target, relaxation=eps),
                               expected + 2.25)


def test_training_feeds_the_denoiser_the_choice_nearest_the_target_and_sampling_the_given_or_most_probable_one():
    stage = choices_stage(3)
    make_outputs_nonzero(stage)
    batch = batch_for(stage)
    x_t, noise_cond = torch.randn_like(batch["image"]), torch.rand(4)
    kwargs = dict(text_tokens=batch["text_tokens"], text_mask=batch["text_mask"])
    with torch.no_grad():
        painted = stage.unet.layout_prediction(**kwargs)
        assert painted.images.shape == (4, 3, 3, 8, 8) and painted.logits.shape == (4, 3)
        target = painted.images[torch.arange(4), torch.tensor([2, 0, 1, 2])] + 0.01
        by_target, returned = stage.unet(x_t, noise_cond, **kwargs, layout_target=target, return_layout=True)
        torch.testing.assert_close(by_target, stage.unet(x_t, noise_cond, **kwargs, layout_choice=torch.tensor([2, 0, 1, 2])))
        torch.testing.assert_close(returned.images, painted.images)
        outputs = [stage.unet(x_t, noise_cond, **kwargs, layout_choice=torch.full((4,), k)) for k in range(3)]
        assert not torch.allclose(outputs[0], outputs[1]) and not torch.allclose(outputs[1], outputs[2])
        torch.testing.assert_close(stage.unet(x_t, noise_cond, **kwargs),
                                   stage.unet(x_t, noise_cond, **kwargs, layout_choice=painted.logits.argmax(1)))


def test_a_rows_layout_choice_is_drawn_from_the_classifier_by_its_own_seed_not_its_batch():
    """`with_layout_choices`: each choice as often as the classifier says (2,000 rows, within 4 standard
    errors), the same choice for a seed alone or in a batch, and the starting noise unchanged."""
    stage = choices_stage(3)
    with torch.no_grad():
        stage.unet.layout_choice.bias.copy_(torch.tensor([0.5, 0.3, 0.2]).log())
    rows = 2000
    condition = Condition(text_tokens=torch.randn(rows, 6, 12), text_mask=torch.ones(rows, 6, dtype=torch.bool))
    generators = [torch.Generator().manual_seed(seed) for seed in range(rows)]
    drawn = stage.with_layout_choices(condition, generators).layout_choice
    frequencies = torch.bincount(drawn, minlength=3).float() / rows
    assert torch.all((frequencies - torch.tensor([0.5, 0.3, 0.2])).abs() < 4 * (0.25 / rows) ** 0.5), frequencies
    alone = stage.with_layout_choices(Condition(text_tokens=condition.text_tokens[7:8]),
                                      [torch.Generator().manual_seed(7)]).layout_choice
    assert alone.tolist() == drawn[7:8].tolist()
    assert torch.equal(torch.randn(3, generator=generators[5]), torch.randn(3, generator=torch.Generator().manual_seed(5)))
    kept = stage.with_layout_choices(condition.with_null(torch.zeros(rows, dtype=torch.bool)), generators)
    assert torch.equal(stage.with_layout_choices(kept, None).layout_choice, kept.layout_choice)  # given: kept
    assert text_stage().with_layout_choices(condition, generators) is condition  # one layout: nothing drawn


def test_a_guided_pass_gives_the_null_rows_their_rows_layout_choice_and_generate_draws_them_once():
    stage = choices_stage(3)
    make_outputs_nonzero(stage)
    calls = RecordUNetCalls(stage)
    condition = stage.make_condition(text_tokens=torch.randn(2, 6, 12))
    generators = [torch.Generator().manual_seed(seed) for seed in (3, 4)]
    stage.generate(condition, settings=SamplingSettings(steps=3, guidance=2.0), generator=generators)
    expected = stage.with_layout_choices(condition, [torch.Generator().manual_seed(seed) for seed in (3, 4)]).layout_choice
    assert all(call["layout_choice"].tolist() == expected.tolist() * 2 for call in calls.calls)


@pytest.mark.parametrize("form", ["scales", "gates"])
def test_muon_leaves_the_layout_choices_output_layers_to_adamw(form):
    from cascade.stages.optim import OptimizerConfig, build_optimizer

    stage = choices_stage(3, unet={"text_layout_choice_form": form})
    optimizer = build_optimizer(stage.unet, OptimizerConfig(algorithm="muon"))
    muon = {id(p) for group in optimizer.param_groups if group.get("muon") for p in group["params"]}
    adamw = {id(p) for group in optimizer.param_groups if not group.get("muon") for p in group["params"]}
    assert id(stage.unet.layout_choice.weight) in adamw
    assert id(stage.unet.text_layout.to_q.weight) in muon
    if form == "gates":  # the gates' logits layer is an output layer too
        assert id(stage.unet.text_layout.choice_gates.weight) in adamw


@pytest.mark.parametrize("choices, head, message", [
    (0, True, "text_layout_choices must be an int >= 1, got 0"),
    (2.5, True, "text_layout_choices must be an int >= 1, got 2.5"),
    (2, False, "text_layout_choices > 1 needs text_layout_head: true"),
    ((2, "gate"), True, r"text_layout_choice_form must be one of \('scales', 'gates'\), got 'gate'"),
    ((1, "gates"), True, "text_layout_choice_form 'gates' needs text_layout_choices > 1"),
])
def test_a_bad_layout_choices_setting_is_refused_naming_its_key(choices, head, message):
    from cascade.nn import UNetConfig

    choices, form = choices if isinstance(choices, tuple) else (choices, "scales")
    with pytest.raises(ValueError, match=message):
        UNetConfig(**{**UNET, "text_dim": 12, "cross_attention_resolutions": [8], "text_layout_resolution": 8,
                      "text_layout_head": head, "text_layout_choices": choices, "text_layout_choice_form": form})


def test_below_layout_choice_below_the_denoiser_reads_the_chosen_map_and_at_or_above_it_the_one_map():
    stage = choices_stage(3, layout_choice_below=-2.0)
    make_outputs_nonzero(stage)
    x_t = torch.randn(2, 3, 16, 16)
    t_high, t_low = torch.full((2,), 0.98), torch.full((2,), 0.3)  # log-SNR about -7.0 and +2.9 (cosine)
    assert float(stage.schedule.log_snr(t_high)[0]) < -2.0 < float(stage.schedule.log_snr(t_low)[0])
    tokens = torch.randn(2, 6, 12)
    outputs = {}
    with torch.no_grad():
        for k in range(3):
            condition = Condition(text_tokens=tokens, layout_choice=torch.full((2,), k))
            outputs[k] = (stage(x_t, t_high, condition), stage(x_t, t_low, condition))
        plain = stage.unet(x_t, stage.noise_cond_input(t_low), text_tokens=tokens,
                           layout_shared=torch.ones(2, dtype=torch.bool))
    assert not torch.allclose(outputs[0][0], outputs[1][0])  # high noise: the choice matters
    torch.testing.assert_close(outputs[0][1], outputs[1][1])  # low noise: the one map, whatever the choice
    torch.testing.assert_close(outputs[2][1], plain)
    with pytest.raises(StageConfigError, match=r"^layout_choice_below: needs unet.text_layout_choices > 1"):
        layout_stage(layout_loss_weight=1.0, layout_choice_below=-2.0)
    with pytest.raises(StageConfigError, match=r"^layout_choice_below: must be a finite log-SNR or null, got nan"):
        choices_stage(3, layout_choice_below=float("nan"))


# ------------------------------------------------------------------ a layout map that reads x_t (`unet.text_layout_reads_x_t`)
def reads_x_t_stage(**kwargs) -> BaseStage:
    return layout_stage({"text_layout_reads_x_t": True}, layout_loss_weight=1.0, **kwargs)


def test_a_layout_map_that_reads_x_t_fits_the_posterior_mean_and_the_captions_map_the_prior_mean():
    """One caption whose every cell is, independently, +1 or -1 (all channels) with probability 1/2.
    Fitted by the layout loss, the caption's map paints the prior mean 0, "the union"; its refinement
    by x_t paints each cell's posterior mean: with y = alpha x + s eps (x_t averaged over the cell's
    f x f pixels: s = sigma / f) in each of the 3 channels, E[x | y] = tanh(alpha (y_1 + y_2 + y_3) / s^2)."""
    from cascade.nn.unet import layout_loss

    torch.manual_seed(0)
    stage = reads_x_t_stage()
    tokens, mask = torch.randn(1, 6, 12), torch.ones(1, 6, dtype=torch.bool)
    t = torch.tensor(0.75)  # cosine schedule: log-SNR -1.76 per pixel, -0.38 per cell (f = 2), +0.72 for 3 channels
    alpha, sigma = float(stage.schedule.alpha(t)), float(stage.schedule.sigma(t))
    s = sigma / 2

    def draw(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = (torch.randint(0, 2, (rows, 1, 8, 8)) * 2 - 1).float().expand(-1, 3, -1, -1)
        return x0, alpha * x0 + s * torch.randn(rows, 3, 8, 8)

    def paint(y: torch.Tensor):
        return stage.unet.layout_prediction(tokens.expand(len(y), -1, -1), mask.expand(len(y), -1), x_t=y,
                                            noise_cond=stage.noise_cond_input(t.expand(len(y))))

    optimizer = torch.optim.Adam(stage.unet.parameters(), lr=3e-3)
    for step in range(600):
        if step == 450:
            optimizer.param_groups[0]["lr"] = 5e-4
        x0, y = draw(32)
        loss = layout_loss(paint(y), x0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x0, y = draw(64)
    with torch.no_grad():
        painted = paint(y)
    posterior = torch.tanh(alpha * y.sum(dim=1, keepdim=True) / s ** 2).expand(-1, 3, -1, -1)
    assert float((painted.images - posterior).abs().mean()) < 0.05
    assert float(posterior.abs().mean()) > 0.5  # the posterior mean is far from the prior mean 0 ...
    assert float(painted.caption_images.abs().mean()) < 0.1  # ... which the caption's map paints


def test_a_layout_map_that_reads_x_t_is_pre_trained_on_x_t_averaged_to_its_cells_as_training_draws_it(monkeypatch):
    """The pre-training draws a cell's x_t as alpha_t avg(x0) + (sigma_t / f) eps, the law of x_t averaged
    over f x f pixels of iid noise (f = 16 / 8 here), at t ~ U(0, 1) as training does; it moves the
    projections of x_t and of the noise level, and the training step gives every parameter a gradient."""
    stage = reads_x_t_stage(layout_pretraining={"steps": 40, "batch_size": 64, "lr": 1e-2, "images": 8, "seed": 0})
    assert stage.noise_cond == "t1000"  # noise_cond = 1000 t
    torch.manual_seed(0)
    batches = [batch_for(stage) for _ in range(2)]
    for batch in batches:  # one image throughout, so that every row's target is known
        batch["image"] = batches[0]["image"][:1].expand(4, -1, -1, -1)
    target = torch.nn.functional.adaptive_avg_pool2d(batches[0]["image"][:1], 8)
    seen = []
    paint = stage.unet.layout_prediction

    def recording(tokens, masks, null_cond=None, x_t=None, noise_cond=None):
        seen.append((x_t, noise_cond / 1000))
        return paint(tokens, masks, null_cond, x_t=x_t, noise_cond=noise_cond)

    monkeypatch.setattr(stage.unet, "layout_prediction", recording)
    before = {name: p.detach().clone() for name, p in stage.unet.text_layout.named_parameters()}
    stage.pretrain_layout(iter(batches))
    x_t, t = torch.cat([x for x, _ in seen]), torch.cat([t for _, t in seen])
    alpha, sigma = stage.schedule.alpha(t)[:, None, None, None], stage.schedule.sigma(t)[:, None, None, None]
    standardised = (x_t - alpha * target) / (sigma / 2)
    assert abs(float(standardised.mean())) < 0.02 and abs(float(standardised.std()) - 1) < 0.02
    assert abs(float(t.mean()) - 0.5) < 0.03 and abs(float(t.std()) - 12 ** -0.5) < 0.02  # U(0, 1)
    refinement = [name for name, _ in stage.unet.text_layout.named_parameters() if name.startswith(("from_image", "from_noise", "x_t_"))]
    assert len(refinement) == 10 and all(not torch.equal(p, before[name])
                                         for name, p in stage.unet.text_layout.named_parameters() if name in refinement)
    monkeypatch.undo()
    stage.training_step(batch_for(stage), 0).backward()
    missing = [name for name, p in stage.named_parameters() if p.grad is None]
    assert not missing, missing


def test_a_layout_map_that_reads_x_t_starts_as_the_captions_alone_and_then_depends_on_x_t():
    """The refinement's last layer starts at zero, so a new map is what the caption alone paints and a
    model starts as before; given weights, the map follows x_t."""
    torch.manual_seed(0)
    tokens, mask = torch.randn(2, 6, 12), torch.ones(2, 6, dtype=torch.bool)
    reads, caption_only = reads_x_t_stage(), layout_stage(layout_loss_weight=1.0)
    caption_only.unet.load_state_dict(reads.unet.state_dict(), strict=False)
    x_a, x_b, noise_cond = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16), torch.rand(2)
    with torch.no_grad():
        plain = caption_only.unet.layout_prediction(tokens, mask).images
        torch.testing.assert_close(reads.unet.layout_prediction(tokens, mask, x_t=x_a, noise_cond=noise_cond).images, plain)
        reads.unet.text_layout.x_t_mlp[-1].weight.normal_()
        assert not torch.allclose(reads.unet.layout_prediction(tokens, mask, x_t=x_a, noise_cond=noise_cond).images,
                                  reads.unet.layout_prediction(tokens, mask, x_t=x_b, noise_cond=noise_cond).images)
    with pytest.raises(ValueError, match="text_layout_reads_x_t: the layout map needs x_t and noise_cond"):
        reads.unet.layout_prediction(tokens, mask)


@pytest.mark.parametrize("reads, unet, message", [
    ("yes", {}, "text_layout_reads_x_t must be true or false, got 'yes'"),
    (True, {"text_layout_head": False}, "text_layout_reads_x_t needs text_layout_head: true"),
    (True, {"text_layout_choices": 2}, "text_layout_reads_x_t and text_layout_choices > 1 are two answers"),
])
def test_a_bad_layout_reads_x_t_setting_is_refused_naming_its_key(reads, unet, message):
    from cascade.nn import UNetConfig

    with pytest.raises(ValueError, match=message):
        UNetConfig(**{**UNET, "text_dim": 12, "cross_attention_resolutions": [8], "text_layout_resolution": 8,
                      "text_layout_head": True, "text_layout_reads_x_t": reads, **unet})
