"""Side by side with imagen-pytorch (the optional `bench` extra) and diffusers'
`UNet2DConditionModel` (a dev dependency), in the same process and harness.

The peer is imagen-pytorch's `Unet` built to match a text-conditional base stage of ours: same
resolution, levels and channel multipliers, residual blocks per level, self- and
cross-attention at the same resolutions, head size, text width and text length, and a base
width chosen so that the parameter counts agree within `PARAMETER_TOLERANCE` (toy models may
not get that close; each record says whether they did).

Both models are timed interleaved (ours, peer, ours, peer, ...) with the same batch, precision
and memory format:
- train step: zero grads, forward with CFG dropout of the text, the same loss function
  (`cascade.diffusion.diffusion_loss`: MSE on the stage's target at the same t and noise),
  backward, fused AdamW step for both;
- CFG sampling step: one guided denoiser evaluation, ours through `make_denoiser` (conditional
  and null rows in one batched forward), the peer through its `forward_with_cond_scale` (two
  forwards, as imagen-pytorch samples).

diffusers' `UNet2DConditionModel` (the Stable Diffusion / DeepFloyd IF UNet) is matched the same
way (`matched_diffusers_kwargs`): levels, channel multipliers, residual blocks per level, a
cross-attention transformer block (self-attention, cross-attention, feed-forward) at each level
where ours attends, the same head size, text width and norm groups, and the base width whose
parameter count is closest to ours. It has no learned null condition: CFG dropout zeroes the
text tokens of the dropped rows. `run_train_step_peers` times our train step and each
installed peer's interleaved in one process (peers that are not installed get a record saying
why).
"""

from __future__ import annotations

import contextlib
import io
import statistics
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from types import ModuleType

import torch

from ..diffusion import diffusion_loss, q_sample
from ..nn import UNet, UNetConfig, count_parameters
from ..stages.base_stage import BaseStage
from ..stages.diffusion_stage import DiffusionStage
from .flops import count_flops
from .harness import Timing, measure_interleaved
from .stage_inputs import SpeedSettings, load_stage, random_condition, text_length
from .train_step import prepare_train_step

PARAMETER_TOLERANCE = 0.10
INSTALL_HINT = "pip install 'cascade-diffusion[bench]'  (or: pip install imagen-pytorch)"
# imagen-pytorch reads this T5 config from the Hugging Face Hub at import time, only to set a
# default argument (the text width) that the benchmark always passes explicitly.
_IMAGEN_DEFAULT_T5 = "google/t5-v1_1-base"
_T5_BASE_WIDTH = 768


class PeerUnavailable(RuntimeError):
    """imagen-pytorch is not installed (or cannot be imported)."""


def import_imagen() -> ModuleType:
    """The `imagen_pytorch` module, importable offline; PeerUnavailable when it is missing."""
    try:
        import transformers
    except ImportError as error:
        raise PeerUnavailable(f"imagen-pytorch needs transformers: {error}") from error
    original = transformers.T5Config.from_pretrained

    def offline_from_pretrained(cls, name, *args, **kwargs):
        if name == _IMAGEN_DEFAULT_T5:
            return cls(d_model=_T5_BASE_WIDTH)
        return original.__func__(cls, name, *args, **kwargs)

    transformers.T5Config.from_pretrained = classmethod(offline_from_pretrained)
    try:
        with warnings.catch_warnings():  # its deprecated torch APIs (jit.script, cuda.amp)
            warnings.simplefilter("ignore", FutureWarning)
            import imagen_pytorch
    except ImportError as error:
        raise PeerUnavailable(
            f"the peer comparison needs imagen-pytorch, which is not installed ({error}). Install it with: {INSTALL_HINT}"
        ) from error
    finally:
        transformers.T5Config.from_pretrained = original
    return imagen_pytorch


def _imagen_unet(imagen: ModuleType, device: torch.device | str, **kwargs) -> torch.nn.Module:
    # redirect: its advice to use a wider base, printed once
    with contextlib.redirect_stdout(io.StringIO()), torch.device(device):
        return imagen.Unet(**kwargs)


