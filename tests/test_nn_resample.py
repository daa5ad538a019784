"""The UNet's upsampling paths against their direct form: nearest upsampling by broadcast, and
the sub-pixel 3x3 convolution after upsampling (cascade.nn.resblock.upsample_conv3x3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cascade.nn.resblock import ResBlock, Upsample, upsample_conv3x3, upsample_nearest


def direct_upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), weight, bias, padding=1)


@pytest.mark.parametrize("channels_last", [False, True])
def test_upsample_nearest_equals_interpolate_and_keeps_memory_format(channels_last):
    x = torch.randn(2, 3, 5, 7)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    got = upsample_nearest(x)
    assert torch.equal(got, F.interpolate(x, scale_factor=2.0, mode="nearest"))
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_upsample_conv3x3_equals_direct_form_with_gradients(with_bias, channels_last):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 5, 7, generator=generator, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight = torch.randn(6, 4, 3, 3, generator=generator, dtype=torch.float64)
    bias = torch.randn(6, generator=generator, dtype=torch.float64) if with_bias else None
    leaves = [t.clone().requires_grad_() for t in (x, weight) + ((bias,) if with_bias else ())]
    leaves_direct = [t.clone().requires_grad_() for t in (x, weight) + ((bias,) if with_bias else ())]
    if channels_last:
        assert leaves[0].is_contiguous(memory_format=torch.channels_last)

    got = upsample_conv3x3(*leaves, *(() if with_bias else (None,)))
    expected = direct_upsample_conv(*leaves_direct, *(() if with_bias else (None,)))
    assert got.shape == (2, 6, 10, 14)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    upstream = torch.randn(got.shape, generator=generator, dtype=torch.float64)
    (got * upstream).sum().backward()
    (expected * upstream).sum().backward()
    for name, mine, reference in zip(["x", "weight", "bias"], leaves, leaves_direct):
        torch.testing.assert_close(mine.grad, reference.grad, rtol=0, atol=1e-10, msg=name)


def test_upsample_module_and_up_resblock_equal_their_direct_form():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 4, 6)
    upsample = Upsample(8)
    torch.testing.assert_close(
        upsample(x), direct_upsample_conv(x, upsample.conv.weight, upsample.conv.bias), rtol=1e-5, atol=1e-5
    )

    block = ResBlock(8, 8, embedding_channels=16, norm_groups=4, resample="up")
    torch.nn.init.normal_(block.conv_out.weight, std=0.1)  # not the zero init: test both paths
    embedding = torch.randn(2, 16)
    h = F.interpolate(F.silu(block.norm_in(x)), scale_factor=2.0, mode="nearest")
    h = block.conv_in(h)
    scale, shift = block.scale_shift(F.silu(embedding))[:, :, None, None].chunk(2, dim=1)
    h = block.conv_out(F.silu(block.norm_out(h) * (1 + scale) + shift))
    expected = F.interpolate(x, scale_factor=2.0, mode="nearest") + h
    torch.testing.assert_close(block(x, embedding), expected, rtol=1e-5, atol=1e-5)
