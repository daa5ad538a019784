"""`UNetConfig`: every architectural choice of the UNet, as plain values a YAML file can hold.

LightningCLI (jsonargparse) builds this dataclass from the `unet:` section of a stage config,
so every field is an int, float, bool, str or a tuple/list of ints. The defaults describe a
small unconditional ADM-style 64x64 model; the reference configurations in `configs/` set the
fields for each stage of the cascade.
"""

from __future__ import annotations

from dataclasses import dataclass

TIME_EMBEDDINGS = ("sinusoidal", "fourier")
BLOCK_ORDERS = ("adm", "efficient")
LAYOUT_CHOICE_FORMS = ("scales", "gates")


@dataclass
class UNetConfig:
    """Architecture of one `cascade.nn.UNet` (base or super-resolution stage).

    Layout follows ADM (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image
    Synthesis") with the Efficient U-Net options of Imagen (Saharia et al. 2022, "Photorealistic
    Text-to-Image Diffusion Models with Deep Language Understanding", appendix B.1).

    Fields:
        image_size: side of the training images, in pixels (SR: the output side). Only used to
            turn `attention_resolutions` / `cross_attention_resolutions` into levels of the
            UNet; the network accepts any size divisible by `downsampling_factor`
            (2**(len(channel_mults)-1) for "adm", 2**len(channel_mults) for "efficient"), and
            attention stays at the same levels (e.g. SR trained on crops, sampled full size).
        in_channels: channels of the noisy image x_t (3 for RGB).
        out_channels: channels of the prediction (3 for eps / v / x0 of an RGB image).
        base_channels: width of the first level; level i has base_channels * channel_mults[i].
        channel_mults: width multiplier per level, highest resolution first. The number of
            levels is len(channel_mults); see block_order for where the resolution halves.
        num_res_blocks: residual blocks per level on the way down (the way up has one more,
            as in ADM). An int for every level, or one int per level: Efficient U-Net puts
            more blocks at low resolution, e.g. [2, 4, 8, 8].
        attention_resolutions: resolutions (pixels, relative to image_size) with
            multi-head self-attention after every residual block. Empty = none (Efficient
            U-Net at 1024 px). A resolution names the level whose residual blocks run at it
            (`level_resolutions`, which depends on block_order); one no level has is an error.
        cross_attention_resolutions: resolutions with cross-attention from image tokens to
            the text tokens (Imagen). Needs text_dim > 0.
        num_heads: attention heads per attention layer (used when head_channels is 0).
        head_channels: channels per head; when > 0 the number of heads is channels //
            head_channels at every level (ADM uses 64) and num_heads is ignored.
        norm_groups: groups of every GroupNorm; must divide every level's width.
        dropout: dropout probability inside residual blocks (ADM: 0.1 on ImageNet 64).
        skip_scale: factor on the encoder features carried to the decoder by the UNet skip
            connections; Efficient U-Net uses 1/sqrt(2) = 0.7071.
        resblock_updown: down/upsample with residual blocks (BigGAN style, as in ADM) instead
            of a strided convolution / nearest-upsample + convolution.
        block_order: where each level resamples. "adm" (ADM, Dhariwal & Nichol 2021): level l's
            blocks run at image_size / 2**l, every level but the last ends with a downsample
            and every up level but the top ends with an upsample. "efficient" (Imagen's
            Efficient U-Net, Saharia et al. 2022, appendix B.1 and Figs. A.28-A.30: the DBlock
            downsamples before its residual blocks, the UBlock upsamples after them): every
            level starts with a downsample and every up level ends with an upsample, so level
            l's blocks run at image_size / 2**(l+1), a quarter of the pixels of the "adm"
            order, and inputs must be divisible by 2**levels. conv_in and conv_out stay at full
            resolution. The skip connections pair up level by level as in "adm": an up level
            reads, last first, the outputs of its down level's residual blocks and the output
            that entered them (the downsample's, which in "adm" is conv_in's for level 0), all
            at the level's resolution (imagen-pytorch's `memory_efficient` pairs them the same
            way, without a skip from conv_in). Same widths and skip widths as "adm", so the
            parameters are those of "adm" plus one more resampling layer each way, at the top
            level: a 3x3 conv base_channels -> base_channels down and level_channels[0] ->
            level_channels[0] up (or the two BigGAN residual blocks with resblock_updown).
        num_classes: number of class labels (0 = not class-conditional). The embedding table
            has num_classes + 1 rows; the last one is the learned null class (Ho & Salimans
            2022, "Classifier-Free Diffusion Guidance").
        text_dim: width of the frozen text encoder's token embeddings (0 = no text; 4096 for
            T5-XXL, 384 for MiniLM). Text enters pooled into the conditioning vector and,
            where configured, through attention.
        text_concat_to_self_attn: also append the text tokens to the keys/values of every
            self-attention layer (GLIDE, Nichol et al. 2021). Needs text_dim > 0.
        text_positions: a learned embedding of each text token's index, for the first
            `text_positions` tokens, added to the attention context (0 = none, as before). The
            frozen encoder's tokens say which object of "A left of B" comes first only faintly
            (docs/benchmarks.md); this makes "first" and "second" plain directions of the
            context (measured at the demo's base: the side is still at chance). Must be at least
            the text encoder's max_length.
        text_refiner_layers: trainable transformer layers over the attention context before any
            pixel reads it (`cascade.nn.text_conditioning.TokenRefinerLayer`; HunyuanVideo's token
            refiner), with heads of head_channels (or num_heads); 0 = none, as before. Each starts
            as the identity.
        text_refiner_pooled: also add the refined tokens' mean (through a zero-initialised
            projection) to the pooled text in the conditioning vector, which every residual block
            reads; needs text_refiner_layers > 0.
        text_layout_resolution: r > 0 builds a map of what the caption puts where at r x r
            before any pixel is seen (`cascade.nn.text_conditioning.TextLayout`: one learned query
            per cell attends to the text) and adds it, through a zero-initialised 1x1
            convolution, where the UNet's features first reach r x r; must be a level resolution;
            0 = none, as before. Needs attention that reads text.
        text_layout_head: also a 1x1 projection of the layout map to in_channels
            (`UNet.layout_prediction`), which the stage's `layout_loss_weight` trains towards the
            target image averaged to r x r: a direct signal for what goes where, which the
            denoising loss gives the map only faintly. Needs text_layout_resolution > 0.
        text_layout_choices: K > 1 makes the layout map a draw from K layouts, not their average
            (`cascade.nn.text_conditioning.TextLayout`): "three circles" leaves four layouts open,
            and one map fitted by squared error paints their union, four faint circles, which the
            base then draws. K learned scalings of half the map's channels give K maps; the layout
            loss fits the one nearest the target (relaxed winner-takes-all, `layout_loss`) and a
            classifier of the pooled text (`UNet.layout_choice`) learns which choice that is. The
            denoiser reads one choice's map: in training the one nearest the target, in sampling one
            drawn from the classifier with the row's seed (`DiffusionStage.with_layout_choices`).
            1 = one map, as before (scaled choices commit the count but cost relation, docs/benchmarks.md,
            "A layout drawn, not averaged"; the demo's base has four gated ones). Needs text_layout_head.
        text_layout_choice_form: how a choice is made from the one map. "scales" (as before): a
            learned scaling of each of the map's first C/2 channels per choice, the same in every
            cell; it changes what a cell says as well as where. "gates": a gate per choice and cell,
            r^2 softmax over the cells of (w_k . m + a_k) (m the cell's map vector, a_k a learned logit
            per cell), scaling the whole vector, so that a choice moves the map between cells (where)
            but never turns what a cell says (which shape goes with which colour); the one map keeps
            a loss of its own and the choice classifier reads the text detached, so that the map
            learns from the words which side each object takes.
            Needs text_layout_choices > 1.
        text_layout_reads_x_t: the caption's layout map is refined, cell by cell, by x_t averaged to
            r x r and the noise level (`TextLayout.read_x_t`, a residual MLP that starts as the
            identity), so that the map the denoiser reads is the layout given the caption and the
            sample so far, E[layout | caption, x_t]: for "three circles" the union of the four
            layouts only while x_t is noise, then the one layout the sample has begun. The layout
            loss fits both the refined map and the caption's. False = the caption alone, as before.
            Needs text_layout_head (the loss) and not text_layout_choices > 1.
        lowres_channels: channels of the low-resolution conditioning image concatenated to
            x_t (3 for super-resolution stages, 0 for a base stage).
        coordinate_channels: append two channels holding each pixel's x and y coordinate,
            linearly from -1 to 1 across the image, to the UNet's input (CoordConv, Liu et al.
            2018, "An Intriguing Failing of Convolutional Neural Networks and the CoordConv
            Solution"). Convolutions and attention are otherwise blind to absolute position
            (they see it only through zero padding), so a caption's "left of" / "above" cannot be
            tied to a place; the coordinates let cross-attention queries carry it. For a base
            stage sampled at its training size (an SR stage trained on crops would see crop
            coordinates; leave it off there).
        qk_norm: RMS-normalise each attention head's queries and keys, with a learned gain per
            channel, before their dot product (Dehghani et al. 2023, "Scaling Vision Transformers
            to 22 Billion Parameters"; Esser et al. 2024, "Scaling Rectified Flow Transformers for
            High-Resolution Image Synthesis"): the logits stay bounded, so a high learning rate
            cannot blow them up, and a pixel picks a text token by the direction of its key, not
            by its norm.
        use_aug_cond: embed the noise-augmentation level of the low-res image (Ho et al. 2021
            "Cascaded Diffusion Models", Imagen) and add it to the conditioning vector.
        time_embedding: features of the noise level before its MLP: "sinusoidal" (ADM /
            Transformer positions) or "fourier" (fixed random Fourier features, Tancik et al.
            2020, as in Song et al. 2021 score-SDE).
        fourier_scale: standard deviation of the random frequencies of the "fourier" features
            (features are sin/cos(2*pi*f*x)); 16 suits inputs of order 1 such as log-SNR / 10,
            use a smaller scale for 1000*t.
        gradient_checkpointing: recompute each block's activations during backward
            (torch.utils.checkpoint) to save memory; can be switched on a built model through
            `UNet.gradient_checkpointing`.
    """

    image_size: int = 64
    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 128
    channel_mults: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: int | list[int] = 2
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    cross_attention_resolutions: tuple[int, ...] = ()
    num_heads: int = 4
    head_channels: int = 0
    norm_groups: int = 32
    dropout: float = 0.0
    skip_scale: float = 1.0
    resblock_updown: bool = False
    num_classes: int = 0
    text_dim: int = 0
    text_concat_to_self_attn: bool = False
    text_positions: int = 0
    text_refiner_layers: int = 0
    text_refiner_pooled: bool = False
    text_layout_resolution: int = 0
    text_layout_head: bool = False
    text_layout_choices: int = 1
    text_layout_choice_form: str = "scales"
    text_layout_reads_x_t: bool = False
    lowres_channels: int = 0
    use_aug_cond: bool = False
    coordinate_channels: bool = False
    qk_norm: bool = False
    time_embedding: str = "sinusoidal"
    fourier_scale: float = 16.0
    gradient_checkpointing: bool = False
    block_order: str = "adm"

    def __post_init__(self) -> None:
        self.channel_mults = tuple(self.channel_mults)
        self.attention_resolutions = tuple(self.attention_resolutions)
        self.cross_attention_resolutions = tuple(self.cross_attention_resolutions)
        if not isinstance(self.num_res_blocks, int):
            self.num_res_blocks = list(self.num_res_blocks)
        self._validate()

    # ---- derived quantities -------------------------------------------------------------

    @property
    def num_levels(self) -> int:
        return len(self.channel_mults)

    @property
    def level_channels(self) -> list[int]:
        """Width of every level, highest resolution first."""
        return [self.base_channels * mult for mult in self.channel_mults]

    @property
    def level_resolutions(self) -> list[int]:
        """Feature-map side at which every level's residual and attention blocks run for an
        image_size input, highest first: image_size / 2**l ("adm") or image_size / 2**(l+1)
        ("efficient", Saharia et al. 2022, appendix B.1)."""
        shift = 1 if self.block_order == "efficient" else 0
        return [self.image_size // 2 ** (level + shift) for level in range(self.num_levels)]

    @property
    def downsampling_factor(self) -> int:
        """Ratio of the input side to the lowest level's side: 2**(levels-1) ("adm") or
        2**levels ("efficient"); input sides must be divisible by it."""
        return 2 ** (self.num_levels - (0 if self.block_order == "efficient" else 1))

    @property
    def res_blocks_per_level(self) -> list[int]:
        if isinstance(self.num_res_blocks, int):
            return [self.num_res_blocks] * self.num_levels
        return list(self.num_res_blocks)

    @property
    def embedding_channels(self) -> int:
        """Width of the conditioning vector (time + aug + class + pooled text), 4x base as in ADM.

        It is also the width of the projected text tokens that attention layers read.
        """
        return 4 * self.base_channels

    @property
    def uses_text_context(self) -> bool:
        """True when some attention layer reads the text tokens (not only the pooled vector)."""
        return bool(self.cross_attention_resolutions) or (
            self.text_concat_to_self_attn and bool(self.attention_resolutions)
        )

    def heads_for(self, channels: int) -> int:
        return channels // self.head_channels if self.head_channels > 0 else self.num_heads

    # ---- validation ---------------------------------------------------------------------

    def _validate(self) -> None:
        errors = []
        if self.num_levels == 0 or any(m <= 0 for m in self.channel_mults):
            errors.append(f"channel_mults must be non-empty positive ints, got {self.channel_mults}")
        if self.base_channels <= 0:
            errors.append(f"base_channels must be positive, got {self.base_channels}")
        if self.block_order not in BLOCK_ORDERS:
            errors.append(f"unet.block_order must be one of {BLOCK_ORDERS}, got {self.block_order!r}")
        if errors:
            raise ValueError("invalid UNetConfig: " + "; ".join(errors))

        factor = self.downsampling_factor
        if self.image_size % factor:
            exponent = "levels" if self.block_order == "efficient" else "(levels-1)"
            errors.append(f"image_size {self.image_size} is not divisible by 2**{exponent} = {factor}")
        blocks = self.res_blocks_per_level
        if len(blocks) != self.num_levels or any(b < 1 for b in blocks):
            errors.append(
                f"num_res_blocks must be a positive int or {self.num_levels} positive ints "
                f"(one per level), got {self.num_res_blocks}"
            )
        for name in ("attention_resolutions", "cross_attention_resolutions"):
            unknown = sorted(set(getattr(self, name)) - set(self.level_resolutions))
            if unknown:
                errors.append(f"{name} {unknown} are not level resolutions {self.level_resolutions}")
        if self.text_dim <= 0 and (self.cross_attention_resolutions or self.text_concat_to_self_attn):
            errors.append("cross_attention_resolutions / text_concat_to_self_attn need text_dim > 0")
        if isinstance(self.text_positions, bool) or not isinstance(self.text_positions, int) or self.text_positions < 0:
            errors.append(f"text_positions must be an int >= 0, got {self.text_positions!r}")
        elif self.text_positions > 0 and not self.uses_text_context:
            errors.append("text_positions needs attention that reads text (cross_attention_resolutions or "
                          "text_concat_to_self_attn)")
        if isinstance(self.text_refiner_layers, bool) or not isinstance(self.text_refiner_layers, int) \
                or self.text_refiner_layers < 0:
            errors.append(f"text_refiner_layers must be an int >= 0, got {self.text_refiner_layers!r}")
        elif self.text_refiner_layers > 0 and not self.uses_text_context:
            errors.append("text_refiner_layers needs attention that reads text (cross_attention_resolutions or "
                          "text_concat_to_self_attn)")
        elif self.text_refiner_layers > 0 and (self.heads_for(self.embedding_channels) <= 0
                                               or self.embedding_channels % self.heads_for(self.embedding_channels)):
            errors.append(f"the text refiner's width {self.embedding_channels} cannot be split into "
                          f"{self.heads_for(self.embedding_channels)} attention heads")
        if not isinstance(self.text_refiner_pooled, bool):
            errors.append(f"text_refiner_pooled must be true or false, got {self.text_refiner_pooled!r}")
        elif self.text_refiner_pooled and not (isinstance(self.text_refiner_layers, int) and self.text_refiner_layers > 0):
            errors.append("text_refiner_pooled needs text_refiner_layers > 0")
        layout = self.text_layout_resolution
        if isinstance(layout, bool) or not isinstance(layout, int) or layout < 0:
            errors.append(f"text_layout_resolution must be an int >= 0, got {layout!r}")
        elif layout > 0 and not self.uses_text_context:
            errors.append("text_layout_resolution needs attention that reads text (cross_attention_resolutions or "
                          "text_concat_to_self_attn)")
        elif layout > 0 and layout not in self.level_resolutions:
            errors.append(f"text_layout_resolution {layout} is not a level resolution {self.level_resolutions}")
        elif layout > 0 and (self.heads_for(self.embedding_channels) <= 0
                             or self.embedding_channels % self.heads_for(self.embedding_channels)):
            errors.append(f"the text layout's width {self.embedding_channels} cannot be split into "
                          f"{self.heads_for(self.embedding_channels)} attention heads")
        if not isinstance(self.text_layout_head, bool):
            errors.append(f"text_layout_head must be true or false, got {self.text_layout_head!r}")
        elif self.text_layout_head and not (isinstance(layout, int) and layout > 0):
            errors.append("text_layout_head needs text_layout_resolution > 0")
        choices = self.text_layout_choices
        if isinstance(choices, bool) or not isinstance(choices, int) or choices < 1:
            errors.append(f"text_layout_choices must be an int >= 1, got {choices!r}")
        elif choices > 1 and self.text_layout_head is not True:
            errors.append("text_layout_choices > 1 needs text_layout_head: true (the layout loss picks the nearest choice)")
        form = self.text_layout_choice_form
        if form not in LAYOUT_CHOICE_FORMS:
            errors.append(f"text_layout_choice_form must be one of {LAYOUT_CHOICE_FORMS}, got {form!r}")
        elif form == "gates" and not (isinstance(choices, int) and choices > 1):
            errors.append(f"text_layout_choice_form {form!r} needs text_layout_choices > 1")
        if not isinstance(self.text_layout_reads_x_t, bool):
            errors.append(f"text_layout_reads_x_t must be true or false, got {self.text_layout_reads_x_t!r}")
        elif self.text_layout_reads_x_t and self.text_layout_head is not True:
            errors.append("text_layout_reads_x_t needs text_layout_head: true (the layout loss fits the refined map)")
        elif self.text_layout_reads_x_t and isinstance(choices, int) and choices > 1:
            errors.append("text_layout_reads_x_t and text_layout_choices > 1 are two answers to one question; choose one")
        if not isinstance(self.coordinate_channels, bool):
            errors.append(f"coordinate_channels must be true or false, got {self.coordinate_channels!r}")
        if not isinstance(self.qk_norm, bool):
            errors.append(f"qk_norm must be true or false, got {self.qk_norm!r}")
        if self.time_embedding not in TIME_EMBEDDINGS:
            errors.append(f"time_embedding must be one of {TIME_EMBEDDINGS}, got {self.time_embedding!r}")
        attended = set(self.attention_resolutions) | set(self.cross_attention_resolutions)
        for channels, resolution in zip(self.level_channels, self.level_resolutions):
            if channels % self.norm_groups:
                errors.append(f"norm_groups {self.norm_groups} does not divide level width {channels}")
            heads = self.heads_for(channels)
            if resolution in attended and (heads <= 0 or channels % heads):
                errors.append(f"level width {channels} cannot be split into {heads} attention heads")
        if not 0.0 <= self.dropout < 1.0:
            errors.append(f"dropout must be in [0, 1), got {self.dropout}")
        for name in ("in_channels", "out_channels"):
            if getattr(self, name) <= 0:
                errors.append(f"{name} must be positive")
        for name in ("num_classes", "text_dim", "lowres_channels", "head_channels"):
            if getattr(self, name) < 0:
                errors.append(f"{name} must be >= 0")
        if errors:
            raise ValueError("invalid UNetConfig: " + "; ".join(sorted(set(errors))))
