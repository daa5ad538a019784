"""AdamW (or Muon for the hidden weight matrices) with linear warm-up and a cosine or constant
learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim.adamw import adamw  # the functional form torch.optim.AdamW steps with

LR_SCHEDULES = ("cosine", "constant")
ALGORITHMS = ("adamw", "muon")
MUON_UNDER_FSDP = "must be adamw with FSDP2Strategy (Muon orthogonalises whole matrices, each rank holds shards)"
# Newton-Schulz quintic coefficients (Jordan et al. 2024): the slope at 0 is maximised, so 5 steps take
# every singular value of a normalised matrix into about [0.7, 1.2] instead of exactly to 1.
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW (Loshchilov & Hutter 2019) settings and the learning-rate schedule.

    lr: peak learning rate, reached after `warmup_steps` optimiser steps of linear warm-up.
    schedule: "cosine" decays to `min_lr_ratio * lr` at `total_steps` (None: the trainer's
      max_steps); "constant" stays at `lr` after warm-up.
    weight_decay: applied to weight matrices and kernels only (not biases, norms, embeddings' 1-D
      parameters).
    algorithm: "adamw", or "muon": the weights of the network's hidden linear and convolution layers
      take Muon's orthogonalised momentum (`Muon`), everything else (the first and last layers,
      biases, norms, embeddings, learned tokens) AdamW with the settings above, at the same lr.
    muon_momentum: Muon's (Nesterov) momentum.
    """

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 1000
    schedule: str = "constant"
    min_lr_ratio: float = 0.0
    total_steps: int | None = None
    algorithm: str = "adamw"
    muon_momentum: float = 0.95


def check_optimizer_config(config: OptimizerConfig) -> list[tuple[str, str]]:
    """Problems as (key, message) pairs; empty when the config is valid."""
    problems = []
    if not config.lr > 0:
        problems.append(("optimizer.lr", f"must be > 0, got {config.lr}"))
    if config.warmup_steps < 0:
        problems.append(("optimizer.warmup_steps", f"must be >= 0, got {config.warmup_steps}"))
    if config.schedule not in LR_SCHEDULES:
        problems.append(("optimizer.schedule", f"must be one of {LR_SCHEDULES}, got {config.schedule!r}"))
    if not 0.0 <= config.min_lr_ratio <= 1.0:
        problems.append(("optimizer.min_lr_ratio", f"must be in [0, 1], got {config.min_lr_ratio}"))
    if config.total_steps is not None and config.total_steps < 1:
        problems.append(("optimizer.total_steps", f"must be >= 1 or null, got {config.total_steps}"))
    if config.weight_decay < 0:
        problems.append(("optimizer.weight_decay", f"must be >= 0, got {config.weight_decay}"))
    if config.algorithm not in ALGORITHMS:
        problems.append(("optimizer.algorithm", f"must be one of {ALGORITHMS}, got {config.algorithm!r}"))
    if not 0.0 <= config.muon_momentum < 1.0:
        problems.append(("optimizer.muon_momentum", f"must be in [0, 1), got {config.muon_momentum}"))
    return problems


