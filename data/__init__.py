"""Data: webdataset shards, shard writer, degradations, DataModules, the built-in captioned dataset.

Modules (import what you need; this package imports nothing on its own):

- `data.datamodule`: `ShardDataModule`, the LightningDataModule of every stage.
- `data.stream`: `ShardStream`, resampled training / split validation streams, bad-sample handling.
- `data.transforms`: per-sample decode, resize, crops, flips, class / caption / embeddings.
- `data.degrade`: anti-aliased downsampling and blur / JPEG degradations for SR inputs.
- `data.shards`: the shard format, atomic shard files, shard list resolution.
- `data.writer`, `data.sources`, `data.image_io`: the resumable shard writer and its inputs.
- `data.text_embeddings`: precomputed text-encoder embeddings stored in shards.
- `data.synthetic`, `data.render`: the built-in captioned shapes dataset.
- `data.bench`: the loader benchmark; `data.cli`: `cascade data ...`.
- `data.prompt_sets` and `data/prompts/`: prompt sets (DrawBench, PartiPrompts, your own files).
"""
