"""Side by side with imagen-pytorch (the optional `bench` extra), in the same process and harness.

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
"""

from __future__ import annotations

import contextlib
import io
import statistics
import warnings
from pathlib import Path
from types import ModuleType

import torch

from ..diffusion import diffusion_loss, q_sample
from ..nn import UNet, UNetConfig, count_parameters
from ..stages.base_stage import BaseStage
from ..stages.diffusion_stage import DiffusionStage

from .flops import count_flops
from .harness import measure_interleaved
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
    with contextlib.redirect_stdout(io.StringIO()):  # its advice to use a wider base, printed once
        with torch.device(device):
            return imagen.Unet(**kwargs)


def matched_imagen_kwargs(imagen: ModuleType, config: UNetConfig, text_tokens: int) -> dict:
    """imagen-pytorch `Unet` arguments matching `config` (see the module docstring); the base
    width `dim` is the multiple of 8 (its GroupNorms have 8 groups) whose parameter count is
    closest to ours. Tiny models may miss PARAMETER_TOLERANCE: the records show the ratio."""
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


class PeerModel:
    """imagen-pytorch's Unet with an AdamW, fed the same inputs as our stage."""

    def __init__(self, imagen: ModuleType, kwargs: dict, stage: DiffusionStage, settings: SpeedSettings):
        self.unet = _imagen_unet(imagen, stage.device, **kwargs)
        settings.apply_memory_format(self.unet)
        self.optimizer = torch.optim.AdamW(
            self.unet.parameters(), lr=stage.optimizer_config.lr, fused=True
        )
        self.stage = stage
        self.settings = settings

    def train_step(self, batch: dict) -> torch.Tensor:
        """One optimiser step on `batch` with the stage's schedule, target and CFG dropout rate."""
        stage, x0 = self.stage, batch["image"]
        self.optimizer.zero_grad(set_to_none=True)
        with self.settings.autocast(x0.device):
            t = torch.rand(x0.shape[0], device=x0.device)
            noise = torch.randn_like(x0)
            x_t = q_sample(x0, t, stage.schedule, noise)
            prediction = self.unet(
                x_t, t, text_embeds=batch["text_tokens"], text_mask=batch["text_mask"], cond_drop_prob=stage.p_uncond
            )
            loss = diffusion_loss(
                prediction, x0, noise, t, stage.schedule, stage.target, stage.loss_weighting, stage.min_snr_gamma
            ).mean()
        loss.backward()
        self.optimizer.step()
        return loss.detach()

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
) -> list[dict]:
    """Our stage vs the matched imagen-pytorch Unet: a train-step and a CFG-step record."""
    imagen = import_imagen()
    stage = load_stage(config, device, seed)
    if not (isinstance(stage, BaseStage) and stage.conditioning == "text"):
        raise ValueError(f"{config}: the peer comparison needs a text-conditional base stage")
    length = text_length(stage)
    kwargs = matched_imagen_kwargs(imagen, stage.unet.config, length)
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