def matched_imagen_kwargs(
    imagen: ModuleType, config: UNetConfig, text_tokens: int, memory_efficient: bool = False
) -> dict:
    """imagen-pytorch `Unet` arguments matching `config` (see the module docstring); the base
    width `dim` is the multiple of 8 (its GroupNorms have 8 groups) whose parameter count is
    closest to ours. Tiny models may miss PARAMETER_TOLERANCE: the records show the ratio.

    `memory_efficient` builds its Unet with `memory_efficient=True`, imagen-pytorch's form of
    the Efficient U-Net block order (Saharia et al. 2022, appendix B.1: each level downsamples
    before its blocks), the peer of our `block_order: "efficient"`; it also adds one residual
    block at full resolution after its first convolution. Its attention flags are per level, so
    they follow ours level by level (`config.level_resolutions`) in either order."""
    deepest = config.level_channels[-1]
    heads = config.heads_for(deepest)
    kwargs = {
        "dim_mults": tuple(config.channel_mults),
        "num_resnet_blocks": tuple(config.res_blocks_per_level),
        "layer_attns": tuple(r in config.attention_resolutions for r in config.level_resolutions),
        "layer_cross_attns": tuple(r in config.cross_attention_resolutions for r in config.level_resolutions),
        "attend_at_middle": config.level_resolutions[-1] in config.attention_resolutions,
        "attn_heads": max(heads, 2),
        "attn_dim_head": deepest // heads,
        "text_embed_dim": config.text_dim,
        "max_text_len": text_tokens,
        "channels": config.in_channels,
        "dropout": config.dropout,
    }
    if memory_efficient:
        kwargs["memory_efficient"] = True
    with torch.device("meta"):
        target = count_parameters(UNet(config))

    def count(dim: int) -> int:
        return count_parameters(_imagen_unet(imagen, "meta", dim=dim, **kwargs))

    low, high = 1, 4 * config.base_channels // 8  # dim = 8 * k; parameters grow with k
    while low < high:
        middle = (low + high) // 2
        if count(8 * middle) < target:
            low = middle + 1
        else:
            high = middle
    candidates = [k for k in (low - 1, low) if k >= 1]
    dim = 8 * min(candidates, key=lambda k: abs(count(8 * k) - target))
    return {"dim": dim, **kwargs}


class _PeerTrainStep(ABC):
    """The train step every peer shares with our stage: t ~ U(0, 1), x_t = q_sample, the stage's
    loss on the peer's prediction (`predict`, which each peer defines), one fused AdamW step."""

    unet: torch.nn.Module
    optimizer: torch.optim.Optimizer
    stage: DiffusionStage
    settings: SpeedSettings

    @abstractmethod
    def predict(self, x_t: torch.Tensor, t: torch.Tensor, batch: dict) -> torch.Tensor:
        """The peer network's prediction of the stage's target for x_t at time t."""

    def train_step(self, batch: dict) -> torch.Tensor:
        """One optimiser step on `batch` with the stage's schedule, target and loss weighting."""
        stage, x0 = self.stage, batch["image"]
        self.optimizer.zero_grad(set_to_none=True)
        with self.settings.autocast(x0.device):
            t = torch.rand(x0.shape[0], device=x0.device)
            noise = torch.randn_like(x0)
            x_t = q_sample(x0, t, stage.schedule, noise)
            prediction = self.predict(x_t, t, batch)
            loss = diffusion_loss(
                prediction, x0, noise, t, stage.schedule, stage.target, stage.loss_weighting, stage.min_snr_gamma
            ).mean()
        loss.backward()
        self.optimizer.step()
        return loss.detach()