def lr_multiplier(step: int, warmup_steps: int, schedule: str, total_steps: int | None, min_lr_ratio: float) -> float:
    """The factor on the peak learning rate after `step` optimiser steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or total_steps is None or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def decay_groups(params: list[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    """Parameter groups: decayed (>= 2-D tensors: matrices, kernels) and not decayed (biases, norms'
    gains); an empty group is left out."""
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_adamw(named_parameters: list[tuple[str, torch.nn.Parameter]], config: OptimizerConfig) -> torch.optim.AdamW:
    """Fused AdamW with two parameter groups (`decay_groups`).

    Fused on every device: one kernel per step, and it honours `optimizer.found_inf`, which
    `DiffusionStage` sets to skip a non-finite step without a host sync."""
    params = [p for _, p in named_parameters if p.requires_grad]
    return torch.optim.AdamW(
        decay_groups(params, config.weight_decay),
        lr=config.lr,
        betas=tuple(config.betas),
        eps=config.eps,
        fused=True,
    )


def orthogonalize(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """About U V^T for each matrix G = U S V^T of a (..., rows, columns) batch, by `steps` Newton-Schulz
    iterations X <- a X + (b X X^T + c (X X^T)^2) X (Jordan et al. 2024), in float32."""
    a, b, c = NEWTON_SCHULZ
    X = G.float()
    tall = X.shape[-2] > X.shape[-1]
    if tall:  # iterate on the smaller Gram matrix
        X = X.mT
    # Frobenius >= spectral norm: every singular value <= 1
    X = X / (torch.linalg.matrix_norm(X, keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return X.mT if tall else X


class Muon(torch.optim.Optimizer):
    """Muon (Jordan et al. 2024) for groups with `muon: True`, with the update scaled to AdamW's RMS
    (Liu et al. 2025, "Muon is Scalable for LLM Training": 0.2 sqrt(max(rows, columns))) so that both
    share one learning rate and weight decay; torch's fused AdamW for the other groups.

    Like the fused AdamW it honours `found_inf` (set by `DiffusionStage.on_before_optimizer_step`):
    when 1, no parameter, momentum or step count changes, without a host sync.
    """

    read_cpu_flag = True  # False: keep even a CPU `found_inf` on the device path (torch.where), as on a GPU

    def __init__(self, params, lr: float, momentum: float = 0.95, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, ns_steps: int = 5):
        defaults = dict(lr=lr, momentum=momentum, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        ns_steps=ns_steps, muon=False)
        super().__init__(params, defaults)
        self.found_inf: torch.Tensor | None = None

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params and group["muon"]:
                self._muon_step(group, params)
            elif params:
                self._adamw_step(group, params)
        return loss

    def _muon_step(self, group: dict, params: list[torch.Tensor]) -> None:
        mu, lr, decay = group["momentum"], group["lr"], group["weight_decay"]
        skip = self.found_inf
        if skip is not None and skip.device.type == "cpu" and self.read_cpu_flag:  # read: no device to sync
            if skip.item():
                return
            skip = None
        keep = None if skip is None else skip.to(params[0].device).bool()
        grads = [p.grad for p in params]
        bufs = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(p)) for p in params]
        # m <- mu m + g; the Nesterov direction g + mu m
        if keep is None:
            torch._foreach_mul_(bufs, mu)
            torch._foreach_add_(bufs, grads)
        else:
            for buf, grad in zip(bufs, grads):
                buf.copy_(torch.where(keep, buf, mu * buf + grad))
        directions = torch._foreach_add(grads, bufs, alpha=mu)
        # orthogonalised as (output channels, the rest) matrices, one batch per matrix shape, and scaled
        # to AdamW's update RMS: 0.2 sqrt(max(rows, columns))
        by_shape: dict[tuple[int, int], list[int]] = {}
        for index, p in enumerate(params):
            by_shape.setdefault((p.shape[0], p[0].numel()), []).append(index)
        steps = [None] * len(params)
        for shape, indices in by_shape.items():
            matrices = torch.stack([directions[i].reshape(shape) for i in indices])
            update = orthogonalize(matrices, group["ns_steps"]).mul_(lr * 0.2 * math.sqrt(max(shape)))
            for index, matrix in zip(indices, update):
                steps[index] = matrix.reshape(params[index].shape).to(params[index].dtype)
        if keep is None:
            if decay:
                torch._foreach_mul_(params, 1.0 - lr * decay)
            torch._foreach_sub_(params, steps)
        else:
            for p, step in zip(params, steps):
                p.copy_(torch.where(keep, p, p * (1.0 - lr * decay) - step))

    def _adamw_step(self, group: dict, params: list[torch.Tensor]) -> None:
        for p in params:
            if not self.state[p]:
                self.state[p].update(step=torch.zeros((), dtype=torch.float32, device=p.device),
                                     exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        states = [self.state[p] for p in params]
        adamw(
            params, [p.grad for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
            [], [s["step"] for s in states], fused=True, found_inf=self.found_inf, amsgrad=False,
            beta1=group["betas"][0], beta2=group["betas"][1], lr=group["lr"], weight_decay=group["weight_decay"],
            eps=group["eps"], maximize=False,
        )


def build_muon(module: torch.nn.Module, config: OptimizerConfig, io_layers: tuple[str, ...]) -> Muon:
    """Muon for the weights of `module`'s linear and convolution layers but `io_layers` (the first and
    last: Muon is for hidden layers); AdamW for the rest, in `decay_groups` as `build_adamw`."""
    excluded = set()
    for name in io_layers:  # a dotted name reaches a submodule's layer
        try:
            excluded.add(id(module.get_submodule(name)))
        except AttributeError:  # a layer this module does not have (or holds as None)
            pass
    hidden = [m.weight for m in module.modules()
              if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d))
              and id(m) not in excluded and m.weight.requires_grad]
    hidden_ids = {id(p) for p in hidden}
    rest = [p for p in module.parameters() if p.requires_grad and id(p) not in hidden_ids]
    groups = [{"params": hidden, "muon": True, "weight_decay": config.weight_decay}] if hidden else []
    return Muon(groups + decay_groups(rest, config.weight_decay), lr=config.lr, momentum=config.muon_momentum,
                betas=config.betas, eps=config.eps)


def build_optimizer(unet: torch.nn.Module, config: OptimizerConfig) -> torch.optim.Optimizer:
    """The optimiser `config.algorithm` names, over a `cascade.nn.unet.UNet`'s parameters (Muon: all but
    its first layer, `conv_in`, the layers that paint images, `conv_out` and `layout_head`, and the layout
    choices' output layers: the classifier's, `layout_choice`, and the gates', `text_layout.choice_gates`)."""
    if config.algorithm == "muon":
        return build_muon(unet, config, io_layers=("conv_in", "conv_out", "layout_head", "layout_choice",
                                                   "text_layout.choice_gates"))
    return build_adamw(list(unet.named_parameters()), config)


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, config: OptimizerConfig, total_steps: int | None
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LambdaLR following `lr_multiplier`; its state (last step) is checkpointed."""

    def multiplier(step: int) -> float:
        return lr_multiplier(step, config.warmup_steps, config.schedule, total_steps, config.min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
