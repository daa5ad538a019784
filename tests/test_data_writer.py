"""The shard writer: limits, sources, atomic writes and exact resume."""

import csv
import fnmatch
import glob
import io
import json
import logging
import os
import struct
import tarfile
import zlib

import numpy as np
import pytest
from PIL import Image

from cascade.cli import main as cascade_main
from cascade.data.image_io import ImageEncoding, ImageTooLarge, decode_image
from cascade.data.shards import AtomicShard, encode_sample, member_bytes, read_samples, resolve_shards, shard_keys
from cascade.data.sources import CaptionListSource, FolderSource, SyntheticSource
from cascade.data.writer import write_shards


class CrashingSource(SyntheticSource):
    """A synthetic source whose encoding fails at one index, like a run killed mid-shard."""

    crash_at: int = -1

    def sample(self, index):
        if index == self.crash_at:
            raise KeyboardInterrupt("simulated kill")
        return super().sample(index)


def _shard_bytes(folder):
    return {os.path.basename(p): open(p, "rb").read() for p in sorted(glob.glob(os.path.join(folder, "*.tar")))}


def _photo(path, size=(40, 30), seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _png_header_only(width, height):
    """A PNG whose header declares width x height (8-bit grey) followed by a few bytes of pixel
    data: what a decompression bomb looks like to ``Image.open``; only decoding finds it short."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(bytes(64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _skip_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "cascade.data.writer" and "skipping" in r.getMessage()]


def test_synthetic_shards_respect_the_sample_limit(tmp_path):
    summary = write_shards(SyntheticSource(23, resolution=32), str(tmp_path), max_samples=10, progress=False)
    assert [s["samples"] for s in summary.shards] == [10, 10, 3]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["samples"] == 23 and manifest["shards"] == summary.shards
    assert len(json.loads((tmp_path / "classes.json").read_text())) == 15
    first = next(read_samples(str(tmp_path / "shard-000000.tar")))
    assert set(first) == {"__key__", "png", "cls", "txt", "json"}
    scene = json.loads(first["json"])
    assert first["txt"].decode() == scene["caption"] and int(first["cls"]) == scene["class"]


def test_shards_respect_the_byte_limit(tmp_path):
    summary = write_shards(SyntheticSource(12, resolution=32), str(tmp_path), max_bytes=12_000 + 10_240, progress=False)
    assert len(summary.shards) > 1 and summary.samples == 12
    for path in glob.glob(str(tmp_path / "*.tar")):
        with tarfile.open(path) as tar:
            members = sum(512 + -(-m.size // 512) * 512 for m in tar.getmembers())
        assert members <= 12_000 or len(shard_keys(path)) == 1


def test_crash_mid_shard_then_rerun_gives_the_same_shards(tmp_path):
    reference = tmp_path / "reference"
    write_shards(SyntheticSource(20, resolution=32), str(reference), max_samples=6, progress=False)

    out = tmp_path / "resumed"
    crashing = CrashingSource(20, resolution=32)
    crashing.crash_at = 14  # the third shard (samples 12..17) is half written
    with pytest.raises(KeyboardInterrupt):
        write_shards(crashing, str(out), max_samples=6, progress=False)
    assert sorted(os.listdir(out)) == ["shard-000000.tar", "shard-000001.tar", "writer.json"]
    # a hard kill (no chance to clean up) leaves the shard's temporary file behind
    killed = AtomicShard(str(out / "shard-000002.tar"))
    members = encode_sample({"__key__": "000012", "txt": "half a shard"})
    killed.add(members, member_bytes(members))
    killed.file.handle.flush()
    assert fnmatch.filter(os.listdir(out), ".shard-000002.tar.*.tmp") == [killed.file.tmp.name]

    summary = write_shards(SyntheticSource(20, resolution=32), str(out), max_samples=6, progress=False)
    assert summary.resumed_shards == 2
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")]
    assert _shard_bytes(out) == _shard_bytes(reference)
    assert json.loads((out / "manifest.json").read_text()) == json.loads((reference / "manifest.json").read_text())


def test_resume_with_other_settings_is_refused(tmp_path):
    write_shards(SyntheticSource(4, resolution=32), str(tmp_path), max_samples=2, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        write_shards(SyntheticSource(4, resolution=32), str(tmp_path), max_samples=3, progress=False)


def test_folder_source_uses_sorted_class_folders_and_skips_unreadable_files(tmp_path):
    root = tmp_path / "imagenet"
    for label in ("zebra", "apple"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            _photo(root / label / f"{label}_{i}.jpg", seed=i)
    (root / "apple" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "apple" / "notes.txt").write_text("not an image")

    summary = write_shards(FolderSource(str(root)), str(tmp_path / "out"), progress=False)
    assert summary.samples == 6 and summary.unreadable == 1
    assert json.loads((tmp_path / "out" / "classes.json").read_text()) == ["apple", "zebra"]
    samples = [s for shard in resolve_shards(str(tmp_path / "out"), "t") for s in read_samples(shard)]
    for sample in samples:
        metadata = json.loads(sample["json"])
        assert int(sample["cls"]) == ["apple", "zebra"].index(metadata["class_name"])
        assert os.path.basename(os.path.dirname(metadata["source"])) == metadata["class_name"]
        # "keep": the stored bytes are the original file
        assert sample["jpg"] == open(metadata["source"], "rb").read()
    keys = [s["__key__"] for s in samples]
    assert keys == sorted(keys) and len(set(keys)) == 6


def test_caption_lists_in_jsonl_and_csv(tmp_path):
    for i in range(3):
        _photo(tmp_path / f"img{i}.png", size=(64, 48), seed=i)
    rows = [{"image": f"img{i}.png", "caption": f"caption {i}", "license": "cc0"} for i in range(3)]
    (tmp_path / "list.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with open(tmp_path / "list.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "caption", "license"])
        writer.writeheader()
        writer.writerows(rows)

    for name in ("list.jsonl", "list.csv"):
        source = CaptionListSource(str(tmp_path / name), encoding=ImageEncoding(format="jpg", resize=24))
        out = tmp_path / f"out-{name}"
        write_shards(source, str(out), progress=False)
        samples = list(read_samples(str(out / "shard-000000.tar")))
        assert sorted(s["txt"].decode() for s in samples) == ["caption 0", "caption 1", "caption 2"]
        for sample in samples:
            assert Image.open(io.BytesIO(sample["jpg"])).size == (32, 24)
            assert json.loads(sample["json"])["license"] == "cc0"


def test_cli_writes_synthetic_shards_and_reports_bad_settings(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["write-shards", "--source", "synthetic", "--count", "5", "--resolution", "32", "--out", str(out)]
    assert cascade_main(["data", *args, "--max-samples", "2", "--no-progress"]) == 0
    assert len(glob.glob(str(out / "*.tar"))) == 3
    assert cascade_main(["data", "write-shards", "--source", "folder:" + str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "missing" in capsys.readouterr().err


def test_a_flat_image_folder_is_pointed_to_the_list_source(tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "a.png")
    code = cascade_main(["data", "write-shards", "--source", f"folder:{flat}", "--out", str(tmp_path / "out")])
    assert code == 2
    error = capsys.readouterr().err
    assert "no class sub-folders" in error and "--source list:FILE" in error and "`image`, `caption`" in error


@pytest.mark.parametrize("kind", ["list", "folder"])
def test_a_decompression_bomb_is_skipped_and_counted_by_the_writer(tmp_path, capsys, caplog, kind):
    root = tmp_path / "images"
    (root / "things").mkdir(parents=True)
    (root / "things" / "bomb.png").write_bytes(_png_header_only(60_000, 60_000))  # 3.6 Gpx in ~100 bytes
    for i in range(2):
        _photo(root / "things" / f"photo{i}.png", seed=i)
    rows = [{"image": f"things/{name}", "caption": name} for name in ("photo0.png", "bomb.png", "photo1.png")]
    (root / "list.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    location = root / "list.jsonl" if kind == "list" else root
    out = tmp_path / "out"
    command = ["data", "write-shards", "--source", f"{kind}:{location}", "--out", str(out), "--no-progress"]

    with caplog.at_level(logging.WARNING, logger="cascade.data.writer"):
        assert cascade_main(command) == 0
    assert "2 samples in 1 shards" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["unreadable"] == 1
    (warning,) = _skip_warnings(caplog)
    assert "bomb.png" in warning and "decompression bomb" in warning
    assert cascade_main(command) == 0, "a rerun finishes too"
    assert "1 unreadable inputs skipped" in capsys.readouterr().out


def test_the_pixel_limit_is_checked_from_the_header_before_decoding():
    header_only = _png_header_only(9000, 9000)  # 81 Mpx: over the default limit, under Pillow's
    with pytest.raises(ImageTooLarge, match="9000x9000"):  # decoding would have failed on the short data
        ImageEncoding().encode_file(header_only)
    with pytest.raises(ImageTooLarge, match="9000x9000"):
        ImageEncoding(format="jpg", resize=64).encode_file(header_only)
    with pytest.raises(ValueError, match="max_pixels"):
        ImageEncoding(max_pixels=0)


def test_large_jpegs_are_decoded_at_a_reduced_scale_that_keeps_the_target_size():
    pixels = np.random.default_rng(0).integers(0, 256, size=(600, 800, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    sizes = [decode_image(jpeg, min_short_side=side).size for side in (None, 300, 100, 1)]
    assert sizes == [(800, 600), (400, 300), (200, 150), (100, 75)]  # DCT scales 1, 1/2, 1/4, 1/8
    assert ImageEncoding().encode_file(jpeg)[1] == jpeg  # "keep": checked at 1/8 scale, stored as it is
    with pytest.raises(OSError, match="truncated"):
        ImageEncoding().encode_file(jpeg[: len(jpeg) - 100])


def test_images_over_max_pixels_are_skipped_by_the_writer_with_their_size(tmp_path, capsys, caplog):
    _photo(tmp_path / "big.png", size=(40, 30), seed=0)  # 1200 pixels
    _photo(tmp_path / "small.png", size=(25, 20), seed=1)  # 500 pixels
    rows = [{"image": "big.png", "caption": "big"}, {"image": "small.png", "caption": "small"}]
    (tmp_path / "list.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    command = ["data", "write-shards", "--source", f"list:{tmp_path / 'list.jsonl'}", "--out", str(out),
               "--max-pixels", "1000", "--no-progress"]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="cascade.data.writer"):
        assert cascade_main(command) == 0
    assert "1 samples in 1 shards" in capsys.readouterr().out
    assert [s["txt"] for s in read_samples(str(out / "shard-000000.tar"))] == [b"small"]
    (warning,) = _skip_warnings(caplog)
    assert "big.png" in warning and "40x30" in warning
    assert json.loads((out / "writer.json").read_text())["source"]["encoding"]["max_pixels"] == 1000


def test_a_write_started_before_max_pixels_existed_resumes(tmp_path):
    reference = write_shards(SyntheticSource(6, resolution=32), str(tmp_path / "reference"), max_samples=2,
                             progress=False)  # fmt: skip
    out = tmp_path / "out"
    write_shards(SyntheticSource(6, resolution=32), str(out), max_samples=2, progress=False)
    os.remove(out / "shard-000002.tar")  # as if killed before the last shard
    settings = json.loads((out / "writer.json").read_text())
    del settings["source"]["encoding"]["max_pixels"]  # what an earlier version recorded
    (out / "writer.json").write_text(json.dumps(settings))

    summary = write_shards(SyntheticSource(6, resolution=32), str(out), max_samples=2, progress=False)
    assert summary.resumed_shards == 2 and summary.shards == reference.shards
    assert "max_pixels" in json.loads((out / "writer.json").read_text())["source"]["encoding"]
