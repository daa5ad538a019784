"""The bottom layer: small file formats and helpers every other package shares.

- `atomic`: atomic writes (temporary file next to the target, fsync, rename) and the cleanup
  of a killed writer's temporaries;
- `hashing`: content hashes of files;
- `images`: float images in [-1, 1] as 8-bit pixels, with the rounding PNG files get;
- `sample_folder`: the folder format `cascade sample` writes.

Nothing here imports another `cascade` package.
"""