class PeerModel(_PeerTrainStep):
    """imagen-pytorch's Unet with an AdamW, fed the same inputs as our stage."""

    def __init__(self, imagen: ModuleType, kwargs: dict, stage: DiffusionStage, settings: SpeedSettings):
        self.unet = _imagen_unet(imagen, stage.device, **kwargs)
        settings.apply_memory_format(self.unet)
        self.optimizer = torch.optim.AdamW(
            self.unet.parameters(), lr=stage.optimizer_config.lr, fused=True
        )
        self.stage = stage
        self.settings = settings

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, batch: dict) -> torch.Tensor:
        """imagen-pytorch's own CFG dropout (cond_drop_prob = the stage's p_uncond), time t."""
        return self.unet(x_t, t, text_embeds=batch["text_tokens"], text_mask=batch["text_mask"],
                         cond_drop_prob=self.stage.p_uncond)

    @torch.no_grad()
    def guided_step(self, x_t: torch.Tensor, t: torch.Tensor, tokens, mask, guidance: float) -> torch.Tensor:
        with self.settings.autocast(x_t.device):
            return self.unet.forward_with_cond_scale(x_t, t, text_embeds=tokens, text_mask=mask, cond_scale=guidance)


def run_peer_benchmark(
    config: str | Path,
    device: torch.device,
    settings: SpeedSettings,
    batch_size: int,
    guidance: float,
    warmup: int,
    iters: int,
    seed: int = 0,
    peer_memory_efficient: bool = False,
) -> list[dict]:
    """Our stage vs the matched imagen-pytorch Unet: a train-step and a CFG-step record.
    `peer_memory_efficient`: build the peer with imagen-pytorch's `memory_efficient=True`."""
    imagen = import_imagen()
    stage = load_stage(config, device, seed)
    if not (isinstance(stage, BaseStage) and stage.conditioning == "text"):
        raise ValueError(f"{config}: the peer comparison needs a text-conditional base stage")
    length = text_length(stage)
    kwargs = matched_imagen_kwargs(imagen, stage.unet.config, length, peer_memory_efficient)
    torch.manual_seed(seed)
    peer = PeerModel(imagen, kwargs, stage, settings)
    ours = prepare_train_step(stage, batch_size, None, settings, seed)
    common = {
        "config": str(config),
        "batch": batch_size,
        "resolution": stage.image_size,
        "text_tokens": length,
        **settings.describe(),
        "ours_parameters_m": count_parameters(stage.unet) / 1e6,
        "peer_parameters_m": count_parameters(peer.unet) / 1e6,
        "parameters_matched": abs(count_parameters(peer.unet) / count_parameters(stage.unet) - 1) <= PARAMETER_TOLERANCE,
        "peer": f"imagen-pytorch {imagen.__version__}",
        "peer_unet_kwargs": {key: list(value) if isinstance(value, tuple) else value for key, value in kwargs.items()},
        "warmup": warmup,
        "iters": iters,
    }

    train_fns = {"ours": ours.step, "peer": lambda: peer.train_step(ours.batch)}

    generator = torch.Generator().manual_seed(seed)
    condition = random_condition(stage, batch_size, generator)
    denoise = stage.make_denoiser(condition, guidance=guidance)
    x_t = settings.image(torch.randn(batch_size, 3, stage.image_size, stage.image_size, generator=generator).to(device))
    t = torch.full((batch_size,), 0.5, device=device)

    def our_guided_step() -> torch.Tensor:
        with settings.autocast(device):
            return denoise(x_t, t)

    sample_fns = {
        "ours": our_guided_step,
        "peer": lambda: peer.guided_step(x_t, t, condition.text_tokens, condition.text_mask, guidance),
    }
    # FLOPs of the eager models (dropout is 0, so train and eval mode do the same arithmetic)
    train_flops = {name: count_flops(fn) for name, fn in train_fns.items()}
    sample_flops = {name: count_flops(fn) for name, fn in sample_fns.items()}

    settings.apply_compile(stage.unet)
    settings.apply_compile(peer.unet)
    train = measure_interleaved(train_fns, device, warmup, iters)
    stage.eval()
    peer.unet.eval()
    sample = measure_interleaved(sample_fns, device, warmup, iters)

    def record(benchmark: str, timings: dict, flops: dict) -> dict:
        ours_ms, peer_ms = timings["ours"].median_ms, timings["peer"].median_ms
        return {
            "benchmark": benchmark,
            **common,
            "ours_ms": ours_ms,
            "peer_ms": peer_ms,
            "ours_ms_all": [round(x, 3) for x in timings["ours"].times_ms],
            "peer_ms_all": [round(x, 3) for x in timings["peer"].times_ms],
            # the first call of each, torch.compile's compilation included when --compile is on
            "ours_first_call_ms": timings["ours"].first_call_ms,
            "peer_first_call_ms": timings["peer"].first_call_ms,
            "speedup_vs_peer": peer_ms / ours_ms,
            # robust to load that changes between rounds: each round times both back to back
            "speedup_per_round_median": statistics.median(
                p / o for o, p in zip(timings["ours"].times_ms, timings["peer"].times_ms)
            ),
            "ours_gflops": flops["ours"] / 1e9,
            "peer_gflops": flops["peer"] / 1e9,
        }

    return [
        record("peer_train_step", train, train_flops),
        {**record("peer_cfg_step", sample, sample_flops), "guidance": guidance},
    ]


