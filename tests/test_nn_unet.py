"""Tests of cascade.nn.UNet / UNetConfig and `cascade model-info`, on tiny CPU networks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from cascade.nn import UNet, UNetConfig, compile_static
from cascade.nn.unet import coordinate_grid
from cascade.cli.model_info import model_info
from cascade.stages.export import stage_config_of

REPO = Path(__file__).resolve().parents[1]
REFERENCE_CONFIGS = sorted((REPO / "configs").glob("*.yaml")) + sorted((REPO / "configs" / "demo").glob("*.yaml"))
TEXT_DIM = 12
NUM_CLASSES = 5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks gain nothing from a second thread, and on a shared 2-core machine the
    OpenMP threads of one op wait on each other for 10x the compute time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**overrides) -> UNetConfig:
    values = dict(
        image_size=16,
        base_channels=16,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        norm_groups=8,
        head_channels=8,
    )
    values.update(overrides)
    return UNetConfig(**values)


CLASS_CONFIG = dict(num_classes=NUM_CLASSES)
TEXT_CONFIG = dict(text_dim=TEXT_DIM, cross_attention_resolutions=(16, 8), text_concat_to_self_attn=True)
SR_CONFIG = dict(
    lowres_channels=3,
    use_aug_cond=True,
    text_dim=TEXT_DIM,
    attention_resolutions=(),
    cross_attention_resolutions=(8,),
    num_res_blocks=[1, 2],
    skip_scale=1 / math.sqrt(2),
)


def build(seed: int = 0, nonzero_output: bool = True, **overrides) -> UNet:
    """A tiny UNet; with nonzero_output the zero-initialised layers get random weights."""
    torch.manual_seed(seed)
    unet = UNet(tiny_config(**overrides))
    if nonzero_output:
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for parameter in unet.parameters():
                if parameter.dim() > 1 and not parameter.any():
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return unet


def inputs(unet: UNet, batch: int = 2, height: int = 16, width: int = 16, seed: int = 0, text_length: int = 5) -> dict:
    """Random inputs for every conditioning the UNet's config uses."""
    config = unet.config
    generator = torch.Generator().manual_seed(seed)
    values = dict(
        x_t=torch.randn(batch, config.in_channels, height, width, generator=generator),
        noise_cond=torch.rand(batch, generator=generator) * 1000,
    )
    if config.num_classes:
        values["class_labels"] = torch.randint(0, config.num_classes, (batch,), generator=generator)
    if config.text_dim:
        values["text_tokens"] = torch.randn(batch, text_length, config.text_dim, generator=generator)
        mask = torch.ones(batch, text_length, dtype=torch.bool)
        mask[0, 3:] = False  # the first prompt is shorter
        values["text_mask"] = mask
    if config.lowres_channels:
        values["lowres"] = torch.randn(batch, config.lowres_channels, height, width, generator=generator)
    if config.use_aug_cond:
        values["aug_cond"] = torch.rand(batch, generator=generator)
    return values


def assert_changes(before: torch.Tensor, after: torch.Tensor) -> None:
    assert (before - after).abs().amax() > 1e-4


# ---- shapes --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["class", "text", "sr"])
@pytest.mark.parametrize("size", [(16, 16), (32, 32), (8, 24)])
def test_output_shape_equals_input_shape(kind, size):
    overrides = {"class": CLASS_CONFIG, "text": TEXT_CONFIG, "sr": SR_CONFIG}[kind]
    unet = build(**overrides).eval()
    with torch.no_grad():
        out = unet(**inputs(unet, 2, *size))
    assert out.shape == (2, 3, *size)
    assert torch.isfinite(out).all()


def test_fresh_network_outputs_zero():
    """ADM initialisation: the output convolution starts at zero."""
    unet = build(nonzero_output=False, **TEXT_CONFIG)
    assert not unet(**inputs(unet)).any()


# ---- absolute position (CoordConv) -----------------------------------------------------------


def test_coordinate_grid_runs_from_minus_one_to_one_across_each_axis():
    grid = coordinate_grid(torch.zeros(2, 3, 4, 5))
    assert grid.shape == (2, 2, 4, 5)
    torch.testing.assert_close(grid[1, 0], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]).expand(4, 5))  # x: along width
    torch.testing.assert_close(grid[0, 1], torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0])[:, None].expand(4, 5))  # y: down


