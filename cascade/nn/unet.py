"""The conditional UNet shared by every stage of the cascade (base 64x64, SR 256, SR 1024).

Architecture: ADM (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis")
with the Efficient U-Net options of Imagen (Saharia et al. 2022, appendix B.1: more residual
blocks at low resolution, skip connections scaled by 1/sqrt(2), no self-attention at high
resolution) and text conditioning as in GLIDE (Nichol et al. 2021) and Imagen.

Block order (`UNetConfig.block_order`): "adm" runs each level's residual blocks at the level's
input resolution and then downsamples (up levels: blocks, then upsample); "efficient" is the
DBlock / UBlock order of Imagen's Efficient U-Net (Saharia et al. 2022, appendix B.1, Figs.
A.28-A.30): each down level downsamples first and runs its blocks at the reduced resolution,
each up level runs its blocks and then upsamples. With the same widths and blocks the two
orders have the same parameters but one resampling layer each way, and the "efficient" order's
blocks see a quarter of the pixels, so a forward costs about a quarter of the FLOPs. Skip
connections pair up level by level in both orders (see `UNetConfig`).

Conditioning:
- one vector per example, the sum of the noise-level embedding, the SR augmentation-level
  embedding, the class embedding and the pooled text, drives every residual block's
  GroupNorm scale and shift;
- text tokens reach the feature maps through cross-attention and/or GLIDE-style
  concatenation to the self-attention keys;
- SR stages concatenate the (upsampled, noise-augmented) low-res image to x_t;
- rows flagged in `null_cond` use learned null class / text conditions (classifier-free
  guidance, Ho & Salimans 2022), mixed per row with torch.where so that every parameter is in
  the autograd graph of every forward pass (DDP with find_unused_parameters=False).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import AttentionBlock
from .config import UNetConfig
from .embeddings import ScalarEmbedding
from .resblock import Downsample, GroupNorm32, ResBlock, Upsample, zero_init
from .text_conditioning import TextConditioning, TextLayout


def compile_static(module: nn.Module, mode: str = "default") -> nn.Module:
    """torch.compile `module` in place (`nn.Module.compile`, so its state_dict keys do not
    change) with static shapes, and return it. `mode`: "default" or a torch.compile mode.

    Each new input shape (the training crop, a sampling size, a batch size) compiles a graph of
    its own instead of torch's automatic dynamic-shape graph: torch 2.14's inductor fails to
    compile the UNet's backward with a symbolic resolution ("cannot determine truth value of
    Relational"), which a second training resolution would trigger, and a diffusion UNet sees
    only a few shapes (torch recompiles up to `torch._dynamo.config.recompile_limit` of them).
    """
    module.compile(mode=None if mode == "default" else mode, dynamic=False)
    return module


def coordinate_grid(x: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) of x's batch size, size, dtype and device: channel 0 is each pixel's x
    coordinate and channel 1 its y, from -1 (left / top pixel centre) to 1 (right / bottom)
    (CoordConv, Liu et al. 2018; `UNetConfig.coordinate_channels`)."""
    batch, _, height, width = x.shape
    ys = torch.linspace(-1.0, 1.0, height, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=x.device, dtype=x.dtype)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"))  # (2, H, W): x varies along W
    return grid.expand(batch, -1, -1, -1)


class LayoutPrediction(NamedTuple):
    """What the caption's layout map paints (`UNet.layout_prediction`): `images` (B, in_channels, r, r),
    or (B, K, in_channels, r, r) with K layout choices, and the choice classifier's `logits` (B, K)
    (None with one layout). With a map that reads x_t, `images` is the refined map's and
    `caption_images` (B, in_channels, r, r) the caption's map's; with gated choices, `caption_images`
    is the one map's the choices gate (None otherwise)."""

    images: torch.Tensor
    logits: torch.Tensor | None = None
    caption_images: torch.Tensor | None = None


def _choice_errors(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, K): the mean squared error of each choice's image (B, K, C, r, r) to the target (B, C, r, r)."""
    return (images.float() - target.float()[:, None]).square().flatten(2).mean(-1)