def import_diffusers() -> ModuleType:
    """The `diffusers` module; PeerUnavailable when it is missing."""
    try:
        import diffusers
    except ImportError as error:
        raise PeerUnavailable(
            f"the diffusers peer needs diffusers, which is not installed ({error}). Install it with: pip install diffusers"
        ) from error
    return diffusers


def _diffusers_unet(diffusers: ModuleType, device: torch.device | str, kwargs: dict) -> torch.nn.Module:
    with torch.device(device):
        return diffusers.UNet2DConditionModel(**kwargs)


def matched_diffusers_kwargs(diffusers: ModuleType, config: UNetConfig) -> dict:
    """`UNet2DConditionModel` arguments matching `config` (see the module docstring). The base
    width is a multiple of 8 (a multiple of our 32 norm groups steps the count by ~30% at 600M
    parameters); the norm groups are the largest divisor of it up to ours, and each level's heads
    (diffusers' `attention_head_dim` is the number of heads) the divisor of its width whose head
    size is closest to ours."""
    attends = [r in config.attention_resolutions or r in config.cross_attention_resolutions
               for r in config.level_resolutions]
    step = 8
    kwargs = {
        "sample_size": config.image_size,
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "down_block_types": tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attends),
        "up_block_types": tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attends)),
        "mid_block_type": "UNetMidBlock2DCrossAttn" if attends[-1] else "UNetMidBlock2D",
        "layers_per_block": tuple(config.res_blocks_per_level),
        "cross_attention_dim": config.text_dim,
        "dropout": config.dropout,
    }

    def with_width(k: int) -> dict:
        widths = tuple(step * k * m for m in config.channel_mults)
        groups = max(g for g in range(1, config.norm_groups + 1) if widths[0] % g == 0)
        return {**kwargs, "block_out_channels": widths, "norm_num_groups": groups,
                "attention_head_dim": tuple(_heads(w, config.head_channels) for w in widths)}

    with torch.device("meta"):
        target = count_parameters(UNet(config))

    def count(k: int) -> int:
        return count_parameters(_diffusers_unet(diffusers, "meta", with_width(k)))

    low, high = 1, max(2, 4 * config.base_channels // step)
    while low < high:
        middle = (low + high) // 2
        if count(middle) < target:
            low = middle + 1
        else:
            high = middle
    candidates = [k for k in (low - 1, low) if k >= 1]
    return with_width(min(candidates, key=lambda k: abs(count(k) - target)))


def _heads(width: int, head_channels: int) -> int:
    """The number of heads that divides `width` with a head size closest to `head_channels`."""
    return min((h for h in range(1, width + 1) if width % h == 0), key=lambda h: abs(width / h - head_channels))


class DiffusersPeer(_PeerTrainStep):
    """diffusers' UNet2DConditionModel with a fused AdamW, fed the same batch as our stage."""

    def __init__(self, diffusers: ModuleType, kwargs: dict, stage: DiffusionStage, settings: SpeedSettings):
        self.unet = _diffusers_unet(diffusers, stage.device, kwargs)
        settings.apply_memory_format(self.unet)
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=stage.optimizer_config.lr, fused=True)
        self.stage = stage
        self.settings = settings

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, batch: dict) -> torch.Tensor:
        """Timestep 1000 t; the text tokens of a p_uncond share of the rows zeroed (CFG dropout)."""
        dropped = torch.rand(x_t.shape[0], device=x_t.device) < self.stage.p_uncond
        tokens = batch["text_tokens"].masked_fill(dropped[:, None, None], 0.0)
        return self.unet(x_t, 1000.0 * t, encoder_hidden_states=tokens,
                         encoder_attention_mask=batch["text_mask"], return_dict=False)[0]


