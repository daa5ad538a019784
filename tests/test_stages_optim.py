"""Muon (`optimizer.algorithm: muon`): its Newton-Schulz map in closed form, its step against
torch.optim.Muon and torch's AdamW, the on-device skip, which parameters it takes."""

from __future__ import annotations

import math

import pytest
import torch

from cascade.nn.unet import UNet, UNetConfig
from cascade.stages.optim import (
    NEWTON_SCHULZ,
    Muon,
    OptimizerConfig,
    build_optimizer,
    check_optimizer_config,
    orthogonalize,
)


def newton_schulz_of_a_singular_value(s: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The quintic x <- a x + b x^3 + c x^5 applied to a singular value, `steps` times."""
    a, b, c = NEWTON_SCHULZ
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return s


@pytest.mark.parametrize("shape", [(16, 48), (48, 16), (3, 32, 144)], ids=["wide", "tall", "batch"])
def test_newton_schulz_maps_each_singular_value_by_its_polynomial_and_keeps_the_singular_vectors(shape):
    # G = U S V^T with chosen singular values; the iteration is an odd matrix polynomial, so it maps
    # G / |G|_F to U p(S / |G|_F) V^T exactly (up to float32 rounding), each matrix of a batch alone
    generator = torch.Generator().manual_seed(0)
    *batch, rows, columns = shape
    k = min(rows, columns)
    U = torch.linalg.qr(torch.randn(*batch, rows, k, generator=generator, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(*batch, columns, k, generator=generator, dtype=torch.float64))[0]
    S = torch.logspace(-2, 1, k, dtype=torch.float64) * torch.arange(1, 1 + math.prod(batch)).reshape(*batch, 1)
    G = (U * S.unsqueeze(-2)) @ V.mT
    expected = (U * newton_schulz_of_a_singular_value(S / S.norm(dim=-1, keepdim=True)).unsqueeze(-2)) @ V.mT
    O = orthogonalize(G.float())
    assert O.shape == shape and O.dtype == torch.float32
    torch.testing.assert_close(O.double(), expected, atol=2e-5, rtol=1e-4)
    # and the quintic takes every singular value above 1.6e-3 of |G|_F into about [0.68, 1.21]
    values = torch.linalg.svdvals(O).flip(-1)  # ascending, as S
    assert values.max() < 1.21 and values[S / S.norm(dim=-1, keepdim=True) > 1.6e-3].min() > 0.68


def test_muon_steps_agree_with_torch_muon_at_adamw_matched_rms():
    # torch.optim.Muon orthogonalises in bfloat16 and keeps its momentum as an average ((1 - mu) times
    # ours, the same direction after the normalisation): the same steps to bfloat16 rounding
    generator = torch.Generator().manual_seed(1)
    start = torch.randn(64, 96, generator=generator)
    ours, theirs = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    lr, weight_decay = 2e-3, 0.1
    mine = Muon([{"params": [ours], "muon": True, "weight_decay": weight_decay}], lr=lr, momentum=0.95)
    reference = torch.optim.Muon([theirs], lr=lr, weight_decay=weight_decay, momentum=0.95, nesterov=True,
                                 adjust_lr_fn="match_rms_adamw")
    for _ in range(3):
        grad = torch.randn(64, 96, generator=generator)
        for parameter, optimizer in ((ours, mine), (theirs, reference)):
            parameter.grad = grad.clone()
            optimizer.step()
    travelled = ours.detach() - start
    # AdamW's update RMS: 0.2 lr per element and step, here 3 steps with the weight decay's share
    assert 0.3 * lr < travelled.pow(2).mean().sqrt() < 0.6 * lr
    assert (ours.detach() - theirs.detach()).abs().max() < 0.03 * travelled.abs().max()


def test_muon_moves_the_other_parameters_exactly_as_torchs_fused_adamw():
    generator = torch.Generator().manual_seed(2)
    starts = [torch.randn(8, generator=generator), torch.randn(4, 8, generator=generator)]
    ours = [torch.nn.Parameter(t.clone()) for t in starts]
    theirs = [torch.nn.Parameter(t.clone()) for t in starts]
    config = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    mine = Muon([{"params": ours[:1], "weight_decay": 0.0}, {"params": ours[1:], "weight_decay": 0.1}], **config)
    reference = torch.optim.AdamW([{"params": theirs[:1], "weight_decay": 0.0},
                                   {"params": theirs[1:], "weight_decay": 0.1}], fused=True, **config)
    for _ in range(4):
        grads = [torch.randn(t.shape, generator=generator) for t in starts]
        for params, optimizer in ((ours, mine), (theirs, reference)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            optimizer.step()
    for a, b in zip(ours, theirs):
        assert torch.equal(a.detach(), b.detach())


@pytest.mark.parametrize("read_cpu_flag", [True, False], ids=["flag read", "on-device path"])
def test_a_muon_step_with_found_inf_changes_no_parameter_momentum_or_step_count(read_cpu_flag, monkeypatch):
    monkeypatch.setattr(Muon, "read_cpu_flag", read_cpu_flag)
    hidden, bias = torch.nn.Parameter(torch.randn(8, 8)), torch.nn.Parameter(torch.randn(8))
    optimizer = Muon([{"params": [hidden], "muon": True, "weight_decay": 0.1}, {"params": [bias]}], lr=1e-2)
    optimizer.found_inf = torch.zeros(())
    hidden.grad, bias.grad = torch.randn(8, 8), torch.randn(8)
    optimizer.step()
    saved = {name: t.detach().clone() for name, t in (("hidden", hidden), ("bias", bias),
                                                      ("momentum", optimizer.state[hidden]["momentum_buffer"]),
                                                      ("exp_avg", optimizer.state[bias]["exp_avg"]),
                                                      ("step", optimizer.state[bias]["step"]))}
    hidden.grad, bias.grad = torch.full((8, 8), float("nan")), torch.full((8,), float("inf"))
    optimizer.found_inf = torch.ones(())
    optimizer.step()
    after = {"hidden": hidden, "bias": bias, "momentum": optimizer.state[hidden]["momentum_buffer"],
             "exp_avg": optimizer.state[bias]["exp_avg"], "step": optimizer.state[bias]["step"]}
    for name, value in after.items():
        assert torch.equal(value.detach(), saved[name]), name


def test_the_on_device_skip_path_steps_exactly_as_the_read_flag_path(monkeypatch):
    generator = torch.Generator().manual_seed(3)
    start, grads = torch.randn(16, 8, 3, 3, generator=generator), [torch.randn(16, 8, 3, 3, generator=generator)
                                                                     for _ in range(3)]
    results = []
    for read_cpu_flag in (True, False):
        monkeypatch.setattr(Muon, "read_cpu_flag", read_cpu_flag)
        weight = torch.nn.Parameter(start.clone())
        optimizer = Muon([{"params": [weight], "muon": True, "weight_decay": 0.1}], lr=1e-2)
        optimizer.found_inf = torch.zeros(())
        for grad in grads:
            weight.grad = grad.clone()
            optimizer.step()
        results.append(weight.detach())
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=1e-7)
    assert not torch.equal(results[0], start)


def test_muon_takes_the_hidden_layers_weights_and_adamw_the_first_and_last_layers_and_the_rest():
    unet = UNet(UNetConfig(image_size=16, base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
                           cross_attention_resolutions=(8,), head_channels=16, norm_groups=8, text_dim=24,
                           text_layout_resolution=8, text_layout_head=True))
    optimizer = build_optimizer(unet, OptimizerConfig(algorithm="muon", lr=1e-3, weight_decay=0.05))
    names = {id(p): n for n, p in unet.named_parameters()}
    muon = [names[id(p)] for g in optimizer.param_groups if g["muon"] for p in g["params"]]
    adamw = [names[id(p)] for g in optimizer.param_groups if not g["muon"] for p in g["params"]]
    assert sorted(muon + adamw) == sorted(names.values())  # each parameter in one group
    assert {"conv_in.weight", "conv_out.weight", "layout_head.weight", "text_conditioning.null_token"} <= set(adamw)
    assert all(n.endswith(".weight") for n in muon) and "time_embedding.mlp.2.weight" in muon
    assert any(".conv_in.weight" in n for n in muon) and any("to_query" in n for n in muon)
    assert {g["weight_decay"] for g in optimizer.param_groups if g["muon"]} == {0.05}
    assert all(g["weight_decay"] == 0.0 for g in optimizer.param_groups if g["params"][0].ndim < 2)


def test_optimizer_settings_name_their_key_when_bad():
    assert check_optimizer_config(OptimizerConfig(algorithm="muon")) == []
    problems = dict(check_optimizer_config(OptimizerConfig(algorithm="lion", muon_momentum=1.0)))
    assert problems["optimizer.algorithm"] == "must be one of ('adamw', 'muon'), got 'lion'"
    assert problems["optimizer.muon_momentum"] == "must be in [0, 1), got 1.0"
