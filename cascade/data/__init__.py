"""Data: webdataset shards, shard writer, degradations, DataModules, the built-in captioned dataset.

Modules (import what you need; this package imports nothing on its own):

- `cascade.data.datamodule`: `ShardDataModule`, the LightningDataModule of every stage.
- `cascade.data.stream`: `ShardStream`, resampled training / split validation streams, bad-sample handling.
- `cascade.data.transforms`: per-sample decode, resize, crops, flips, class / caption / embeddings.
- `cascade.data.degrade`: anti-aliased downsampling and blur / JPEG degradations for SR inputs.
- `cascade.data.shards`: the shard format, atomic shard files, shard list resolution.
- `cascade.data.writer`, `cascade.data.sources`, `cascade.data.image_io`: the resumable shard writer and its inputs.
- `cascade.data.text_embeddings`: precomputed text-encoder embeddings stored in shards.
- `cascade.data.synthetic`, `cascade.data.render`: the built-in captioned shapes dataset.
- `cascade.data.bench`: the loader benchmark; `cascade.cli.data`: `cascade data ...`.
- `cascade.data.prompt_sets` and `data/prompts/`: prompt sets (DrawBench, PartiPrompts, your own files).
"""