@pytest.mark.parametrize("overrides", [TEXT_CONFIG, SR_CONFIG])
def test_coordinate_channels_are_the_input_layers_extra_channels_and_nothing_else(overrides):
    """A UNet with coordinate channels is exactly the same UNet with two more input channels fed
    the coordinate grid; without them (the default) the input layer is what it always was."""
    with_coordinates = build(coordinate_channels=True, **overrides).eval()
    plain = build(**overrides).eval()
    assert plain.conv_in.in_channels == 3 + plain.config.lowres_channels
    assert with_coordinates.conv_in.in_channels == plain.conv_in.in_channels + 2
    widened = build(in_channels=3 + 2, out_channels=3, **{**overrides, "lowres_channels": 0}).eval()
    if overrides is SR_CONFIG:  # the low-res image sits between x_t and the coordinates
        widened = build(in_channels=3, out_channels=3, **{**overrides, "lowres_channels": 3 + 2}).eval()
    widened.load_state_dict(with_coordinates.state_dict())
    values = inputs(with_coordinates, 2, 16, 8)
    grid = coordinate_grid(values["x_t"])
    with torch.no_grad():
        expected = widened(**({**values, "x_t": torch.cat([values["x_t"], grid], 1)} if overrides is TEXT_CONFIG
                              else {**values, "lowres": torch.cat([values["lowres"], grid], 1)}))
        torch.testing.assert_close(with_coordinates(**values), expected)


def test_text_positions_add_a_learned_embedding_of_each_tokens_index_to_the_context():
    """Without it the context is the same set whatever the order of the tokens (cross-attention is
    permutation invariant over keys); with it, a token's context row is its projection plus the row
    of its index, so the order reaches attention. The default adds no parameter (old checkpoints)."""
    from cascade.nn.text_conditioning import TextConditioning

    torch.manual_seed(0)
    plain, positioned = TextConditioning(6, 8, 4), TextConditioning(6, 8, 4, positions=5)
    positioned.load_state_dict(plain.state_dict(), strict=False)
    assert {name for name, _ in positioned.named_parameters()} - {name for name, _ in plain.named_parameters()} == {
        "positions"}
    tokens, mask, null = torch.randn(2, 3, 6), torch.ones(2, 3, dtype=torch.bool), torch.tensor([False, True])
    _, context, _ = plain(tokens, mask, null)
    _, moved, _ = positioned(tokens, mask, null)
    torch.testing.assert_close(moved[:, 1:], context[:, 1:] + positioned.positions[:3])
    torch.testing.assert_close(moved[:, 0], context[:, 0])  # the learned null token has no index
    with pytest.raises(ValueError, match="unet.text_positions is 5"):
        positioned(torch.randn(1, 6, 6), torch.ones(1, 6, dtype=torch.bool), torch.tensor([False]))
    unet = build(text_positions=5, **TEXT_CONFIG).eval()
    with torch.no_grad():
        assert unet(**inputs(unet, text_length=5)).shape == (2, 3, 16, 16)



