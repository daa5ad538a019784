"""`UNetConfig.block_order`: the ADM order (default) and Imagen's Efficient U-Net order
(Saharia et al. 2022, appendix B.1, Figs. A.28-A.30: DBlock = downsample, then residual
blocks; UBlock = residual blocks, then upsample)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from cascade.bench.flops import count_flops
from cascade.bench.stage_inputs import DEFAULT_TEXT_LENGTH
from cascade.cli.model_info import forward_flops, model_info, stage_unet_of
from cascade.nn import UNet, UNetConfig, count_parameters
from cascade.nn.attention import AttentionBlock
from cascade.nn.resblock import Downsample, ResBlock, Upsample

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_config(**overrides) -> UNetConfig:
    values = {"image_size": 16, "base_channels": 16, "channel_mults": (1, 2), "num_res_blocks": 1,
              "attention_resolutions": (), "norm_groups": 8, "head_channels": 8}
    values.update(overrides)
    return UNetConfig(**values)


def layer_trace(unet: UNet, size: int) -> list[tuple[str, int]]:
    """(layer kind, output side) of every resampling, residual and attention layer, in the
    order the forward pass runs them."""
    trace: list[tuple[str, int]] = []
    kinds = {Downsample: "down", Upsample: "up", AttentionBlock: "attn"}

    def hook(module, args, output):
        kind = kinds.get(type(module)) or {"down": "resdown", "up": "resup", None: "res"}[module.resample]
        trace.append((kind, output.shape[-1]))

    handles = [m.register_forward_hook(hook) for m in unet.modules() if isinstance(m, (*kinds, ResBlock))]
    with torch.no_grad():
        unet(torch.randn(1, 3, size, size), torch.rand(1))
    for handle in handles:
        handle.remove()
    return trace


def test_efficient_order_runs_each_level_after_its_downsample_and_before_its_upsample():
    """Imagen Figs. A.28/A.29: DBlock = strided conv, then the residual blocks (and attention) at
    the reduced side; UBlock = residual blocks, then upsampling. Level l runs at 16 / 2**(l+1)."""
    config = small_config(block_order="efficient", num_res_blocks=[1, 2], attention_resolutions=(4,))
    assert config.level_resolutions == [8, 4]
    trace = layer_trace(UNet(config), 16)
    down = [("down", 8), ("res", 8), ("down", 4), ("res", 4), ("attn", 4), ("res", 4), ("attn", 4)]
    middle = [("res", 4), ("attn", 4), ("res", 4)]
    up = [("res", 4), ("attn", 4)] * 3 + [("up", 8)] + [("res", 8)] * 2 + [("up", 16)]
    assert trace == down + middle + up


def test_adm_order_runs_each_level_before_its_downsample():
    config = small_config(num_res_blocks=[1, 2], attention_resolutions=(8,))
    assert config.block_order == "adm" and config.level_resolutions == [16, 8]
    trace = layer_trace(UNet(config), 16)
    down = [("res", 16), ("down", 8), ("res", 8), ("attn", 8), ("res", 8), ("attn", 8)]
    middle = [("res", 8), ("attn", 8), ("res", 8)]
    up = [("res", 8), ("attn", 8)] * 3 + [("up", 16)] + [("res", 16)] * 2
    assert trace == down + middle + up


def test_efficient_order_with_resblock_updown_resamples_in_biggan_blocks():
    config = small_config(block_order="efficient", resblock_updown=True)
    trace = layer_trace(UNet(config), 16)
    assert trace == [("resdown", 8), ("res", 8), ("resdown", 4), ("res", 4), ("res", 4), ("res", 4),
                     ("res", 4), ("res", 4), ("resup", 8), ("res", 8), ("res", 8), ("resup", 16)]


def test_efficient_order_has_the_adm_parameters_plus_one_resampling_layer_each_way():
    """Same widths and skip widths, so every parameter tensor of the ADM order is there; the
    efficient order adds the top level's downsample (base_channels -> base_channels) and
    upsample (level_channels[0] -> level_channels[0]), conv (9 C^2 + C each) or BigGAN block."""
    config = {"base_channels": 16, "channel_mults": (2, 3), "num_res_blocks": [1, 2]}
    adm = UNet(small_config(**config, attention_resolutions=(8,)))
    efficient = UNet(small_config(**config, block_order="efficient", attention_resolutions=(4,)))
    c_base, c_top = 16, 32
    assert count_parameters(efficient) - count_parameters(adm) == (9 * c_base**2 + c_base) + (9 * c_top**2 + c_top)
    extra = Counter({(c_base, c_base, 3, 3): 1, (c_base,): 1, (c_top, c_top, 3, 3): 1, (c_top,): 1})
    shapes = Counter(tuple(p.shape) for p in efficient.parameters())
    assert shapes - Counter(tuple(p.shape) for p in adm.parameters()) == extra
    assert shapes - extra == Counter(tuple(p.shape) for p in adm.parameters())

    adm = UNet(small_config(**config, resblock_updown=True, attention_resolutions=(8,)))
    efficient = UNet(small_config(**config, resblock_updown=True, block_order="efficient", attention_resolutions=(4,)))
    embedding = 4 * 16
    extra_blocks = sum(count_parameters(ResBlock(c, c, embedding, 8, 0.0, r)) for c, r in ((c_base, "down"), (c_top, "up")))
    assert count_parameters(efficient) - count_parameters(adm) == extra_blocks


def conv(c_in: int, c_out: int, kernel: int, side: int) -> int:
    """Multiply-adds x 2 of a convolution producing a side x side map (batch 1)."""
    return 2 * c_out * c_in * kernel * kernel * side * side


def upsample(channels: int, side: int) -> int:
    """`Upsample` from side to 2 side in sub-pixel form: one 2x2 conv to 4 C channels on a
    (side+1) x (side+1) grid (`cascade.nn.resblock.upsample_conv3x3`)."""
    return 2 * (4 * channels) * channels * 4 * (side + 1) ** 2


def res_block(c_in: int, c_out: int, side: int, embedding: int = 64) -> int:
    """Two 3x3 convs, a 1x1 skip conv when the width changes, the scale-shift Linear(E, 2 C_out)."""
    skip = conv(c_in, c_out, 1, side) if c_in != c_out else 0
    return conv(c_in, c_out, 3, side) + conv(c_out, c_out, 3, side) + skip + 2 * embedding * 2 * c_out


def test_efficient_order_flops_are_the_closed_form_sum_over_its_layers():
    """Base 16 (embedding 64), widths (16, 32), one block per level, 16x16 input, batch 1. Every
    residual block runs at half the side, so its FLOPs are a quarter of the ADM order's; conv_in,
    conv_out and the time MLP are unchanged; the efficient order has one more strided conv and
    one more upsample. Here: 8.55 M against 28.23 M FLOPs, a ratio of 0.303."""
    shared = conv(3, 16, 3, 16) + conv(16, 3, 3, 16) + 2 * 16 * 64 + 2 * 64 * 64  # conv_in, conv_out, time MLP
    adm = shared + (
        res_block(16, 16, 16) + conv(16, 16, 3, 8)                               # level 0, downsample
        + res_block(16, 32, 8)                                                   # level 1
        + 2 * res_block(32, 32, 8)                                               # middle
        + res_block(64, 32, 8) + res_block(48, 32, 8) + upsample(32, 8)          # up level 1 (skips 32, 16)
        + res_block(48, 16, 16) + res_block(32, 16, 16)                          # up level 0 (skips 16, 16)
    )
    efficient = shared + (
        conv(16, 16, 3, 8) + res_block(16, 16, 8)                                # level 0 at 8
        + conv(16, 16, 3, 4) + res_block(16, 32, 4)                              # level 1 at 4
        + 2 * res_block(32, 32, 4)
        + res_block(64, 32, 4) + res_block(48, 32, 4) + upsample(32, 4)
        + res_block(48, 16, 8) + res_block(32, 16, 8) + upsample(16, 8)
    )
    x, t = torch.randn(1, 3, 16, 16), torch.rand(1)
    measured = {}
    for order in ("adm", "efficient"):
        with torch.device("meta"):
            unet = UNet(small_config(block_order=order))
            measured[order] = count_flops(lambda unet=unet: unet(x.to("meta"), t.to("meta")))
    assert measured == {"adm": adm, "efficient": efficient}
    assert (adm, efficient) == (28_227_584, 8_550_400)
    assert efficient / adm == pytest.approx(0.303, abs=5e-4)


def test_efficient_order_fits_a_tiny_batch():
    """A tiny text-conditional efficient UNet with self- and cross-attention overfits one batch
    (fixed x_t, t, target): the loss falls tenfold in 60 Adam steps."""
    torch.manual_seed(0)
    config = small_config(block_order="efficient", attention_resolutions=(4,), text_dim=8,
                          cross_attention_resolutions=(8, 4), skip_scale=2**-0.5)
    unet = UNet(config)
    x_t, t = torch.randn(4, 3, 16, 16), torch.rand(4) * 1000
    tokens, target = torch.randn(4, 3, 8), torch.randn(4, 3, 16, 16).clamp(-1, 1) * 0.5
    optimizer = torch.optim.Adam(unet.parameters(), lr=2e-3)
    losses = []
    for _ in range(60):
        optimizer.zero_grad()
        loss = (unet(x_t, t, text_tokens=tokens) - target).pow(2).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


def test_adm_is_the_default_and_configs_without_the_key_keep_their_state_dict_layout():
    """A config written before block_order existed is the ADM order: its state_dict has the ADM
    layout (level 0's block, then the downsample; the upsample closes up level 1) and loads
    strictly into a UNet built from the same values; it does not fit the efficient order."""
    values = {"image_size": 16, "base_channels": 16, "channel_mults": [1, 2], "num_res_blocks": 1,
              "attention_resolutions": [], "norm_groups": 8}
    saved = UNet(UNetConfig(**values)).state_dict()
    assert UNetConfig(**values).block_order == "adm"
    assert "down_blocks.0.0.conv_in.weight" in saved and "down_blocks.1.0.conv.weight" in saved
    assert "up_blocks.1.1.conv.weight" in saved  # up level 1: [ResBlock, Upsample]; up level 0: no upsample
    assert not any(key.startswith(("up_blocks.3.1.", "up_blocks.4.")) for key in saved)
    UNet(UNetConfig(**values)).load_state_dict(saved, strict=True)
    with pytest.raises(RuntimeError, match="Missing key"):
        UNet(UNetConfig(**values, block_order="efficient")).load_state_dict(saved, strict=True)


def test_attention_resolutions_name_the_side_the_levels_blocks_run_at():
    assert small_config(block_order="efficient", attention_resolutions=(8,)).level_resolutions == [8, 4]
    with pytest.raises(ValueError, match=r"attention_resolutions \[16\] are not level resolutions \[8, 4\]"):
        small_config(block_order="efficient", attention_resolutions=(16,))
    unet = UNet(small_config(block_order="efficient", attention_resolutions=(8,)))
    assert [type(layer).__name__ for layer in unet.down_blocks[1]] == ["ResBlock", "AttentionBlock"]


def test_efficient_order_needs_sides_divisible_by_two_to_the_levels():
    small_config(image_size=20, channel_mults=(1, 2, 2))  # adm: divisible by 4 is enough
    with pytest.raises(ValueError, match=r"image_size 20 is not divisible by 2\*\*levels = 8"):
        small_config(block_order="efficient", image_size=20, channel_mults=(1, 2, 2))
    unet = UNet(small_config(block_order="efficient"))
    assert unet(torch.randn(1, 3, 12, 12), torch.rand(1)).shape == (1, 3, 12, 12)
    with pytest.raises(ValueError, match="divisible by 4"):
        unet(torch.randn(1, 3, 10, 10), torch.rand(1))


def test_bad_block_order_raises_one_line_naming_the_key():
    with pytest.raises(ValueError, match=r"^invalid UNetConfig: unet.block_order must be one of \('adm', 'efficient'\), got 'imagen'$"):
        small_config(block_order="imagen")


# ---- `cascade model-info` ------------------------------------------------------------------


def write_stage(path, block_order: str, text_encoder: dict | None = None) -> str:
    unet = {"base_channels": 16, "channel_mults": [1, 2], "num_res_blocks": 1, "attention_resolutions": [],
            "norm_groups": 8, "block_order": block_order}
    init_args = {"image_size": 16, "unet": unet}
    if text_encoder is not None:
        init_args["text_encoder"] = text_encoder
    path.write_text(yaml.safe_dump({"model": {"class_path": "cascade.stages.BaseStage", "init_args": init_args}}))
    return str(path)


def test_model_info_prints_block_order_and_the_closed_form_forward_gflop(tmp_path, capsys):
    """The rows of the two orders of one network: their block order, the parameters (the
    efficient one has the two extra resampling convs, 2 x (9 * 16^2 + 16)) and the FLOPs of one
    batch-1 forward at image_size, the closed-form sums of the test above (28.23 M and 8.55 M)."""
    paths = [write_stage(tmp_path / f"{order}.yaml", order) for order in ("adm", "efficient")]
    assert model_info(paths) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "BaseStage" in line]
    cells = [[cell.strip() for cell in row.split("│")[1:-1]] for row in rows]
    assert [row[5:] for row in cells] == [["adm", "0.2 M", "0.028"], ["efficient", "0.2 M", "0.009"]]
    for order, expected in (("adm", 28_227_584), ("efficient", 8_550_400)):
        with torch.device("meta"):
            assert forward_flops(UNet(small_config(block_order=order))) == expected
    with torch.device("meta"):
        extra = count_parameters(UNet(small_config(block_order="efficient"))) - count_parameters(UNet(small_config()))
    assert extra == 2 * (9 * 16**2 + 16)


def test_model_info_counts_text_tokens_of_the_stages_max_length(tmp_path):
    """Text enters the FLOPs through cross-attention: the key/value projections and the
    attention products grow linearly with the number of tokens, so the forward FLOPs are affine
    in the text length and the config's max_length (else DEFAULT_TEXT_LENGTH) is the one used."""
    text = {"text_dim": 8, "cross_attention_resolutions": [8]}
    stated = tmp_path / "stated.yaml"
    stated.write_text(yaml.safe_dump({"model": {"class_path": "cascade.stages.BaseStage", "init_args": {
        "image_size": 16, "text_encoder": {"kind": "minilm", "max_length": 7},
        "unet": {"base_channels": 16, "channel_mults": [1, 2], "attention_resolutions": [], "norm_groups": 8,
                 "head_channels": 8, **text}}}}))
    _, config, length = stage_unet_of(stated)
    assert length == 7
    _, _, default = stage_unet_of(Path(write_stage(tmp_path / "plain.yaml", "adm")))
    assert default == DEFAULT_TEXT_LENGTH
    with torch.device("meta"):
        unet = UNet(config)
        flops = [forward_flops(unet, n) for n in (4, 7, 10)]
    assert flops[2] - flops[1] == flops[1] - flops[0] > 0