PEERS = ("imagen-pytorch", "diffusers")


def _build_peer(name: str, stage: DiffusionStage, settings: SpeedSettings, seed: int) -> tuple[object, dict, str]:
    """(peer model, its constructor arguments, "package version"); PeerUnavailable if absent."""
    config = stage.unet.config
    if name == "imagen-pytorch":
        imagen = import_imagen()
        kwargs = matched_imagen_kwargs(imagen, config, text_length(stage))
        torch.manual_seed(seed)
        return PeerModel(imagen, kwargs, stage, settings), kwargs, f"imagen-pytorch {imagen.__version__}"
    if name == "diffusers":
        diffusers = import_diffusers()
        kwargs = matched_diffusers_kwargs(diffusers, config)
        torch.manual_seed(seed)
        return DiffusersPeer(diffusers, kwargs, stage, settings), kwargs, f"diffusers {diffusers.__version__}"
    raise ValueError(f"unknown peer {name!r}; choose from {PEERS}")


def run_train_step_peers(
    config: str | Path,
    device: torch.device,
    settings: SpeedSettings,
    batch_size: int,
    warmup: int,
    iters: int,
    seed: int = 0,
    peers: tuple[str, ...] = PEERS,
) -> list[dict]:
    """Our train step and each peer's on the same batch, timed interleaved (ours, peer 1, peer
    2, ours, ...): one "peer_train_step" record per peer, with `skipped` set for a peer whose
    package is not installed."""
    stage = load_stage(config, device, seed)
    if not (isinstance(stage, BaseStage) and stage.conditioning == "text"):
        raise ValueError(f"{config}: the peer comparison needs a text-conditional base stage")
    ours = prepare_train_step(stage, batch_size, None, settings, seed)
    common = {"benchmark": "peer_train_step", "config": str(config), "batch": batch_size,
              "resolution": stage.image_size, "text_tokens": text_length(stage), **settings.describe(),
              "ours_parameters_m": count_parameters(stage.unet) / 1e6}
    fns, built, records = {"ours": ours.step}, {}, {}
    for name in peers:
        try:
            model, kwargs, version = _build_peer(name, stage, settings, seed)
        except PeerUnavailable as error:
            records[name] = {**common, "peer": name, "skipped": str(error)}
            continue
        built[name] = (model, kwargs, version)
        fns[name] = lambda model=model: model.train_step(ours.batch)
    if built:
        flops = {name: count_flops(fn) for name, fn in fns.items()}
        timings = measure_interleaved(fns, device, warmup, iters)
        for name, (model, kwargs, version) in built.items():
            records[name] = {**common, **_peer_fields(timings["ours"], timings[name], flops["ours"], flops[name]),
                             "peer": version,
                             "peer_parameters_m": count_parameters(model.unet) / 1e6,
                             "parameters_matched": abs(count_parameters(model.unet) / count_parameters(stage.unet) - 1)
                             <= PARAMETER_TOLERANCE,
                             "peer_unet_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
                             "warmup": warmup, "iters": iters}
    return [records[name] for name in peers]


def _peer_fields(ours: Timing, peer: Timing, ours_flops: int, peer_flops: int) -> dict:
    return {
        "ours_ms": ours.median_ms,
        "peer_ms": peer.median_ms,
        "ours_ms_all": [round(x, 3) for x in ours.times_ms],
        "peer_ms_all": [round(x, 3) for x in peer.times_ms],
        "speedup_vs_peer": peer.median_ms / ours.median_ms,
        "speedup_per_round_median": statistics.median(p / o for o, p in zip(ours.times_ms, peer.times_ms)),
        "ours_gflops": ours_flops / 1e9,
        "peer_gflops": peer_flops / 1e9,
    }