def attention_by_hand(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, real: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per head over the keys where `real` is True, heads concatenated;
    q (N, C), k and v (L, C), real (L,) bool."""
    width = q.shape[-1] // heads
    outputs = []
    for h in range(heads):
        part = slice(width * h, width * (h + 1))
        scores = q[:, part] @ k[:, part].T / math.sqrt(width)
        outputs.append(torch.softmax(scores.masked_fill(~real, float("-inf")), dim=-1) @ v[:, part])
    return torch.cat(outputs, dim=-1)


def test_a_token_refiner_layer_is_pre_norm_attention_then_mlp_over_the_real_tokens():
    """Element-wise against the transformer written out: x + W_o softmax(q k^T / sqrt(d)) v per head
    over the real tokens only, then x + MLP(LN(x)); padding never changes a real token's output."""

    from cascade.nn.text_conditioning import TokenRefinerLayer

    torch.manual_seed(0)
    layer = TokenRefinerLayer(8, num_heads=2)
    for parameter in layer.parameters():  # off the identity start, so the test sees every term
        nn.init.normal_(parameter, std=0.3)
    x, mask = torch.randn(2, 5, 8), torch.tensor([[True, True, True, False, False], [True] * 5])
    with torch.no_grad():
        expected = []
        for row, real in zip(x, mask):
            q, k, v = layer.to_qkv(layer.attention_norm(row)).chunk(3, dim=-1)
            y = row + layer.attention_out(attention_by_hand(q, k, v, real, heads=2))
            expected.append(y + layer.mlp[2](F.gelu(layer.mlp[0](layer.mlp_norm(y)))))
        torch.testing.assert_close(layer(x, mask), torch.stack(expected))
        padded_again = x.clone()
        padded_again[0, 3:] = 100.0
        torch.testing.assert_close(layer(padded_again, mask)[0, :3], layer(x, mask)[0, :3])


def test_a_token_refiner_starts_as_the_identity_and_adds_only_its_own_parameters():
    """`unet.text_refiner_layers` zero-initialises each residual branch's last projection: a new
    refiner leaves the context as it was (so it can be added to a trained stage's recipe) and null
    rows, whose tokens are all masked, stay finite. The default adds no parameter (old checkpoints)."""
    from cascade.nn.text_conditioning import TextConditioning

    torch.manual_seed(0)
    plain = TextConditioning(6, 8, 4)
    refined = TextConditioning(6, 8, 4, refiner_layers=2, refiner_heads=2, refined_pooled=True)
    missing = refined.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(name.startswith(("refiner.", "refined_to_pooled.")) for name in missing)
    assert not list(TextConditioning(6, 8, 4).refiner.parameters())
    tokens = torch.randn(3, 4, 6)
    mask = torch.tensor([[True, True, False, False], [True] * 4, [False] * 4])
    null = torch.tensor([False, True, False])
    for before, after in zip(plain(tokens, mask, null), refined(tokens, mask, null)):
        torch.testing.assert_close(after, before)
    for parameter in refined.refiner.parameters():
        nn.init.normal_(parameter, std=0.3)
    nn.init.normal_(refined.refined_to_pooled.weight, std=0.3)
    pooled, context, context_mask = refined(tokens, mask, null)
    assert torch.isfinite(context).all() and context_mask[1:].sum().item() == 1 + 1  # null token of rows 1, 2
    # text_refiner_pooled: the pooled vector gains the projected mean of the refined real tokens
    plain_pooled = plain(tokens, mask, null)[0]
    with torch.no_grad():
        torch.testing.assert_close(pooled[0], plain_pooled[0] + refined.refined_to_pooled(context[0, 1:3].mean(0)))
        torch.testing.assert_close(pooled[1:], plain_pooled[1:])  # a null row keeps the learned null; an empty caption has no real token to average
    unet = build(text_positions=5, text_refiner_layers=1, text_refiner_pooled=True, **TEXT_CONFIG).eval()
    with torch.no_grad():
        assert unet(**inputs(unet, text_length=5)).shape == (2, 3, 16, 16)


def test_a_text_layout_map_is_per_cell_queries_attending_to_the_real_tokens_then_an_mlp():
    """Element-wise against the layer written out: cell c's query is its learned vector plus the
    projected pooled text; q + W_o softmax(W_q LN(q) (W_k k)^T / sqrt(d)) W_v k per head over the
    valid context rows, then q + MLP(LN(q)); the map is (B, C, r, r) with cell c at (c // r, c % r)."""
    from cascade.nn.text_conditioning import TextLayout

    torch.manual_seed(0)
    layout = TextLayout(8, 6, resolution=2, num_heads=2)
    for parameter in layout.parameters():
        nn.init.normal_(parameter, std=0.3)
    pooled, context = torch.randn(2, 6), torch.randn(2, 4, 8)
    mask = torch.tensor([[True, True, False, False], [True] * 4])
    with torch.no_grad():
        expected = []
        for row_pooled, row_context, real in zip(pooled, context, mask):
            q = layout.queries + layout.from_pooled(row_pooled)
            queries = layout.to_q(layout.query_norm(q))
            keys, values = layout.to_kv(row_context).chunk(2, dim=-1)
            q = q + layout.attention_out(attention_by_hand(queries, keys, values, real, heads=2))
            q = q + layout.mlp[2](F.gelu(layout.mlp[0](layout.mlp_norm(q))))
            expected.append(q.T.reshape(8, 2, 2))
        torch.testing.assert_close(layout(pooled, context, mask), torch.stack(expected))
        padded_again = context.clone()
        padded_again[0, 2:] = 100.0
        torch.testing.assert_close(layout(pooled, padded_again, mask)[0], layout(pooled, context, mask)[0])


@pytest.mark.parametrize("resolution", [16, 8])
def test_the_text_layout_map_is_added_where_the_features_first_reach_its_resolution(resolution):
    """`unet.text_layout_resolution`: the map, through its 1x1 convolution, is added once, to the
    first feature map of its size (conv_in's output at the image size; the downsample's below), so the
    skip connections carry it to the decoder too. Zero-initialised, a new map changes nothing: the
    UNet equals the one without it, whose state dict it loads with only the layout's keys missing."""
    unet = build(text_layout_resolution=resolution, **TEXT_CONFIG).eval()
    values = inputs(unet)
    outputs, block_inputs = [], []
    hooks = [unet.conv_in.register_forward_hook(lambda module, args, out: outputs.append(out))]
    for block in unet.down_blocks:
        hooks.append(block.register_forward_pre_hook(lambda module, args: block_inputs.append(args[0])))
        hooks.append(block.register_forward_hook(lambda module, args, out: outputs.append(out)))
    with torch.no_grad():
        unet(**values)
        pooled, context, context_mask = unet.text_conditioning(values["text_tokens"], values["text_mask"],
                                                               torch.zeros(2, dtype=torch.bool))
        added = unet.layout_in(unet.text_layout(pooled, context, context_mask))
    for hook in hooks:
        hook.remove()
    first = next(i for i, out in enumerate(outputs) if out.shape[-1] == resolution)
    assert added.abs().sum() > 0 and added.shape[-1] == resolution
    torch.testing.assert_close(block_inputs[first], outputs[first] + added)
    for i in range(len(block_inputs)):  # everywhere else a block reads what the one before wrote
        if i != first:
            torch.testing.assert_close(block_inputs[i], outputs[i])

    torch.manual_seed(0)
    plain, fresh = UNet(tiny_config(**TEXT_CONFIG)).eval(), UNet(tiny_config(text_layout_resolution=resolution, **TEXT_CONFIG)).eval()
    missing = fresh.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(name.startswith(("text_layout.", "layout_in.")) for name in missing)
    with torch.no_grad():
        torch.testing.assert_close(fresh(**values), plain(**values))


# ---- conditioning is used ------------------------------------------------------------------


@pytest.mark.parametrize("attend_to_image, context_channels", [(True, 0), (False, 12), (True, 12)])
def test_qk_norm_attention_reads_the_directions_of_queries_and_keys_not_their_scale(attend_to_image, context_channels):
    """With qk_norm each head's queries and keys are RMS-normalised, so scaling the query and key
    projections (weights and biases) leaves the block's output unchanged; without it the same
    scaling sharpens the softmax and changes the output (the check is not vacuous)."""
    from cascade.nn.attention import AttentionBlock

    torch.manual_seed(0)
    x, context = torch.randn(2, 16, 4, 4), torch.randn(2, 5, 12)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    for qk_norm in (True, False):
        block = AttentionBlock(16, 2, 4, attend_to_image, context_channels, qk_norm=qk_norm)
        with torch.no_grad():
            for parameter in block.to_out.parameters():
                parameter.normal_()  # the zero-initialised output projection would hide every difference
            before = block(x, context, mask)
            projections = [block.to_query] + [p for p in (block.to_image_kv, block.to_context_kv) if p is not None]
            for linear in projections:  # scale the queries and the keys, not the values
                rows = linear.out_features if linear is block.to_query else linear.out_features // 2
                linear.weight[:rows] *= 5.0
                linear.bias[:rows] *= 5.0
            after = block(x, context, mask)
        if qk_norm:
            torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
        else:
            assert (after - before).abs().max() > 1e-2


def test_qk_norm_adds_only_the_two_gains_per_attention_block_and_old_weights_load_without_it():
    plain, normed = build(**TEXT_CONFIG), build(**TEXT_CONFIG, qk_norm=True)
    added = set(normed.state_dict()) - set(plain.state_dict())
    blocks = [name for name, module in normed.named_modules() if module.__class__.__name__ == "AttentionBlock"]
    assert added == {f"{block}.{norm}.weight" for block in blocks for norm in ("query_norm", "key_norm")}
    assert set(plain.state_dict()) <= set(normed.state_dict())
    build(**TEXT_CONFIG).load_state_dict(plain.state_dict())  # qk_norm off (the default): the same keys as before
    values = inputs(normed)
    assert torch.isfinite(normed(**values)).all()


def test_class_label_changes_output():
    unet = build(**CLASS_CONFIG).eval()
    values = inputs(unet)
    with torch.no_grad():
        before = unet(**values)
        values["class_labels"] = (values["class_labels"] + 1) % NUM_CLASSES
        assert_changes(before, unet(**values))


def test_text_changes_output():
    unet = build(**TEXT_CONFIG).eval()
    values = inputs(unet)
    with torch.no_grad():
        before = unet(**values)
        values["text_tokens"] = values["text_tokens"] + torch.randn_like(values["text_tokens"])
        after = unet(**values)
    for row in range(2):
        assert_changes(before[row], after[row])


def test_text_changes_output_through_pooled_vector_alone():
    unet = build(text_dim=TEXT_DIM).eval()  # no attention reads text: only the pooled vector
    values = inputs(unet)
    with torch.no_grad():
        before = unet(**values)
        values["text_tokens"] = -values["text_tokens"]
        assert_changes(before, unet(**values))


def test_lowres_and_aug_level_change_output():
    unet = build(**SR_CONFIG).eval()
    values = inputs(unet)
    with torch.no_grad():
        before = unet(**values)
        assert_changes(before, unet(**{**values, "lowres": values["lowres"].flip(-1)}))
        assert_changes(before, unet(**{**values, "aug_cond": values["aug_cond"] + 0.5}))


def test_noise_level_changes_output():
    unet = build(time_embedding="fourier", fourier_scale=0.05).eval()
    values = inputs(unet)
    with torch.no_grad():
        assert_changes(unet(**values), unet(**{**values, "noise_cond": values["noise_cond"] / 2}))


def test_padding_tokens_do_not_change_output():
    unet = build(**TEXT_CONFIG).eval()
    values = inputs(unet, text_length=5)
    with torch.no_grad():
        before = unet(**values)
        tokens = values["text_tokens"].clone()
        tokens[0, 3:] = float("nan")  # padding may hold anything, even NaN
        after = unet(**{**values, "text_tokens": tokens})
        # more padding at the end of every prompt
        longer_tokens = torch.cat([values["text_tokens"], 100 * torch.randn(2, 4, TEXT_DIM)], dim=1)
        longer_mask = torch.cat([values["text_mask"], torch.zeros(2, 4, dtype=torch.bool)], dim=1)
        longer = unet(**{**values, "text_tokens": longer_tokens, "text_mask": longer_mask})
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    torch.testing.assert_close(longer, before, rtol=0, atol=1e-5)


def test_prompt_with_no_real_tokens_gives_finite_output():
    unet = build(**TEXT_CONFIG).eval()
    values = inputs(unet)
    values["text_mask"] = torch.zeros_like(values["text_mask"])
    with torch.no_grad():
        assert torch.isfinite(unet(**values)).all()


# ---- the null condition (classifier-free guidance) ------------------------------------------


def test_mixed_null_batch_matches_all_null_batch():
    unet = build(**CLASS_CONFIG, **TEXT_CONFIG).eval()
    values = inputs(unet, batch=4)
    null = torch.tensor([True, False, True, False])
    with torch.no_grad():
        mixed = unet(**values, null_cond=null)
        all_null = unet(**values, null_cond=torch.ones(4, dtype=torch.bool))
        no_condition = unet(values["x_t"], values["noise_cond"])  # no class, no text: all null
        conditional = unet(**values)
    torch.testing.assert_close(mixed[null], all_null[null], rtol=0, atol=1e-5)
    torch.testing.assert_close(no_condition, all_null, rtol=0, atol=1e-5)
    torch.testing.assert_close(mixed[~null], conditional[~null], rtol=0, atol=1e-5)
    assert_changes(mixed[null], conditional[null])


GRADIENT_CASES = {
    "class": dict(CLASS_CONFIG, resblock_updown=True, dropout=0.1),
    "text cross+concat": TEXT_CONFIG,
    "text pooled only": dict(text_dim=TEXT_DIM),
    "sr": dict(SR_CONFIG, time_embedding="fourier"),
    "class+text": dict(CLASS_CONFIG, **TEXT_CONFIG),
}


@pytest.mark.parametrize("case", sorted(GRADIENT_CASES))
@pytest.mark.parametrize("all_null_by", ["null_cond", "missing inputs"])
def test_all_null_batch_gives_every_parameter_a_gradient(case, all_null_by):
    """DDP runs with find_unused_parameters=False: every parameter must be in every graph."""
    unet = build(nonzero_output=False, **GRADIENT_CASES[case]).train()
    values = inputs(unet)
    if all_null_by == "null_cond":
        values["null_cond"] = torch.ones(2, dtype=torch.bool)
    else:
        for key in ("class_labels", "text_tokens", "text_mask"):
            values.pop(key, None)
    unet(**values).square().mean().backward()
    missing = [name for name, parameter in unet.named_parameters() if parameter.grad is None]
    assert not missing


# ---- memory / precision switches -----------------------------------------------------------


def test_gradient_checkpointing_gives_same_output_and_gradients():
    unet = build(**CLASS_CONFIG, **TEXT_CONFIG).train()
    values = inputs(unet)

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        unet.zero_grad(set_to_none=True)
        out = unet(**values, null_cond=torch.tensor([True, False]))
        out.square().mean().backward()
        return out.detach(), {name: p.grad.clone() for name, p in unet.named_parameters()}

    unet.gradient_checkpointing = False
    plain_out, plain_grads = run()
    unet.gradient_checkpointing = True
    checkpointed_out, checkpointed_grads = run()
    torch.testing.assert_close(checkpointed_out, plain_out, rtol=0, atol=1e-6)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_channels_last_matches_contiguous():
    unet = build(**SR_CONFIG).eval()
    values = inputs(unet)
    with torch.no_grad():
        expected = unet(**values)
        unet = unet.to(memory_format=torch.channels_last)
        values["x_t"] = values["x_t"].to(memory_format=torch.channels_last)
        values["lowres"] = values["lowres"].to(memory_format=torch.channels_last)
        got = unet(**values)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        {**CLASS_CONFIG, **TEXT_CONFIG},
        {**CLASS_CONFIG, **TEXT_CONFIG, "resblock_updown": True},
        SR_CONFIG,
    ],
    ids=["class+text", "biggan-updown", "sr"],
)
def test_forward_traces_as_one_graph_for_torch_compile(overrides):
    """torch.compile (compile_unet, `cascade bench --compile`) gets the whole UNet as one graph:
    a graph break would silently run part of it eagerly and recompile it per block shape."""
    torch._dynamo.reset()
    unet = build(**overrides).train()
    explanation = torch._dynamo.explain(unet)(**inputs(unet), null_cond=torch.tensor([False, True]))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.slow
