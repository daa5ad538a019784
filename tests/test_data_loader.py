"""The training / validation loader, read back from real tar shards through ShardDataModule."""

import io
import logging
import random
import tarfile

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from cascade.data.datamodule import ShardDataModule
from cascade.data.degrade import Degradation, downsample
from cascade.data.shards import AtomicShard, encode_sample, member_bytes
from cascade.data.sources import SyntheticSource
from cascade.data.synthetic import render, sample_scene
from cascade.data.transforms import SampleTransform
from cascade.data.writer import write_shards


def _encode(pixels, field="png"):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format={"png": "PNG", "jpg": "JPEG"}[field])
    return buffer.getvalue()


def _pixels(width, height, seed):
    """A smooth random RGB image (random low-frequency pattern plus edges)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))


def _sample(key, width=40, height=32, seed=0, field="png"):
    return {"__key__": key, field: _encode(_pixels(width, height, seed), field), "cls": seed % 7, "txt": key}


def _write(path, samples):
    shard = AtomicShard(str(path))
    for sample in samples:
        members = encode_sample(sample)
        shard.add(members, member_bytes(members))
    shard.commit()
    return str(path)


def _to_pil(tensor):
    array = ((tensor.permute(1, 2, 0) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(array)


def _captions(loader):
    return [caption for batch in loader for caption in batch["caption"]]


@pytest.fixture(scope="module")
def synthetic_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    write_shards(SyntheticSource(24, resolution=64), str(out), max_samples=8, progress=False)
    return str(out)


def test_batches_follow_the_contract(synthetic_shards):
    data = ShardDataModule(
        synthetic_shards, synthetic_shards, resolution=32, with_class_label=True,
        batch_size=4, num_workers=0, samples_per_epoch=8,
    )
    data.setup("fit")
    loader = data.train_dataloader()
    batches = list(loader)
    assert len(loader) == len(batches) == 2
    batch = batches[0]
    assert set(batch) == {"image", "class_label", "caption", "skipped", "shard_errors"}
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert batch["class_label"].dtype == torch.long and batch["class_label"].shape == (4,)
    assert len(batch["caption"]) == 4 and all(isinstance(c, str) for c in batch["caption"])
    assert batch["skipped"].dtype == torch.long and batch["skipped"].tolist() == [0, 0, 0, 0]
    assert batch["shard_errors"].dtype == torch.long and batch["shard_errors"].tolist() == [0, 0, 0, 0]
    assert sum(len(b["image"]) for b in data.val_dataloader()) == 24

    sr = ShardDataModule(synthetic_shards, resolution=64, lowres_resolution=16, batch_size=2, num_workers=0)
    sr.setup("fit")
    batch = next(iter(sr.train_dataloader()))
    assert batch["image"].shape == (2, 3, 64, 64) and batch["lowres"].shape == (2, 3, 16, 16)
    assert sr.val_dataloader() == []


def test_bad_samples_are_skipped_counted_and_reported(tmp_path, caplog):
    good = [_sample(f"good{i}", seed=i) for i in range(3)]
    truncated = _sample("truncated", seed=9)
    truncated["png"] = truncated["png"][: len(truncated["png"]) // 2]
    bad = [
        {"__key__": "corrupt", "jpg": b"\xff\xd8\xff\xe0" + bytes(200), "cls": 1, "txt": "corrupt"},
        truncated,
        {"__key__": "noimage", "cls": 1, "txt": "no image"},
        {k: v for k, v in _sample("nocaption").items() if k != "txt"},
        {**_sample("latin1"), "txt": "café".encode("latin-1")},
        _sample("tiny", width=8, height=8),
        {**_sample("badclass"), "cls": b"abc"},
    ]
    shard = _write(tmp_path / "bad.tar", good[:1] + bad + good[1:])
    data = ShardDataModule(shard, shard, resolution=16, with_class_label=True, batch_size=2, num_workers=0)
    data.setup("fit")

    with caplog.at_level(logging.WARNING, logger="cascade.data.stream"):
        batches = list(data.val_dataloader())
    assert sorted(c for b in batches for c in b["caption"]) == ["good0", "good1", "good2"]
    assert batches[-1]["skipped"].tolist() == [7]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 5, "the first five are reported one by one, then only at 10, 100, ..."
    for key in ("corrupt", "truncated", "noimage", "nocaption", "latin1"):
        assert any(key in m and "bad.tar" in m for m in messages), key

    caplog.clear()
    train = iter(data.train_dataloader())  # resampled: keeps going over the same bad shard
    skipped = [next(train)["skipped"].max().item() for _ in range(8)]
    assert skipped == sorted(skipped) and skipped[-1] >= 10
    assert any("bad samples skipped so far" in r.getMessage() for r in caplog.records)


def _truncate_inside(path, member):
    """Cut the shard at `path` in the middle of `member`'s data, as an interrupted copy would."""
    with tarfile.open(path) as tar:
        info = tar.getmember(member)
    with open(path, "r+b") as handle:
        handle.truncate(info.offset_data + info.size // 2)
    return path


def test_a_truncated_shard_is_one_shard_error_and_the_next_shard_is_read(tmp_path, caplog):
    truncated = _truncate_inside(_write(tmp_path / "a.tar", [_sample(f"a{i}", seed=i) for i in range(6)]), "a3.png")
    second = _write(tmp_path / "b.tar", [_sample(f"b{i}", seed=i) for i in range(3)])
    module = ShardDataModule([truncated, second], [truncated, second], resolution=16, batch_size=2, num_workers=0)
    module.setup("validate")
    with caplog.at_level(logging.WARNING, logger="cascade.data.stream"):
        batches = list(module.val_dataloader())
    assert _captions(batches) == ["a0", "a1", "a2", "b0", "b1", "b2"]
    assert batches[-1]["shard_errors"].tolist() == [1, 1] and batches[-1]["skipped"].tolist() == [0, 0]
    (message,) = [r.getMessage() for r in caplog.records]
    assert "shard read error" in message and "a.tar" in message


def test_a_broken_shard_read_by_every_rank_is_counted_once(tmp_path):
    """With fewer validation shards than consumers every rank reads every shard; the sum over
    ranks still counts the truncated shard once, and none of its samples as bad."""
    truncated = _truncate_inside(_write(tmp_path / "a.tar", [_sample(f"a{i}", seed=i) for i in range(6)]), "a3.png")
    data = ShardDataModule(truncated, truncated, resolution=16, batch_size=2, num_workers=0)
    streams = [data.build_stream(train=False, rank=rank, world_size=4) for rank in range(4)]
    assert sorted(caption for stream in streams for caption in _captions(stream)) == ["a0", "a1", "a2"]
    assert sum(stream.shard_errors for stream in streams) == 1
    assert sum(stream.skipped for stream in streams) == 0


def test_the_counts_are_the_rank_total_over_its_workers(tmp_path):
    shards = []
    for n in range(2):  # two shards, one per worker, with 2 bad samples each
        bad = [{**_sample(f"{n}-bad{i}"), "png": b"not a png"} for i in range(2)]
        shards.append(_write(tmp_path / f"{n}.tar", [_sample(f"{n}-{i}", seed=i) for i in range(3)] + bad))
    shards.append(_truncate_inside(_write(tmp_path / "cut.tar", [_sample(f"c{i}") for i in range(3)]), "c1.png"))
    data = ShardDataModule(shards, shards, resolution=16, batch_size=2, num_workers=2)
    data.setup("validate")
    batches = list(data.val_dataloader())
    assert len(_captions(batches)) == 7
    assert data.val_stream.skipped == 4 and data.val_stream.shard_errors == 1, "read back from both workers"
    assert max(b["skipped"][0].item() for b in batches) <= 4 and max(b["shard_errors"][0].item() for b in batches) <= 1


def test_images_over_max_pixels_are_skipped_by_the_loader_with_key_and_size(tmp_path, caplog):
    shard = _write(tmp_path / "s.tar", [_sample("big", width=40, height=32), _sample("small", width=30, height=30)])
    data = ShardDataModule(shard, shard, resolution=16, batch_size=2, num_workers=0, max_pixels=1000)
    data.setup("validate")
    with caplog.at_level(logging.WARNING, logger="cascade.data.stream"):
        batches = list(data.val_dataloader())
    assert _captions(batches) == ["small"] and batches[-1]["skipped"].tolist() == [1]
    (message,) = [r.getMessage() for r in caplog.records]
    assert "key big" in message and "40x32" in message and "s.tar" in message
    with pytest.raises(ValueError, match="max_pixels"):
        ShardDataModule(shard, resolution=64, max_pixels=4000)


def test_missing_or_empty_shard_lists_fail_at_setup(tmp_path):
    cases = [
        ({"train_shards": str(tmp_path / "missing.tar")}, FileNotFoundError, "train_shards.*missing.tar"),
        ({"train_shards": []}, ValueError, "train_shards.*empty"),
        ({"train_shards": None}, ValueError, "train_shards"),
        ({"train_shards": str(tmp_path / "*.tar")}, ValueError, "train_shards.*matched no shard"),
        ({"train_shards": str(tmp_path)}, ValueError, "train_shards.*no \\*.tar"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            ShardDataModule(**kwargs, num_workers=0).setup("fit")
    good = _write(tmp_path / "ok.tar", [_sample("x")])
    with pytest.raises(FileNotFoundError, match="val_shards.*nope-{0..1}.tar|val_shards.*nope-0.tar"):
        ShardDataModule(good, str(tmp_path / "nope-{0..1}.tar"), num_workers=0).setup("fit")


def test_settings_are_checked_when_the_module_is_built():
    with pytest.raises(ValueError, match="lowres_resolution"):
        ShardDataModule(resolution=64, lowres_resolution=24)
    with pytest.raises(ValueError, match="crop_size"):
        ShardDataModule(resolution=256, lowres_resolution=64, crop_size=66)
    with pytest.raises(ValueError, match="blur_sigma"):
        ShardDataModule(resolution=64, lowres_resolution=16, blur_sigma=(1.0, 0.5))


@pytest.mark.parametrize("shard_count", [6, 1])
def test_validation_is_split_disjointly_over_ranks_and_workers(tmp_path, shard_count):
    keys = [f"s{i:02d}" for i in range(30)]
    per_shard = len(keys) // shard_count
    shards = []
    for n in range(shard_count):
        part = keys[n * per_shard : (n + 1) * per_shard]
        shards.append(_write(tmp_path / f"{n}.tar", [_sample(k, seed=i) for i, k in enumerate(part)]))
    data = ShardDataModule(shards, shards, resolution=16, batch_size=4, num_workers=2)
    seen = []
    for rank in range(2):
        stream = data.build_stream(train=False, rank=rank, world_size=2)
        seen.append(_captions(DataLoader(stream, batch_size=None, num_workers=2)))
    assert set(seen[0]).isdisjoint(seen[1])
    assert sorted(seen[0] + seen[1]) == keys
    assert abs(len(seen[0]) - len(seen[1])) <= 5


def test_training_streams_differ_per_rank_and_worker_and_repeat_per_seed(tmp_path):
    shards = [_write(tmp_path / f"{n}.tar", [_sample(f"{n}-{i}", seed=i) for i in range(8)]) for n in range(4)]
    data = ShardDataModule(shards, resolution=16, batch_size=4, num_workers=0, samples_per_epoch=32, shuffle_buffer=8)
    rank0, rank1 = (data.build_stream(train=True, rank=r, world_size=2) for r in range(2))
    assert len(rank0) == 4  # 32 samples per epoch / (2 ranks * 4 per batch)
    first_epoch = _captions(rank0)
    assert len(first_epoch) == 16
    assert first_epoch != _captions(rank1)
    assert first_epoch == _captions(data.build_stream(train=True, rank=0, world_size=2)), "same seed, same stream"
    assert first_epoch != _captions(rank0), "the next epoch draws a new stream"

    workers = ShardDataModule(
        shards, resolution=16, batch_size=4, num_workers=2, samples_per_epoch=32, shuffle_buffer=8
    )
    workers.setup("fit")
    loader = workers.train_dataloader()
    batches = [b["caption"] for b in loader]
    assert len(batches) == len(loader) == 8
    assert batches[0::2] != batches[1::2], "the two workers read different streams"


def test_super_resolution_pairs_are_aligned(tmp_path):
    shard = _write(tmp_path / "sr.tar", [_sample(f"k{i}", width=48, height=40, seed=i) for i in range(6)])
    data = ShardDataModule(
        shard, resolution=32, lowres_resolution=8, random_crop=True, random_flip=True, batch_size=6, num_workers=0,
        shuffle_buffer=16,
    )
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    for image, lowres in zip(batch["image"], batch["lowres"]):
        expected = np.asarray(downsample(_to_pil(image), (8, 8)))
        np.testing.assert_array_equal(np.asarray(_to_pil(lowres)), expected)

    degraded = ShardDataModule(
        shard, resolution=32, lowres_resolution=8, blur_sigma=(1.0, 2.0), jpeg_quality=(20, 40), batch_size=6,
        num_workers=0, shuffle_buffer=16,
    )
    degraded.setup("fit")
    batch = next(iter(degraded.train_dataloader()))
    differences = [
        np.abs(np.asarray(_to_pil(low), dtype=int) - np.asarray(downsample(_to_pil(img), (8, 8)), dtype=int)).mean()
        for img, low in zip(batch["image"], batch["lowres"])
    ]
    assert min(differences) > 1.0


def test_crops_of_the_target_come_with_the_matching_lowres_crop(synthetic_shards):
    data = ShardDataModule(
        synthetic_shards, resolution=64, lowres_resolution=16, crop_size=32, random_flip=True, batch_size=8,
        num_workers=0, shuffle_buffer=16,
    )
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (8, 3, 32, 32) and batch["lowres"].shape == (8, 3, 8, 8)
    aligned, shifted = [], []
    for image, lowres in zip(batch["image"], batch["lowres"]):
        expected = np.asarray(downsample(_to_pil(image), (8, 8)), dtype=float)[2:-2, 2:-2]
        actual = np.asarray(_to_pil(lowres), dtype=float)
        aligned.append(np.abs(actual[2:-2, 2:-2] - expected).mean())
        shifted.append(min(np.abs(actual[2:-2, 1:-3] - expected).mean(), np.abs(actual[1:-3, 2:-2] - expected).mean()))
    assert max(aligned) < 3.0, aligned
    assert np.mean(shifted) > 3 * np.mean(aligned)


def test_lowres_crops_equal_crops_of_the_whole_lowres_image():
    """The 256->1024-style path downsamples and degrades only a window around the crop; the
    result equals cropping the low-res version of the whole target, blur and JPEG included."""
    raw = {"__key__": "k", "png": _encode(render(sample_scene(2, seed=0), 512))}
    common = dict(resolution=512, lowres_resolution=128, train=False, with_caption=False)
    for degradation in (Degradation(), Degradation(blur_sigma=(0.5, 1.5), jpeg_quality=(30, 60))):
        whole = SampleTransform(**common, degradation=degradation)(raw, random.Random(0))
        crop = SampleTransform(**common, crop_size=64, degradation=degradation)(raw, random.Random(0))
        # the centre crop starts at low-res pixel (128 - 16) // 2 = 56, i.e. target pixel 224
        torch.testing.assert_close(crop["image"], whole["image"][:, 224:288, 224:288], atol=0, rtol=0)
        torch.testing.assert_close(crop["lowres"], whole["lowres"][:, 56:72, 56:72], atol=0, rtol=0)


class _CountingModule(pl.LightningModule):
    """Consumes batches and records what it saw."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.train_images = 0
        self.val_images = 0

    def training_step(self, batch, batch_idx):
        self.train_images += len(batch["image"])
        return (self.weight - batch["image"].mean()) ** 2

    def validation_step(self, batch, batch_idx):
        self.val_images += len(batch["image"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_trainer_runs_an_epoch_on_the_datamodule(synthetic_shards):
    data = ShardDataModule(
        synthetic_shards, synthetic_shards, resolution=32, batch_size=4, num_workers=0, samples_per_epoch=12
    )
    module = _CountingModule()
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=data)
    assert module.train_images == 12 and module.val_images == 24
