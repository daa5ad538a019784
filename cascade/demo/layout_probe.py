"""The layout probe: can the base's text path learn where a caption puts its objects, without a denoiser?

The demo's base reads the words of "a blue circle left of a red square" but not which object goes
left (docs/benchmarks.md, "Word order"). This probe separates the text path from the denoiser: the
base's own text modules (`TextConditioning` at the demo base's widths, then `TextLayout`, one learned
query per cell of an r x r grid attending to the caption's tokens, and a 1x1 head to RGB) are
trained by plain regression to the training images averaged to r x r (the target of the stage's
`layout_loss_weight`), and scored with the ablation's word-order measure: how often the prediction
for a held-out two-colour relation caption is closer to the caption's render than the prediction
for the swapped caption ("a red square left of a blue circle") is (0.5 = blind to the order).

    python -m cascade.demo.layout_probe --steps 2000 --batch 64 --seeds 0,1,2

No diffusion, no sampling, no detector: a minute or two per seed on a CPU.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.synthetic import sample_scene
from ..data.render import render
from ..data.transforms import to_tensor
from ..nn.text import TextEncoder
from ..nn.text_conditioning import TextConditioning, TextLayout
from .ablation import mean_and_standard_error, swapped_caption

__all__ = ["LayoutProbe", "layout_word_order", "run_probe"]


def layout_word_order(right: torch.Tensor, wrong: torch.Tensor, targets: torch.Tensor) -> float:
    """How often `right` (B,C,h,w, the prediction for each caption) is closer to `targets` than
    `wrong` (the prediction for the swapped caption) is; ties count half (0.5 = blind to the order)."""
    right_error = ((right - targets) ** 2).mean(dim=(1, 2, 3))
    wrong_error = ((wrong - targets) ** 2).mean(dim=(1, 2, 3))
    return float(((right_error < wrong_error).float() + 0.5 * (right_error == wrong_error).float()).mean())


class LayoutProbe(nn.Module):
    """The base's text path up to the layout map's image: tokens -> (B, 3, r, r)."""

    def __init__(self, text_dim: int = 384, channels: int = 64, resolution: int = 8, head_channels: int = 32):
        super().__init__()
        self.text = TextConditioning(text_dim, channels, channels)
        self.layout = TextLayout(channels, channels, resolution, max(1, channels // head_channels))
        self.head = nn.Conv2d(channels, 3, 1)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pooled, context, context_mask = self.text(tokens, mask, torch.zeros(len(tokens), dtype=torch.bool))
        return self.head(self.layout(pooled, context, context_mask))


@dataclass
class _Split:
    tokens: torch.Tensor  # (captions, L, D)
    mask: torch.Tensor  # (captions, L)
    caption_index: torch.Tensor  # (images,)
    targets: torch.Tensor  # (images, 3, r, r)
    swapped: list[tuple[int, int, int]]  # (image, caption, swapped caption) of the two-colour relation scenes


def _split(encoder: TextEncoder, split: str, count: int, resolution: int, image_size: int) -> _Split:
    scenes = [sample_scene(i, seed=0, split=split) for i in range(count)]
    swaps = {k: text for k, scene in enumerate(scenes) if (text := swapped_caption(scene)) is not None}
    captions = sorted({scene["caption"] for scene in scenes} | set(swaps.values()))
    index = {caption: i for i, caption in enumerate(captions)}
    encoding = encoder.encode(captions, batch_size=256)
    images = torch.stack([to_tensor(render(scene, image_size)) for scene in scenes])
    return _Split(encoding.tokens.float(), encoding.mask.bool(),
                  torch.tensor([index[scene["caption"]] for scene in scenes]),
                  F.adaptive_avg_pool2d(images, resolution),
                  [(k, index[scenes[k]["caption"]], index[text]) for k, text in swaps.items()])


def _word_order(probe: LayoutProbe, data: _Split) -> float:
    images, right, wrong = (torch.tensor(column) for column in zip(*data.swapped))
    with torch.no_grad():
        return layout_word_order(probe(data.tokens[right], data.mask[right]), probe(data.tokens[wrong], data.mask[wrong]),
                                 data.targets[images])


def run_probe(steps: int = 2000, batch: int = 64, lr: float = 1e-3, seed: int = 0, every: int = 250,
              train_images: int = 5000, heldout_images: int = 1500, resolution: int = 8, image_size: int = 32,
              text_layer: int | None = None, encoder_path: str | None = None, log=print) -> list[dict]:
    """Train a `LayoutProbe` (Adam, MSE) and return its scores every `every` steps: step, the training
    loss, and the word order on the training split's and the held-out split's two-colour relation scenes."""
    encoder = TextEncoder.from_config("minilm", encoder_path, layer=text_layer)
    train, heldout = (_split(encoder, split, count, resolution, image_size)
                      for split, count in (("train", train_images), ("heldout", heldout_images)))
    torch.manual_seed(seed)
    probe = LayoutProbe(encoder.dim, resolution=resolution)
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    scores, loss = [], math.nan
    for step in range(steps + 1):
        if step % every == 0 or step == steps:
            scores.append({"step": step, "loss": loss, "train word order": _word_order(probe, train),
                           "held-out word order": _word_order(probe, heldout)})
            log(f"seed {seed} step {step}: loss {loss:.4f}, word order train {scores[-1]['train word order']:.2f}, "
                f"held-out {scores[-1]['held-out word order']:.2f}")
        if step == steps:
            break
        rows = torch.randint(0, len(train.caption_index), (batch,), generator=generator)
        captions = train.caption_index[rows]
        error = F.mse_loss(probe(train.tokens[captions], train.mask[captions]), train.targets[rows])
        optimizer.zero_grad()
        error.backward()
        optimizer.step()
        loss = error.item()
    return scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", default="0", help="comma separated")
    parser.add_argument("--text-layer", type=int, default=None, help="MiniLM hidden state (default: the last)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    finals = [run_probe(args.steps, args.batch, args.lr, int(seed), text_layer=args.text_layer)[-1]
              for seed in args.seeds.split(",")]
    for key in ("train word order", "held-out word order"):
        mean, spread = mean_and_standard_error([score[key] for score in finals])
        print(f"{key} at step {args.steps}: {mean:.2f} ± {spread:.2f} (seeds {args.seeds})")


if __name__ == "__main__":
    main()
