"""What a stage is conditioned on (class ids or text), CFG dropout, and the frozen text encoder.

Classifier-free guidance (Ho & Salimans 2022) trains one network both conditionally and
unconditionally: during training each row's condition is replaced by the learned null
condition with probability p_uncond (`cfg_dropout_mask`), and at sampling the conditional
and the null rows run as one batch (`Condition.with_null_rows`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

CONDITIONINGS = ("none", "class", "text")


@dataclass(frozen=True)
class TextEncoderConfig:
    """The frozen text encoder of a text-conditional stage (see `cascade.nn.TextEncoder`).

    kind: "minilm" (offline, ships as a Python package), "t5" or "clip".
    path: a local directory or Hugging Face id of the weights; None takes the kind's default.
    max_length: captions are truncated to this many tokens.
    dtype: the encoder's weights: "float32", "bfloat16" or "float16" (outputs are float32).
    cache_size: how many distinct captions keep their encoding in memory (0 turns the cache off).
    layer: the hidden states the stage reads: null = the encoder's last output, k = layer k's
        (0 = the input embeddings; `cascade.nn.TextEncoder`).
    """

    kind: str = "minilm"
    path: str | None = None
    max_length: int = 32
    dtype: str = "float32"
    cache_size: int = 4096
    layer: int | None = None


@dataclass
class Condition:
    """A batch of conditions. Rows are samples; which fields are set depends on the stage:
    `class_labels` (B,) long for class-conditional stages, `text_tokens` (B,L,D) float with
    `text_mask` (B,L) bool (True = real token) for text-conditional ones, none for
    unconditional SR stages. `null` (B,) bool marks rows that use the learned null condition.
    `layout_choice` (B,) long: which of a text stage's layout choices each row takes
    (`UNetConfig.text_layout_choices`; drawn by `DiffusionStage.with_layout_choices`), or None.
    """

    class_labels: torch.Tensor | None = None
    text_tokens: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    null: torch.Tensor | None = None
    layout_choice: torch.Tensor | None = None

    @property
    def batch_size(self) -> int | None:
        for value in (self.class_labels, self.text_tokens, self.null):
            if value is not None:
                return value.shape[0]
        return None

    @property
    def is_empty(self) -> bool:
        return self.class_labels is None and self.text_tokens is None

    def to(self, device: torch.device | str) -> "Condition":
        def move(value):
            return None if value is None else value.to(device)

        return Condition(move(self.class_labels), move(self.text_tokens), move(self.text_mask), move(self.null),
                         move(self.layout_choice))

    def with_null(self, null: torch.Tensor) -> "Condition":
        """The same condition with `null` (B,) bool marking the rows to replace by the null condition."""
        if self.is_empty:
            return self
        return dataclasses.replace(self, null=null)

    def with_null_rows(self) -> "Condition":
        """[cond rows; the same rows nulled]: the 2B-row batch of one guided forward pass."""
        if self.is_empty:
            raise ValueError("classifier-free guidance needs a class or text condition; this one is empty")
        return self.with_negative_rows(self.with_null(torch.ones(self.batch_size, dtype=torch.bool)))

    def with_negative_rows(self, negative: "Condition") -> "Condition":
        """[cond rows; negative rows]: the 2B-row batch of one guided forward pass in which each
        row's negative condition (a negative prompt, a negative class; `with_null_rows`: the null
        one) takes the second half; rows whose `negative.null` is set use the null condition. Text
        of two lengths is padded to the longer with masked zero tokens. A row's negative takes the
        row's own layout choice."""
        if self.is_empty:
            raise ValueError("classifier-free guidance needs a class or text condition; this one is empty")
        if negative.batch_size != self.batch_size:
            raise ValueError(f"the negative condition has {negative.batch_size} rows for {self.batch_size} conditions")
        device = (self.class_labels if self.class_labels is not None else self.text_tokens).device
        no_null = torch.zeros(self.batch_size, dtype=torch.bool, device=device)
        null = torch.cat([no_null, no_null if negative.null is None else negative.null.to(device)])
        if self.class_labels is not None:
            if negative.class_labels is None:
                raise ValueError("a class condition needs a class negative")
            return Condition(torch.cat([self.class_labels, negative.class_labels.to(device)]), null=null)
        if negative.text_tokens is None:
            raise ValueError("a text condition needs a text negative")
        choice = None if self.layout_choice is None else torch.cat([self.layout_choice, self.layout_choice])
        tokens = [self.text_tokens, negative.text_tokens.to(device)]
        if self.text_mask is None and negative.text_mask is None and tokens[0].shape == tokens[1].shape:
            return Condition(None, torch.cat(tokens), None, null, choice)
        length = max(value.shape[1] for value in tokens)
        masks = [torch.ones(value.shape[:2], dtype=torch.bool, device=device) if condition.text_mask is None
                 else condition.text_mask.to(device) for value, condition in zip(tokens, (self, negative))]
        tokens = [F.pad(value, (0, 0, 0, length - value.shape[1])) for value in tokens]
        masks = [F.pad(mask, (0, length - mask.shape[1]), value=False) for mask in masks]
        return Condition(None, torch.cat(tokens), torch.cat(masks), null, choice)

    def unet_kwargs(self) -> dict:
        """Keyword arguments for `UNet.forward`."""
        if self.is_empty:
            return {}
        kwargs = {"class_labels": self.class_labels, "text_tokens": self.text_tokens, "text_mask": self.text_mask,
                  "null_cond": self.null}
        if self.layout_choice is not None:
            kwargs["layout_choice"] = self.layout_choice
        return kwargs


def cfg_dropout_mask(batch_size: int, p_uncond: float, device: torch.device) -> torch.Tensor:
    """(B,) bool: True for rows whose condition is dropped to the null condition
    (Ho & Salimans 2022, Alg. 1, p_uncond)."""
    return torch.rand(batch_size, device=device) < p_uncond


class FrozenTextEncoder:
    """A frozen `cascade.nn.TextEncoder` (with its prompt cache), held outside the module tree.

    Batches that carry precomputed `text_tokens` never touch it, so the encoder is only loaded
    when captions must be encoded (or prompts given to `make_condition`).

    It is deliberately not an `nn.Module` attribute of the stage: its weights stay out of the
    stage's state_dict (checkpoints and exports only hold the UNet), out of the optimiser and
    out of DDP's gradient buckets. The encoder is loaded on first use and moved lazily to the
    device of the batch. Copies of the stage (the EMA copy) share this one instance.
    """

    def __init__(self, config: TextEncoderConfig):
        self.config = config
        self._encoder = None

    def __deepcopy__(self, memo) -> "FrozenTextEncoder":
        return self

    @property
    def encoder(self):
        """The underlying `cascade.nn.TextEncoder`, loaded on first use."""
        if self._encoder is None:
            from ..nn import TextEncoder

            self._encoder = TextEncoder.from_config(
                kind=self.config.kind,
                path=self.config.path,
                max_length=self.config.max_length,
                dtype=self.config.dtype,
                cache=self.config.cache_size > 0,
                cache_size=max(self.config.cache_size, 1),
                layer=self.config.layer,
            )
        return self._encoder

    def encode(self, captions: list[str], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (B,L,D) float32, mask (B,L) bool) on `device`."""
        encoder = self.encoder
        if encoder.device != torch.device(device):
            encoder.to(device)
        encoding = encoder.encode(list(captions))
        return encoding.tokens.to(device), encoding.mask.to(device)
