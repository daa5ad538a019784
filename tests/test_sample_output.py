"""Work items, seeds, rank sharding and resumable atomic writes of the sample folder."""

import json

import pytest
import torch

from cascade.files.sample_folder import (
    METADATA_FILE,
    is_done,
    merge_metadata,
    rank_and_world_size,
    read_metadata,
    remove_stale_writes,
    shard_for_rank,
    stage_folder,
    work_items,
    write_image,
)

CONDITIONS = [("a red circle", "Colors"), ("two blue squares", "Counting"), ("a green triangle", None)]


def test_ranks_cover_every_item_exactly_once():
    items = work_items(CONDITIONS, per_condition=5)
    for world_size in (1, 2, 3, 4, 7):
        shards = [shard_for_rank(items, rank, world_size) for rank in range(world_size)]
        names = [item.name for shard in shards for item in shard]
        assert sorted(names) == sorted(item.name for item in items)
        assert len(set(names)) == len(names)


def test_seed_depends_on_condition_and_index_only():
    items = work_items(CONDITIONS, per_condition=2)
    reordered = work_items(list(reversed(CONDITIONS)), per_condition=2)
    by_key = {(item.condition, item.sample_index): item.seed(0) for item in items}
    assert all(by_key[(item.condition, item.sample_index)] == item.seed(0) for item in reordered)
    assert len(set(by_key.values())) == len(by_key)
    assert items[0].seed(0) != items[0].seed(1)


def test_a_count_per_condition_draws_that_many_images_of_each_with_the_same_seeds_as_a_flat_count():
    items = work_items(CONDITIONS, per_condition=(1, 3, 2))
    assert [item.name for item in items] == ["00000_000", "00001_000", "00001_001", "00001_002", "00002_000",
                                             "00002_001"]
    flat = {item.name: item.seed(0) for item in work_items(CONDITIONS, per_condition=3)}
    assert all(flat[item.name] == item.seed(0) for item in items)  # more seeds of a caption keep the first ones
    with pytest.raises(ValueError, match="--n-per-condition: 2 counts for 3 conditions"):
        work_items(CONDITIONS, per_condition=(1, 2))
    with pytest.raises(ValueError, match="--n-per-condition must be >= 1"):
        work_items(CONDITIONS, per_condition=(1, 0, 2))


def test_rank_from_torchrun_or_slurm_environment(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    assert rank_and_world_size() == (0, 1)
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    assert rank_and_world_size() == (1, 2)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert rank_and_world_size() == (2, 4)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK"):
        rank_and_world_size()


def test_an_image_is_done_only_when_its_sidecar_is_written(tmp_path):
    item = work_items(CONDITIONS, 1)[0]
    assert not is_done(tmp_path, item)
    (tmp_path / f"{item.name}.png").write_bytes(b"partial")  # a png without its sidecar: redo it
    assert not is_done(tmp_path, item)
    write_image(tmp_path, item.name, torch.zeros(3, 8, 8), {"file": f"{item.name}.png"})
    assert is_done(tmp_path, item)
    assert not list(tmp_path.glob(".*tmp*")), "temporary files must not remain"


def test_merge_metadata_gathers_complete_images_sorted(tmp_path):
    for item in reversed(work_items(CONDITIONS, 2)):
        write_image(tmp_path, item.name, torch.rand(3, 4, 4) * 2 - 1, {"file": f"{item.name}.png", "prompt": item.condition})
    (tmp_path / "99999_000.json").write_text("{}")  # a sidecar without its image is not listed
    assert merge_metadata(tmp_path) == 6
    lines = [json.loads(line) for line in (tmp_path / METADATA_FILE).read_text().splitlines()]
    assert [line["file"] for line in lines] == sorted(line["file"] for line in lines)
    assert read_metadata(tmp_path) == lines


def test_read_metadata_names_the_line_that_is_not_a_record(tmp_path):
    (tmp_path / METADATA_FILE).write_text('{"file": "a.png"}\n\n{"file": "b.png"}\n')
    assert read_metadata(tmp_path) == [{"file": "a.png"}, {"file": "b.png"}]
    for bad in ('["a.png"]', '{"file": '):
        (tmp_path / METADATA_FILE).write_text('{"file": "a.png"}\n' + bad + "\n")
        with pytest.raises(ValueError, match=f"{METADATA_FILE}:2: "):
            read_metadata(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_metadata(tmp_path / "missing")


def test_resume_removes_its_own_items_temporaries_from_a_killed_run(tmp_path):
    for leftover in (".00000_000.png.k1.tmp", ".00000_000.json.k2.tmp", ".00001_000.png.k3.tmp"):
        (tmp_path / leftover).write_bytes(b"half")
    mine = [item for item in work_items(CONDITIONS, 1) if item.name == "00000_000"]
    remove_stale_writes(tmp_path, mine)
    write_image(tmp_path, "00000_000", torch.zeros(3, 4, 4), {"file": "00000_000.png"})
    names = sorted(p.name for p in tmp_path.iterdir())
    # another item's temporary may belong to another rank still writing it: left alone
    assert names == [".00001_000.png.k3.tmp", "00000_000.json", "00000_000.png"]


def test_a_stage_of_a_sample_folder_is_found_by_its_folder_name_or_index(tmp_path):
    for index, size in ((0, 16), (1, 32)):
        (tmp_path / "intermediate" / f"stage{index}_{size}px").mkdir(parents=True)
    assert stage_folder(tmp_path, "stage1_32px") == tmp_path / "intermediate" / "stage1_32px"
    assert stage_folder(tmp_path, 0) == stage_folder(tmp_path, "0") == tmp_path / "intermediate" / "stage0_16px"
    assert stage_folder(tmp_path, "2") == tmp_path, "the final stage's index: the folder's own images"
    with pytest.raises(ValueError, match=r"no stage 'stage2_64px'; its stages: stage0_16px \(0\), stage1_32px \(1\)"):
        stage_folder(tmp_path, "stage2_64px")
    with pytest.raises(ValueError, match="keeps no intermediate stages"):
        stage_folder(tmp_path / "intermediate", 0)