def test_compiled_unet_trains_at_a_second_resolution_like_eager():
    """compile_static: a new resolution compiles a static graph of its own. (torch's default
    automatic-dynamic graph failed to compile the backward at the second resolution.)"""
    torch._dynamo.reset()
    eager = build(**SR_CONFIG, resblock_updown=True).train()
    compiled = compile_static(build(**SR_CONFIG, resblock_updown=True).train())
    for batch, size in ((2, 16), (2, 32)):
        values = inputs(eager, batch=batch, height=size, width=size)
        got, expected = compiled(**values), eager(**values)
        got.square().mean().backward()
        expected.square().mean().backward()
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    for (name, mine), reference in zip(compiled.named_parameters(), eager.parameters()):
        torch.testing.assert_close(mine.grad, reference.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_bf16_autocast_forward_backward():
    unet = build(**CLASS_CONFIG, **TEXT_CONFIG).train()
    values = inputs(unet)
    with torch.no_grad():
        reference = unet(**values)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = unet(**values, null_cond=torch.tensor([False, True]))
    out.float().square().mean().backward()
    assert torch.isfinite(out).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in unet.parameters())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low_precision = unet(**values).float()
    relative_error = (low_precision - reference).norm() / reference.norm()
    assert relative_error < 0.05


# ---- input and configuration checks --------------------------------------------------------


