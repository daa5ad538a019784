"""Precomputed text embeddings: written into shards with the real MiniLM encoder, read back by the loader."""

import json
import os

import pytest
import torch

from cascade.nn import TextEncoder
from cascade.cli import main as cascade_main
from cascade.data.datamodule import ShardDataModule
from cascade.data.shards import AtomicShard, encode_sample, member_bytes, read_samples
from cascade.data.sources import SyntheticSource
from cascade.data.writer import write_shards


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder.from_config(kind="minilm", max_length=32)


def test_precomputed_embeddings_match_the_encoder(tmp_path, encoder):
    plain = tmp_path / "plain"
    write_shards(SyntheticSource(6, resolution=32), str(plain), max_samples=3, progress=False)
    # one more shard whose only sample has a caption that is not UTF-8
    sample = next(read_samples(str(plain / "shard-000000.tar")))
    broken = AtomicShard(str(plain / "shard-000002.tar"))
    members = encode_sample({**sample, "__key__": "broken", "txt": b"caf\xe9"})
    broken.add(members, member_bytes(members))
    broken.commit()

    out = tmp_path / "minilm"
    args = ["precompute-text", "--shards", str(plain), "--out", str(out), "--encoder", "minilm", "--no-progress"]
    assert cascade_main(["data", *args]) == 0
    shards = ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert sorted(os.listdir(out)) == ["classes.json", "manifest.json"] + shards
    stored = next(read_samples(str(out / "shard-000000.tar")))
    info = json.loads(stored["json"])["text_encoder"]
    assert info["kind"] == "minilm" and info["max_length"] == 32 and info["dim"] == encoder.dim
    assert info["layer"] is None
    assert "emb.npy" not in next(read_samples(str(out / "shard-000002.tar")))

    data = ShardDataModule(str(out), str(out), resolution=32, text_encoder="minilm", batch_size=4, num_workers=0)
    data.setup("fit")
    batches = list(data.val_dataloader())
    batch = batches[0]
    assert [len(b["caption"]) for b in batches] == [4, 2]
    assert batch["text_tokens"].shape == (4, 32, encoder.dim) and batch["text_tokens"].dtype == torch.float32
    assert batch["text_mask"].dtype == torch.bool
    expected = encoder.encode(batch["caption"])
    assert torch.equal(batch["text_mask"], expected.mask)
    mask = batch["text_mask"]
    torch.testing.assert_close(batch["text_tokens"][mask], expected.tokens[mask], atol=5e-3, rtol=1e-2)
    assert batches[-1]["skipped"].tolist() == [1, 1]  # the non-UTF-8 caption

    stamp = os.path.getmtime(out / "shard-000001.tar")
    assert cascade_main(["data", *args]) == 0  # rerun: existing output shards are kept
    assert os.path.getmtime(out / "shard-000001.tar") == stamp

    wrong = ShardDataModule(str(out), str(out), resolution=32, text_encoder="t5", batch_size=2, num_workers=0)
    wrong.setup("fit")
    with pytest.raises(ValueError, match="minilm"):
        next(iter(wrong.val_dataloader()))
