"""The bottom layer: small pieces every other package shares, with no dependency on any of them.

- `atomic`: atomic file writes (temporary file beside the target, fsync, rename).
- `sample_folder`: the format of a `cascade sample` folder (names, seeds, metadata, stages).
"""