def test_wrong_inputs_raise_clear_errors():
    sr = build(**SR_CONFIG)
    values = inputs(sr)
    with pytest.raises(ValueError, match="lowres"):
        sr(**{**values, "lowres": None})
    with pytest.raises(ValueError, match="upsampled"):
        sr(**{**values, "lowres": values["lowres"][:, :, ::2, ::2]})
    with pytest.raises(ValueError, match="aug_cond"):
        sr(**{**values, "aug_cond": None})
    with pytest.raises(ValueError, match="class-conditional"):
        sr(**values, class_labels=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        sr(**inputs(sr, height=15, width=15))
    with pytest.raises(ValueError, match="text_tokens"):
        sr(**{**values, "text_tokens": values["text_tokens"][..., :4]})


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(attention_resolutions=(4,)), "not level resolutions"),
        (dict(cross_attention_resolutions=(8,)), "text_dim"),
        (dict(num_res_blocks=[1, 2, 3]), "num_res_blocks"),
        (dict(base_channels=12), "norm_groups"),
        (dict(time_embedding="learned"), "time_embedding"),
        (dict(image_size=17), "divisible"),
        (dict(coordinate_channels="yes"), "coordinate_channels must be true or false, got 'yes'"),
        (dict(qk_norm=1), "qk_norm must be true or false, got 1"),
        (dict(text_positions=-1, **TEXT_CONFIG), "text_positions must be an int >= 0, got -1"),
        (dict(text_positions=8, text_dim=TEXT_DIM), "text_positions needs attention that reads text"),
        (dict(text_refiner_layers=True, **TEXT_CONFIG), "text_refiner_layers must be an int >= 0, got True"),
        (dict(text_refiner_layers=-2, **TEXT_CONFIG), "text_refiner_layers must be an int >= 0, got -2"),
        (dict(text_refiner_layers=1, text_dim=TEXT_DIM), "text_refiner_layers needs attention that reads text"),
        (dict(text_refiner_pooled=True, **TEXT_CONFIG), "text_refiner_pooled needs text_refiner_layers > 0"),
        (dict(text_refiner_pooled="yes", text_refiner_layers=1, **TEXT_CONFIG), "text_refiner_pooled must be true or false"),
        (dict(text_layout_resolution=True, **TEXT_CONFIG), "text_layout_resolution must be an int >= 0, got True"),
        (dict(text_layout_resolution=4, **TEXT_CONFIG), r"text_layout_resolution 4 is not a level resolution \[16, 8\]"),
        (dict(text_layout_resolution=8, text_dim=TEXT_DIM), "text_layout_resolution needs attention that reads text"),
        (dict(text_layout_head=True, **TEXT_CONFIG), "text_layout_head needs text_layout_resolution > 0"),
        (dict(text_layout_head=1, text_layout_resolution=8, **TEXT_CONFIG), "text_layout_head must be true or false"),
    ],
)
def test_invalid_config_raises(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_config_accepts_lists_from_yaml():
    config = tiny_config(channel_mults=[1, 2], attention_resolutions=[8], num_res_blocks=[1, 3])
    assert config.channel_mults == (1, 2)
    assert config.res_blocks_per_level == [1, 3]
    unet = UNet(config)
    assert len(unet.down_blocks) == 1 + 1 + 3  # level 0: block + downsample; level 1: 3 blocks


# ---- reference configurations and `cascade model-info` -------------------------------------


@pytest.mark.parametrize("path", REFERENCE_CONFIGS, ids=lambda path: path.relative_to(REPO / "configs").as_posix())
def test_reference_config_builds_through_jsonargparse(path):
    """The `unet:` section (image_size linked from the stage's) parses into UNetConfig the way
    LightningCLI parses it, and builds."""
    from jsonargparse import ArgumentParser

    section = stage_config_of(yaml.safe_load(path.read_text()))["init_args"]["unet"]
    parser = ArgumentParser()
    parser.add_argument("--unet", type=UNetConfig)
    config = parser.instantiate(parser.parse_object({"unet": section})).unet
    assert isinstance(config, UNetConfig)
    with torch.device("meta"):
        parameters = sum(p.numel() for p in UNet(config).parameters())
    if path.parent.name == "demo":
        assert parameters < 5e6
    else:
        assert 2e8 < parameters < 1e9


def test_sr1024_config_has_no_self_attention_and_cross_attention_only_at_lowest_resolution():
    section = stage_config_of(yaml.safe_load((REPO / "configs" / "sr1024.yaml").read_text()))["init_args"]["unet"]
    config = UNetConfig(**section)
    assert config.image_size == 1024
    assert config.attention_resolutions == ()
    assert config.cross_attention_resolutions == (config.level_resolutions[-1],)


def test_model_info_prints_parameter_counts(capsys):
    assert model_info([str(REPO / "configs" / "demo" / "base.yaml")]) == 0
    printed = capsys.readouterr().out
    assert "base.yaml" in printed and "BaseStage" in printed and " M" in printed


def test_model_info_is_a_cascade_subcommand(capsys, tmp_path):
    from cascade.cli import main as cascade_main

    broken = tmp_path / ("a-folder-name-long-enough-to-pass-a-terminal-width-" * 2) / "broken.yaml"
    broken.parent.mkdir()
    broken.write_text("model:\n  init_args: {}\n")
    assert cascade_main(["model-info", str(REPO / "configs" / "demo" / "sr1.yaml"), str(broken)]) == 1
    captured = capsys.readouterr()
    assert "SuperResStage" in captured.out
    assert captured.err.splitlines() == [f"{broken}: no `model.init_args.unet` (or `model.unet`) section"]


def test_stage_yaml_reader_takes_both_model_layouts_and_names_what_is_missing(capsys, tmp_path):
    from cascade.nn import count_parameters
    from cascade.stages.export import read_stage_config

    unet = {"image_size": 16, "base_channels": 8, "channel_mults": [1, 2], "attention_resolutions": [], "norm_groups": 4}
    lightning = {"model": {"class_path": "cascade.stages.BaseStage", "init_args": {"unet": unet, "image_size": 16}}}
    flat = {"model": {"class_path": "cascade.stages.BaseStage", "unet": unet, "image_size": 16}}
    for name, config in (("lightning.yaml", lightning), ("flat.yaml", flat)):
        (tmp_path / name).write_text(yaml.safe_dump(config))
        assert read_stage_config(tmp_path / name) == {"class_path": "cascade.stages.BaseStage",
                                                      "init_args": {"unet": unet, "image_size": 16}}
    (tmp_path / "classless.yaml").write_text(yaml.safe_dump({"model": {"unet": unet}}))
    with pytest.raises(ValueError, match="classless.yaml: the `model:` section has no class_path"):
        read_stage_config(tmp_path / "classless.yaml")
    (tmp_path / "empty.yaml").write_text("trainer: {}\n")
    with pytest.raises(ValueError, match="empty.yaml: no `model:` section"):
        read_stage_config(tmp_path / "empty.yaml")
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump({"model": {"unet": {**unet, "base_chanels": 8}}}))

    paths = [str(tmp_path / name) for name in ("lightning.yaml", "flat.yaml", "classless.yaml", "typo.yaml")]
    assert model_info(paths) == 1
    captured = capsys.readouterr()
    expected = f"{count_parameters(UNet(UNetConfig(**unet))) / 1e6:,.1f} M"
    assert captured.out.count("BaseStage") == 2 and captured.out.count(expected) == 3  # the class-less row: "?"
    assert "typo.yaml" in captured.err and "unet.base_chanels" in captured.err
