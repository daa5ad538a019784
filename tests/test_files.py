"""cascade.files: the one file hash and the one float-to-8-bit image quantisation."""

import hashlib
import io

import numpy as np
import pytest
import torch
from PIL import Image

from cascade.eval.alignment import to_rgb_uint8
from cascade.eval.images import uint8_batch
from cascade.files.hashing import file_sha256
from cascade.files.images import png_bytes, to_uint8


def test_file_sha256_is_the_hash_of_the_bytes_or_its_prefix(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"x" * (3 << 20) + b"tail")  # several read blocks
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_sha256(path) == expected
    assert file_sha256(path, 16) == expected[:16]


def test_floats_are_clamped_then_rounded_half_to_even():
    values = torch.tensor([-2.0, -1.0, -1 + 1 / 255, 0.0, 1 / 255, 1.0, 3.0]).reshape(1, 1, 7)
    expected = np.clip(np.round((np.clip(values.numpy(), -1, 1) + 1) * 127.5), 0, 255).astype(np.uint8)
    assert np.array_equal(to_uint8(values).numpy(), expected)
    assert to_uint8(values).tolist() == [[[0, 0, 0, 128, 128, 255, 255]]]  # 0.5 and 127.5 round to even
    pixels = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    assert to_uint8(pixels) is pixels
    with pytest.raises(TypeError, match="uint8 or float"):
        to_uint8(torch.zeros(1, 3, 2, 2, dtype=torch.int32))


def test_png_files_batches_and_the_detector_see_the_same_pixels():
    image = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(0)) * 2.2 - 1.1
    saved = np.asarray(Image.open(io.BytesIO(png_bytes(image))))
    assert saved.shape == (5, 7, 3)
    assert np.array_equal(saved, to_uint8(image).permute(1, 2, 0).numpy())
    assert np.array_equal(saved, uint8_batch(image[None])[0].permute(1, 2, 0).numpy())
    assert np.array_equal(saved, to_rgb_uint8(image))
    assert np.array_equal(saved, to_rgb_uint8(image.double().numpy()))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        uint8_batch(image)