def nearest_choice(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) long: for each row, the choice whose image (B, K, C, r, r) is nearest (squared error) the
    target (B, C, r, r)."""
    return _choice_errors(images.detach(), target).argmin(dim=1)


def layout_loss(prediction: LayoutPrediction, target: torch.Tensor, relaxation: float = 0.05) -> torch.Tensor:
    """The layout loss: the mean squared error of the layout image to `target` (B, C, r, r), the image
    averaged to r x r. With K choices, relaxed winner-takes-all (Guzman-Rivera et al. 2012, "Multiple
    Choice Learning"; Rupprecht et al. 2017, "Learning in an Uncertain World", eq. 6): the nearest
    choice's error weighs 1 - relaxation and each other's relaxation / (K - 1) (which keeps a choice
    no target is near from being left untrained), plus the cross-entropy of the choice classifier's
    logits on the nearest choice, so that sampling draws each layout as often as the data holds it.
    With a map that reads x_t, the refined map's error plus the caption's map's; with gated choices, the
    one map's own error too."""
    images, logits, caption_images = prediction
    own = 0.0 if caption_images is None else F.mse_loss(caption_images.float(), target.float())
    if logits is None:
        return F.mse_loss(images.float(), target.float()) + own
    choices = images.shape[1]
    errors = _choice_errors(images, target)
    nearest = errors.detach().argmin(dim=1)
    weights = torch.full_like(errors, relaxation / (choices - 1))
    weights.scatter_(1, nearest[:, None], 1.0 - relaxation)
    return (weights * errors).sum(dim=1).mean() + F.cross_entropy(logits.float(), nearest) + own


def paint_choices(layout_head: nn.Conv2d, text_layout: TextLayout, layout_map: torch.Tensor) -> torch.Tensor:
    """The K layout choices' images (B, K, C, r, r): each choice's map (`TextLayout.choice_maps`, scaled
    or gated) painted by `layout_head`."""
    maps = text_layout.choice_maps(layout_map)
    return layout_head(maps.flatten(0, 1)).unflatten(0, maps.shape[:2])


def _add_layout(h: torch.Tensor, layout: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Add the text layout map to the features where they first reach its size (then None: once)."""
    if layout is not None and h.shape[-1] == layout.shape[-1]:
        return h + layout.to(h.dtype), None
    return h, layout


def count_parameters(module: nn.Module) -> int:
    """How many numbers `module`'s parameters hold (also for a module built on the meta device,
    which allocates nothing)."""
    return sum(parameter.numel() for parameter in module.parameters())


class UNetBlock(nn.ModuleList):
    """Layers applied in order; each gets what it needs (ADM's `TimestepEmbedSequential`).

    Residual blocks read the conditioning vector, attention blocks the text context,
    resampling layers only the feature map. One UNetBlock is the unit of gradient checkpointing
    and, on the way down, of the skip connections.
    """

    def forward(
        self,
        h: torch.Tensor,
        embedding: torch.Tensor,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                h = layer(h, embedding)
            elif isinstance(layer, AttentionBlock):
                h = layer(h, context, context_mask)
            else:
                h = layer(h)
        return h


class UNet(nn.Module):
    """Conditional ADM / Efficient U-Net; see `UNetConfig` for every option.

    Call: `unet(x_t, noise_cond, class_labels=None, text_tokens=None, text_mask=None,
    null_cond=None, lowres=None, aug_cond=None) -> (B, out_channels, H, W)`.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        self.gradient_checkpointing = config.gradient_checkpointing
        embedding_channels = config.embedding_channels
        context_channels = embedding_channels if config.uses_text_context else 0

        self.time_embedding = ScalarEmbedding(
            config.base_channels, embedding_channels, config.time_embedding, config.fourier_scale
        )
        self.aug_embedding = (
            ScalarEmbedding(config.base_channels, embedding_channels, config.time_embedding, config.fourier_scale)
            if config.use_aug_cond
            else None
        )
        # The last row is the learned null class for classifier-free guidance.
        self.class_embedding = (
            nn.Embedding(config.num_classes + 1, embedding_channels) if config.num_classes > 0 else None
        )
        self.text_conditioning = (
            TextConditioning(config.text_dim, embedding_channels, context_channels, config.text_positions,
                             config.text_refiner_layers, config.heads_for(embedding_channels), config.text_refiner_pooled)
            if config.text_dim > 0
            else None
        )
        self.text_layout = None
        if config.text_layout_resolution:
            self.text_layout = TextLayout(context_channels, embedding_channels, config.text_layout_resolution,
                                          config.heads_for(embedding_channels), config.text_layout_choices,
                                          config.in_channels if config.text_layout_reads_x_t else 0,
                                          config.text_layout_choice_form)
            # the channels of the features where they first reach the layout's resolution (adm: the
            # level's entry, conv_in's or the previous level's width; efficient: after the level's downsample)
            level = config.level_resolutions.index(config.text_layout_resolution)
            entry = config.base_channels if level == 0 else config.level_channels[level - 1]
            self.layout_in = zero_init(nn.Conv2d(context_channels, entry, 1))
        self.layout_head = nn.Conv2d(context_channels, config.in_channels, 1) if config.text_layout_head else None
        # which of the K layouts a caption takes, from its pooled text (zero-initialised: uniform at first)
        self.layout_choice = zero_init(nn.Linear(embedding_channels, config.text_layout_choices)) \
            if config.text_layout_choices > 1 else None

        def attention_layers(channels: int, resolution: int) -> list[nn.Module]:
            layers: list[nn.Module] = []
            heads = config.heads_for(channels)
            if resolution in config.attention_resolutions:
                concat_text = context_channels if config.text_concat_to_self_attn else 0
                layers.append(AttentionBlock(channels, heads, config.norm_groups, True, concat_text, config.qk_norm))
            if resolution in config.cross_attention_resolutions:
                layers.append(AttentionBlock(channels, heads, config.norm_groups, False, context_channels,
                                             config.qk_norm))
            return layers

        def res_block(in_channels: int, out_channels: int, resample: str | None = None) -> ResBlock:
            return ResBlock(
                in_channels, out_channels, embedding_channels, config.norm_groups, config.dropout, resample
            )

        input_channels = config.in_channels + config.lowres_channels + (2 if config.coordinate_channels else 0)
        self.conv_in = nn.Conv2d(input_channels, config.base_channels, 3, padding=1)

        def downsample(channels: int) -> nn.Module:
            return res_block(channels, channels, "down") if config.resblock_updown else Downsample(channels)

        def upsample(channels: int) -> nn.Module:
            return res_block(channels, channels, "up") if config.resblock_updown else Upsample(channels)

        # Skip connections, level by level: the feature map entering a level's residual blocks
        # (adm: conv_in's output or the previous level's downsample; efficient: the level's own
        # downsample) and each block's output. Up level l reads them last first.
        efficient = config.block_order == "efficient"
        channels = config.base_channels
        skip_channels = [] if efficient else [channels]
        self.down_blocks = nn.ModuleList()
        last_level = config.num_levels - 1
        for level, (width, resolution, blocks) in enumerate(
            zip(config.level_channels, config.level_resolutions, config.res_blocks_per_level)
        ):
            if efficient:  # Imagen DBlock: downsample, then the blocks at the reduced resolution
                self.down_blocks.append(UNetBlock([downsample(channels)]))
                skip_channels.append(channels)
            for _ in range(blocks):
                self.down_blocks.append(UNetBlock([res_block(channels, width), *attention_layers(width, resolution)]))
                channels = width
                skip_channels.append(channels)
            if not efficient and level != last_level:
                self.down_blocks.append(UNetBlock([downsample(channels)]))
                skip_channels.append(channels)

        self.middle_block = UNetBlock(
            [
                res_block(channels, channels),
                *attention_layers(channels, config.level_resolutions[-1]),
                res_block(channels, channels),
            ]
        )

        self.up_blocks = nn.ModuleList()
        for level in reversed(range(config.num_levels)):
            width = config.level_channels[level]
            resolution = config.level_resolutions[level]
            blocks = config.res_blocks_per_level[level]
            for index in range(blocks + 1):
                layers = [res_block(channels + skip_channels.pop(), width), *attention_layers(width, resolution)]
                channels = width
                if index == blocks and (efficient or level != 0):  # Imagen UBlock: upsample last
                    layers.append(upsample(channels))
                self.up_blocks.append(UNetBlock(layers))

        self.norm_out = GroupNorm32(config.norm_groups, channels)
        self.conv_out = zero_init(nn.Conv2d(channels, config.out_channels, 3, padding=1))

    def forward(
        self,
        x_t: torch.Tensor,
        noise_cond: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        null_cond: torch.Tensor | None = None,
        lowres: torch.Tensor | None = None,
        aug_cond: torch.Tensor | None = None,
        return_layout: bool = False,
        layout_choice: torch.Tensor | None = None,
        layout_target: torch.Tensor | None = None,
        layout_shared: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, LayoutPrediction]:
        """Predict the stage's target (eps, v or x0) for x_t.

        Args:
            x_t: (B, in_channels, H, W) noisy image; H and W divisible by
                `config.downsampling_factor` (2**(levels-1), or 2**levels for "efficient").
            noise_cond: (B,) float noise level (1000*t or log-SNR; the stage decides).
            class_labels: (B,) long in [0, num_classes); None = every row uses the null class.
            text_tokens: (B, L, text_dim) float; None = every row uses the null text.
            text_mask: (B, L) bool, True = real token; None = all tokens real.
            null_cond: (B,) bool, True = that row uses the learned null class / text
                (classifier-free guidance); None = no row is null.
            lowres: (B, lowres_channels, H, W) low-res image, already upsampled to H x W and
                noise-augmented by the stage (SR stages only, required there).
            aug_cond: (B,) float augmentation level of `lowres` (required when use_aug_cond).
            return_layout: also return `layout_prediction`'s `LayoutPrediction`, from the same pass
                of the text path (the stage's layout loss; needs `text_layout_head`).
            layout_choice: (B,) long, which of `text_layout_choices` K layouts each row's map is
                (sampling: drawn by `DiffusionStage.with_layout_choices`); ignored with one layout.
            layout_target: (B, in_channels, r, r), the target image averaged to r x r (training): each
                row takes the choice nearest it (`nearest_choice`) instead. With neither, each row
                takes its most probable choice. Ignored with one layout.
            layout_shared: (B,) bool, rows that read the one layout map as it is, not a choice's
                (the stage's `layout_choice_below`); None = no row. Ignored with one layout.
        Returns:
            (B, out_channels, H, W), or that and the `LayoutPrediction`.
        """
        self._check_inputs(x_t, noise_cond, class_labels, text_tokens, text_mask, null_cond, lowres, aug_cond)
        batch = x_t.shape[0]
        null = (
            null_cond.to(device=x_t.device, dtype=torch.bool)
            if null_cond is not None
            else torch.zeros(batch, dtype=torch.bool, device=x_t.device)
        )

        embedding = time_embedding = self.time_embedding(noise_cond)
        if self.aug_embedding is not None:
            embedding = embedding + self.aug_embedding(aug_cond)
        if self.class_embedding is not None:
            null_class = torch.full((batch,), self.config.num_classes, dtype=torch.long, device=x_t.device)
            if class_labels is None:
                labels = null_class
            else:
                labels = torch.where(null, null_class, class_labels.to(torch.long))
            embedding = embedding + self.class_embedding(labels)

        if return_layout and self.layout_head is None:
            raise ValueError("return_layout needs unet.text_layout_head: true")
        context = context_mask = layout_map = None
        if self.text_conditioning is not None:
            text_null = null
            if text_tokens is None:
                # No text at all: every row gets the null text. A one-token all-padding
                # placeholder keeps the text projections in the graph (DDP) at negligible cost.
                text_tokens = x_t.new_zeros(batch, 1, self.config.text_dim)
                text_mask = torch.zeros(batch, 1, dtype=torch.bool, device=x_t.device)
                text_null = torch.ones_like(null)
            pooled, context, context_mask, layout_map, caption_map = self._text_path(text_tokens, text_mask, text_null,
                                                                                     x_t, time_embedding)
            embedding = embedding + pooled
        painted = None
        if return_layout or (self.layout_choice is not None and layout_map is not None):
            painted = self._paint(layout_map, pooled, caption_map)
        if self.layout_choice is not None and layout_map is not None:  # the chosen layout's map
            if layout_target is not None:
                layout_choice = nearest_choice(painted.images, layout_target)
            elif layout_choice is None:
                layout_choice = painted.logits.argmax(dim=1)
            chosen = self.text_layout.choice_maps(layout_map, layout_choice.to(x_t.device, torch.long))
            layout_map = chosen if layout_shared is None else \
                torch.where(layout_shared.to(x_t.device)[:, None, None, None], layout_map, chosen)
        layout = None if layout_map is None else self.layout_in(layout_map)

        h = x_t if lowres is None else torch.cat([x_t, lowres.to(x_t.dtype)], dim=1)
        if self.config.coordinate_channels:
            h = torch.cat([h, coordinate_grid(h)], dim=1)
        h, layout = _add_layout(self.conv_in(h), layout)
        skips = [h] if self.config.block_order == "adm" else []
        for block in self.down_blocks:
            h, layout = _add_layout(self._run(block, h, embedding, context, context_mask), layout)
            skips.append(h)
        h = self._run(self.middle_block, h, embedding, context, context_mask)
        skip_scale = self.config.skip_scale
        for block in self.up_blocks:
            skip = skips.pop()
            h = torch.cat([h, skip if skip_scale == 1.0 else skip * skip_scale], dim=1)
            h = self._run(block, h, embedding, context, context_mask)
        output = self.conv_out(F.silu(self.norm_out(h)))
        return (output, painted) if return_layout else output

    def _text_path(
        self, text_tokens: torch.Tensor, text_mask: torch.Tensor | None, null: torch.Tensor,
        x_t: torch.Tensor | None = None, time_embedding: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The text conditioning's (pooled, context, context mask), the layout map (B,
        context_channels, r, r) before `layout_in` (None without `text_layout_resolution`) and, for a
        map that reads x_t (`text_layout_reads_x_t`), the caption's map it refines (else None);
        text_mask None = all tokens real. The refinement reads x_t and the noise level's embedding
        (`time_embedding`'s output), detached (the layout loss does not train the latter)."""
        if text_mask is None:
            text_mask = torch.ones(text_tokens.shape[:2], dtype=torch.bool, device=text_tokens.device)
        pooled, context, context_mask = self.text_conditioning(text_tokens, text_mask.bool(), null)
        layout_map = caption_map = None
        if self.text_layout is not None:
            layout_map = self.text_layout(pooled, context, context_mask)
            if self.config.text_layout_reads_x_t:
                if x_t is None or time_embedding is None:
                    raise ValueError("unet.text_layout_reads_x_t: the layout map needs x_t and noise_cond")
                caption_map = layout_map
                layout_map = self.text_layout.read_x_t(caption_map, x_t, time_embedding.detach())
        return pooled, context, context_mask, layout_map, caption_map

    def layout_prediction(
        self, text_tokens: torch.Tensor, text_mask: torch.Tensor | None = None, null_cond: torch.Tensor | None = None,
        x_t: torch.Tensor | None = None, noise_cond: torch.Tensor | None = None,
    ) -> LayoutPrediction:
        """What the layout map paints for a batch of captions (`text_layout_head`; with K choices each
        choice's image and the classifier's logits), which `layout_loss_weight` trains towards the
        target averaged to r x r (`layout_loss`). A map that reads x_t (`text_layout_reads_x_t`) needs
        x_t (any size; the map averages it to r x r) and noise_cond as `forward` takes them."""
        if self.layout_head is None:
            raise ValueError("layout_prediction needs unet.text_layout_head: true")
        null = torch.zeros(text_tokens.shape[0], dtype=torch.bool, device=text_tokens.device) if null_cond is None \
            else null_cond.bool()
        time_embedding = None if noise_cond is None else self.time_embedding(noise_cond)
        pooled, _, _, layout_map, caption_map = self._text_path(text_tokens, text_mask, null, x_t, time_embedding)
        return self._paint(layout_map, pooled, caption_map)

    def _paint(self, layout_map: torch.Tensor, pooled: torch.Tensor,
               caption_map: torch.Tensor | None = None) -> LayoutPrediction:
        """The layout map's image by `layout_head` (None without it) and the caption's map's where the
        map reads x_t, or, with K choices, each choice's image (`TextLayout.choice_maps`) and the
        classifier's logits."""
        if self.layout_head is None:
            return LayoutPrediction(None)
        if caption_map is not None:
            return LayoutPrediction(self.layout_head(layout_map), caption_images=self.layout_head(caption_map))
        if self.layout_choice is None:
            return LayoutPrediction(self.layout_head(layout_map))
        images = paint_choices(self.layout_head, self.text_layout, layout_map)
        if self.text_layout.choice_gates is None:
            return LayoutPrediction(images, self.layout_choice(pooled))
        # Gated choices: the one map keeps its own squared error, and the classifier reads the text as it is,
        # so that the map keeps learning from the words what goes where (docs/benchmarks.md, "Gated layout
        # choices": fitted by winner-takes-all alone, with the classifier's gradient in the text path, two
        # trainings of three lost the side of "A left of B"; with the one map detached from winner-takes-all
        # as well, the gates alone never split the layouts).
        return LayoutPrediction(images, self.layout_choice(pooled.detach()), self.layout_head(layout_map))

    def _run(
        self,
        block: UNetBlock,
        h: torch.Tensor,
        embedding: torch.Tensor,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Run one block, recomputing its activations in backward when checkpointing is on."""
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, h, embedding, context, context_mask, use_reentrant=False)
        return block(h, embedding, context, context_mask)

    def _check_inputs(
        self,
        x_t: torch.Tensor,
        noise_cond: torch.Tensor,
        class_labels: torch.Tensor | None,
        text_tokens: torch.Tensor | None,
        text_mask: torch.Tensor | None,
        null_cond: torch.Tensor | None,
        lowres: torch.Tensor | None,
        aug_cond: torch.Tensor | None,
    ) -> None:
        """Raise ValueError on wrong shapes or on inputs the configuration cannot use.

        Only shapes are inspected (no tensor values), so the check never syncs with the GPU.
        """
        config = self.config
        if x_t.ndim != 4 or x_t.shape[1] != config.in_channels:
            raise ValueError(f"x_t must be (B, {config.in_channels}, H, W), got {tuple(x_t.shape)}")
        batch, _, height, width = x_t.shape
        factor = config.downsampling_factor
        if height % factor or width % factor:
            raise ValueError(f"x_t height and width must be divisible by {factor}, got {height}x{width}")

        def check_vector(name: str, value: torch.Tensor | None) -> None:
            if value is not None and tuple(value.shape) != (batch,):
                raise ValueError(f"{name} must have shape ({batch},), got {tuple(value.shape)}")

        check_vector("noise_cond", noise_cond)
        check_vector("class_labels", class_labels)
        check_vector("null_cond", null_cond)
        check_vector("aug_cond", aug_cond)

        if class_labels is not None and config.num_classes == 0:
            raise ValueError("class_labels given but the UNet is not class-conditional (num_classes=0)")
        if text_tokens is not None:
            if config.text_dim == 0:
                raise ValueError("text_tokens given but the UNet is not text-conditional (text_dim=0)")
            if text_tokens.ndim != 3 or text_tokens.shape[0] != batch or text_tokens.shape[2] != config.text_dim:
                raise ValueError(f"text_tokens must be ({batch}, L, {config.text_dim}), got {tuple(text_tokens.shape)}")
            if text_mask is not None and tuple(text_mask.shape) != tuple(text_tokens.shape[:2]):
                raise ValueError(f"text_mask must be {tuple(text_tokens.shape[:2])}, got {tuple(text_mask.shape)}")
        elif text_mask is not None:
            raise ValueError("text_mask given without text_tokens")

        if config.lowres_channels > 0:
            expected = (batch, config.lowres_channels, height, width)
            if lowres is None or tuple(lowres.shape) != expected:
                got = None if lowres is None else tuple(lowres.shape)
                raise ValueError(
                    f"this super-resolution UNet needs lowres of shape {expected} (upsampled to the "
                    f"output size by the stage), got {got}"
                )
        elif lowres is not None:
            raise ValueError("lowres given but the UNet is not a super-resolution UNet (lowres_channels=0)")

        if config.use_aug_cond and aug_cond is None:
            raise ValueError("this UNet embeds the augmentation level: pass aug_cond (B,)")
        if not config.use_aug_cond and aug_cond is not None:
            raise ValueError("aug_cond given but the UNet has use_aug_cond=False")
