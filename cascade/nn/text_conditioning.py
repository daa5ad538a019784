"""From frozen text-encoder tokens to what the UNet consumes: a pooled vector and attention context.

Imagen (Saharia et al. 2022, sec. 2.1 and appendix) conditions on a frozen T5 encoder in two
ways, both here: a pooled embedding (masked mean over real tokens, LayerNorm, projection) added
to the conditioning vector, and the token sequence (LayerNorm, projection) that attention layers
attend to.

Classifier-free guidance (Ho & Salimans 2022) needs an unconditional model: rows flagged in
`null` get a learned null condition instead of their text. The context always starts with one
learned null token: for a null row it is the only valid key (its text tokens are masked out),
for a conditional row it sits beside the real tokens. So attention never sees a fully masked
row, even for an empty caption, and every parameter takes part in every forward pass whatever
the mix of null and conditional rows (the rows are mixed with torch.where, not Python branches).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .resblock import zero_init


class TokenRefinerLayer(nn.Module):
    """One pre-norm transformer layer over the text tokens, trained with the UNet: x + attn(LN(x)),
    then x + MLP(LN(x)) (Vaswani et al. 2017; pre-norm as in GPT-2). Both residual branches end in a
    zero-initialised projection, so a new layer is the identity.

    A frozen encoder's tokens carry a token's role in the caption ("the object that goes left")
    only faintly (docs/benchmarks.md); a trainable layer over them can compute it from each token's
    index and the relation word before any pixel reads the text (HunyuanVideo's token refiner, Kong
    et al. 2024, "HunyuanVideo: A Systematic Framework For Large Video Generative Models", sec. 3.3).
    """

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.attention_norm = nn.LayerNorm(channels)
        self.to_qkv = nn.Linear(channels, 3 * channels)
        self.attention_out = zero_init(nn.Linear(channels, channels))
        self.mlp_norm = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, 4 * channels), nn.GELU(), zero_init(nn.Linear(4 * channels, channels)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B,L,C); mask (B,L) bool, True = real token, at least one per row."""
        batch, length, channels = x.shape
        heads = self.to_qkv(self.attention_norm(x)).reshape(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(heads[0], heads[1], heads[2], attn_mask=mask[:, None, None, :])
        x = x + self.attention_out(attended.transpose(1, 2).reshape(batch, length, channels))
        return x + self.mlp(self.mlp_norm(x))


class TextLayout(nn.Module):
    """A (B, C, r, r) map of what the caption puts where, computed before any pixel is seen.

    One learned query per cell of an r x r grid, plus the pooled text, attends to the attention
    context (pre-norm cross-attention, then an MLP; Vaswani et al. 2017): cell (i, j) asks the
    tokens "what is at my place?". Unlike the UNet's own cross-attention, whose queries come from
    x_t (noise where the layout is decided, t >= 0.9), these queries depend on nothing but the
    place and the caption, so "the subject of 'left of' goes left" is a plain function of the
    text for them to learn (docs/benchmarks.md: a regressor of this form learns the side of a
    relation within a minute, the UNet's cross-attention not in 9,600 steps). The UNet adds the
    map, through a zero-initialised 1x1 convolution, where its features first reach r x r
    (`UNetConfig.text_layout_resolution`); a layout-first step inside the base, like the layout
    stages of LayoutGPT / LLM-grounded diffusion (Lian et al. 2023) but learnt end to end.

    With `choices` K > 1, `choice_maps` gives K layouts a caption may have (multiple-choice
    learning, Guzman-Rivera et al. 2012; `cascade.nn.unet.layout_loss` fits them), (B, K, C, r, r):
    with `choice_form` "scales" the map with its first C/2 channels scaled by a learned (1 + s_k)
    each and the others shared; with "gates" each cell's vector m scaled as a whole by the gate
    g_k = r^2 softmax over the cells of (w_k . m + a_k), so that a choice moves the map between cells
    (where) but never turns what a cell says (which shape goes with which colour). The gates average
    1 over the cells: a gate 2 sigmoid(w_k . m + b_k), free in its mean, let the layout pre-training
    split the choices by brightness (object size), not layout, and "two green squares" stayed one union.
    The one map keeps a loss of its own (`cascade.nn.unet.UNet._paint`), and the choice
    classifier reads the text detached: fitted by winner-takes-all alone, with the classifier's gradient
    in the text path, two trainings of three stopped reading the side of "A left of B" from the words
    and painted both objects in their mixed colour.
    A choice query per layout added to the cells' queries, the whole path run K times, fitted the
    same layouts of "two X" / "three X" at 2.8x the cost of the pre-training (3,000 steps of 64:
    209 s against 74 s, one thread; the map alone, 55 s).

    With `image_channels` > 0, `read_x_t` refines the caption's map cell by cell with x_t averaged to
    r x r there and the noise level's embedding (`UNetConfig.text_layout_reads_x_t`): a residual MLP
    whose last layer starts at zero, so a new refinement is the identity. Fitted by squared error,
    the refined map is E[layout | caption, x_t], which follows the one layout a sample has begun
    instead of painting the union of those the caption leaves open. The caption's map keeps a loss of
    its own (`cascade.nn.unet.layout_loss`): with x_t added to the queries and one loss on the result,
    copying x_t fitted most noise levels and the map at pure noise lost the side of "A left of B"
    (docs/benchmarks.md, "A layout map that reads x_t", which also finds that neither form commits a
    layout where the count is decided).
    """

    def __init__(self, context_channels: int, embedding_channels: int, resolution: int, num_heads: int,
                 choices: int = 1, image_channels: int = 0, choice_form: str = "scales"):
        super().__init__()
        self.resolution = resolution
        self.num_heads = num_heads
        self.queries = nn.Parameter(torch.randn(resolution * resolution, context_channels) * 0.1)
        # "scales": the first half of the channels only, the other half the same in every choice
        self.choice_scales = nn.Parameter(torch.randn(choices, context_channels // 2) * 0.5) \
            if choices > 1 and choice_form == "scales" else None
        # "gates": a choice's logit of a cell reads the cell's map, plus a cell's own logit per choice
        # (N(0, 1) at first: the choices start apart in where they put the map, so winner-takes-all splits them)
        gates = choices > 1 and choice_form == "gates"
        self.choice_gates = nn.Linear(context_channels, choices) if gates else None
        self.choice_gate_logits = nn.Parameter(torch.randn(choices, resolution, resolution)) if gates else None
        self.from_pooled = nn.Linear(embedding_channels, context_channels)
        if image_channels:
            self.from_image = nn.Linear(image_channels, context_channels)
            self.from_noise = nn.Linear(embedding_channels, context_channels)
            self.x_t_norm = nn.LayerNorm(context_channels)
            self.x_t_mlp = nn.Sequential(nn.Linear(context_channels, context_channels), nn.GELU(),
                                         zero_init(nn.Linear(context_channels, context_channels)))
        else:
            self.from_image = self.from_noise = self.x_t_norm = self.x_t_mlp = None
        self.query_norm = nn.LayerNorm(context_channels)
        self.to_q = nn.Linear(context_channels, context_channels)
        self.to_kv = nn.Linear(context_channels, 2 * context_channels)
        self.attention_out = nn.Linear(context_channels, context_channels)
        self.mlp_norm = nn.LayerNorm(context_channels)
        self.mlp = nn.Sequential(nn.Linear(context_channels, 4 * context_channels), nn.GELU(),
                                 nn.Linear(4 * context_channels, context_channels))

    def forward(self, pooled: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        """pooled (B,E), context (B,L,C), context_mask (B,L) bool (at least one True per row) -> (B,C,r,r)."""
        batch, length, channels = context.shape
        q = self.queries.to(context.dtype)[None] + self.from_pooled(pooled)[:, None]
        heads = self.to_q(self.query_norm(q)).reshape(batch, -1, self.num_heads, channels // self.num_heads)
        kv = self.to_kv(context).reshape(batch, length, 2, self.num_heads, channels // self.num_heads)
        attended = F.scaled_dot_product_attention(heads.transpose(1, 2), kv[:, :, 0].transpose(1, 2),
                                                  kv[:, :, 1].transpose(1, 2), attn_mask=context_mask[:, None, None, :])
        q = q + self.attention_out(attended.transpose(1, 2).reshape(batch, -1, channels))
        q = q + self.mlp(self.mlp_norm(q))
        return q.transpose(1, 2).reshape(batch, channels, self.resolution, self.resolution)

    def read_x_t(self, maps: torch.Tensor, x_t: torch.Tensor, noise_embedding: torch.Tensor) -> torch.Tensor:
        """The caption's maps (B,C,r,r) refined by x_t (B,image_channels,H,W), averaged to r x r here, and
        the noise level's embedding (B,E): each cell m + MLP(LN(m + W_x avg(x_t) + W_e e)) (`image_channels` > 0)."""
        cells = F.adaptive_avg_pool2d(x_t.to(maps.dtype), self.resolution).flatten(2).transpose(1, 2)
        q = maps.flatten(2).transpose(1, 2)
        h = q + self.from_image(cells) + self.from_noise(noise_embedding.to(maps.dtype))[:, None]
        return (q + self.x_t_mlp(self.x_t_norm(h))).transpose(1, 2).reshape(maps.shape)

    def choice_maps(self, maps: torch.Tensor, choice: torch.Tensor | None = None) -> torch.Tensor:
        """(B,C,r,r) -> the K choices' maps (B,K,C,r,r), or with `choice` (B,) long each row's own
        (B,C,r,r) (`choices` > 1)."""
        if self.choice_gates is not None:  # g_k = r^2 softmax over cells of (w_k . m + a_k), times each cell's whole m
            logits = self.choice_gates(maps.transpose(1, -1)).transpose(1, -1) + self.choice_gate_logits.to(maps.dtype)
            gates = logits.flatten(2).softmax(-1).reshape(logits.shape) * self.resolution ** 2  # (B,K,r,r), mean 1
            if choice is not None:
                return maps * gates.gather(1, choice[:, None, None, None].expand(-1, 1, *gates.shape[2:]))
            return maps[:, None] * gates[:, :, None]
        scales = 1.0 + F.pad(self.choice_scales.to(maps.dtype), (0, maps.shape[1] - self.choice_scales.shape[1]))
        if choice is not None:
            return maps * scales[choice][:, :, None, None]
        return maps[:, None] * scales[None, :, :, None, None]


class TextConditioning(nn.Module):
    """Project (B, L, text_dim) tokens to a pooled (B, embedding) vector and a (B, 1+L, context) context.

    Args:
        text_dim: width of the encoder's token embeddings.
        embedding_channels: width of the UNet conditioning vector (the pooled output).
        context_channels: width of the context tokens for attention; 0 when no attention layer
            reads text (then only the pooled vector is produced, and no unused parameters exist).
        positions: a learned embedding of the token index added to the context tokens for the
            first `positions` tokens (0 = none; `UNetConfig.text_positions`).
        refiner_layers: `TokenRefinerLayer`s run over the context tokens (after the positions, before
            the null token joins them) with `refiner_heads` heads (0 = none;
            `UNetConfig.text_refiner_layers`).
        refined_pooled: also add a projection (zero-initialised) of the refined tokens' masked mean to
            the pooled vector, so the conditioning vector, not only attention, can carry what the
            refiner computes (`UNetConfig.text_refiner_pooled`; needs refiner_layers > 0).
    """

    def __init__(self, text_dim: int, embedding_channels: int, context_channels: int, positions: int = 0,
                 refiner_layers: int = 0, refiner_heads: int = 1, refined_pooled: bool = False):
        super().__init__()
        self.text_dim = text_dim
        self.norm = nn.LayerNorm(text_dim)
        self.to_pooled = nn.Linear(text_dim, embedding_channels)
        self.null_pooled = nn.Parameter(torch.randn(embedding_channels) * 0.02)
        if context_channels > 0:
            self.to_context = nn.Linear(text_dim, context_channels)
            self.null_token = nn.Parameter(torch.randn(1, context_channels) * 0.02)
        else:
            self.to_context = None
            self.null_token = None
        self.positions = nn.Parameter(torch.randn(positions, context_channels) * 0.02) if positions > 0 else None
        self.refiner = nn.ModuleList(TokenRefinerLayer(context_channels, refiner_heads) for _ in range(refiner_layers))
        if refined_pooled and not refiner_layers:
            raise ValueError("refined_pooled needs refiner_layers > 0")
        self.refined_to_pooled = zero_init(nn.Linear(context_channels, embedding_channels)) if refined_pooled else None

    def forward(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        null: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """tokens (B,L,D) float, mask (B,L) bool, null (B,) bool -> (pooled, context, context_mask).

        Padded positions (mask False) and the text of null rows never reach the outputs: they are
        zeroed before any arithmetic (so even NaN padding is harmless) and masked out of the
        mean and of attention.
        """
        valid = mask & ~null[:, None]
        tokens = torch.where(valid[..., None], tokens.to(self.norm.weight.dtype), 0.0)
        normed = self.norm(tokens)

        weights = valid.to(normed.dtype)[..., None]
        mean = (normed * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        projected_mean = self.to_pooled(mean)

        if self.to_context is None:
            return torch.where(null[:, None], self.null_pooled.to(projected_mean.dtype), projected_mean), None, None
        projected = self.to_context(normed)
        if self.positions is not None:
            if projected.shape[1] > self.positions.shape[0]:
                raise ValueError(f"{projected.shape[1]} text tokens but unet.text_positions is {self.positions.shape[0]}; "
                                 "set it to at least the text encoder's max_length")
            projected = projected + self.positions[: projected.shape[1]].to(projected.dtype)
        if len(self.refiner):
            # A row without a real token (null rows, empty captions) attends over all of its
            # (zeroed, projected) tokens instead: its outputs are masked out of attention below.
            keys = valid | ~valid.any(dim=1, keepdim=True)
            for layer in self.refiner:
                projected = layer(projected, keys)
        if self.refined_to_pooled is not None:
            refined_mean = (projected * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
            projected_mean = projected_mean + self.refined_to_pooled(refined_mean)
        pooled = torch.where(null[:, None], self.null_pooled.to(projected_mean.dtype), projected_mean)
        null_token = self.null_token.to(projected.dtype).expand(projected.shape[0], -1, -1)
        context = torch.cat([null_token, projected], dim=1)
        context_mask = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)
        return pooled, context, context_mask
