"""The alignment detector judges real renders of the synthetic dataset (near) perfectly."""

import copy
import json

import numpy as np
import pytest
import torch

from cascade.data.synthetic import COLOURS, render, render_sample, sample_scene
from cascade.eval.alignment import aggregate, detect, placement, score, shape_confusion, shape_readings


@pytest.mark.parametrize("resolution", [64, 128])
def test_detector_is_near_perfect_on_real_renders(resolution):
    scores = []
    for split in ("train", "heldout"):
        for index in range(60):
            image, scene = render_sample(index, resolution, seed=11, split=split)
            scores.append(score(image, scene))
    accuracy = aggregate(scores)
    assert accuracy["n"] == 120
    for check in ("colour", "shape", "count", "exact", "relation"):
        assert accuracy[check] >= 0.98, accuracy


def test_detections_carry_colour_shape_and_position():
    scene = sample_scene(0, seed=0)
    detections = detect(render(scene, 128))
    assert len(detections) == len(scene["objects"])
    for obj in scene["objects"]:
        x, y = obj["center"]
        nearest = min(detections, key=lambda d: np.hypot(d.center[0] - x, d.center[1] - y))
        assert (nearest.colour, nearest.shape) == (obj["colour"], obj["shape"])
        # the detected centre is the centroid: the triangle's lies below its box centre
        assert abs(nearest.center[0] - obj["center"][0]) < 0.02


def test_accepts_model_tensors_in_minus_one_one():
    image, scene = render_sample(3, 64, seed=0)
    tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1.0
    assert score(tensor, scene) == score(image, scene)


def test_wrong_images_are_caught():
    scene = next(s for s in (sample_scene(i, seed=4) for i in range(100)) if len(s["objects"]) == 2 and s["relation"])
    blank = render({**scene, "objects": []}, 64)
    assert detect(blank) == []
    assert score(blank, scene) == {
        "colour_ok": False,
        "shape_ok": False,
        "count_ok": False,
        "exact_ok": False,
        "relation_ok": False,
    }

    recoloured = copy.deepcopy(scene)
    for obj in recoloured["objects"]:
        obj["colour"] = "green" if obj["colour"] != "green" else "red"
        obj["rgb"] = list(COLOURS[obj["colour"]])
    assert not score(render(recoloured, 64), scene)["colour_ok"]

    image = render(scene, 64)
    horizontal = scene["relation"]["relation"] in ("left of", "right of")
    mirrored = np.ascontiguousarray(image[:, ::-1] if horizontal else image[::-1])
    result = score(mirrored, scene)
    assert result["exact_ok"] and result["relation_ok"] is False


def test_aggregate_skips_captions_without_a_relation():
    scores = [
        {"colour_ok": True, "shape_ok": True, "count_ok": True, "exact_ok": True, "relation_ok": None},
        {"colour_ok": True, "shape_ok": False, "count_ok": True, "exact_ok": False, "relation_ok": False},
    ]
    accuracy = aggregate(scores)
    assert accuracy["colour"] == 1.0 and accuracy["shape"] == 0.5 and accuracy["relation"] == 0.0


def _two_colour_relation_scene() -> dict:
    return next(s for s in (sample_scene(i, seed=4) for i in range(300))
                if len(s["objects"]) == 2 and s["relation"] and s["objects"][0]["colour"] != s["objects"][1]["colour"])


def test_placement_tells_the_axis_from_the_side():
    scene = _two_colour_relation_scene()
    image = render(scene, 64)
    assert placement(image, scene) == {"axis_ok": True, "side_ok": True}
    horizontal = scene["relation"]["relation"] in ("left of", "right of")
    mirrored = np.ascontiguousarray(image[:, ::-1] if horizontal else image[::-1])
    assert placement(mirrored, scene) == {"axis_ok": True, "side_ok": False}
    transposed = np.ascontiguousarray(image.transpose(1, 0, 2))
    assert placement(transposed, scene)["axis_ok"] is False


def test_placement_reads_colours_only_and_skips_what_it_cannot_judge():
    scene = _two_colour_relation_scene()
    reshaped = copy.deepcopy(scene)
    for obj in reshaped["objects"]:
        obj["shape"] = "square" if obj["shape"] != "square" else "circle"
    assert placement(render(reshaped, 64), scene) == {"axis_ok": True, "side_ok": True}
    assert placement(render({**scene, "objects": scene["objects"][:1]}, 64), scene) == {"axis_ok": None, "side_ok": None}
    single = next(s for s in (sample_scene(i, seed=4) for i in range(100)) if s["relation"] is None)
    assert placement(render(single, 64), single) == {"axis_ok": None, "side_ok": None}


def test_shape_confusion_reads_real_renders_on_the_diagonal_and_a_round_cornered_square_as_a_circle():
    """`shape_readings` / `shape_confusion`: every real render's object is read as its own shape; a
    square whose corners are cut round (what the demo's base draws) reads as a circle, and an object
    whose colour is missing reads as "none"."""
    readings = []
    for index in range(80):
        image, scene = render_sample(index, 128, seed=11, split="heldout")
        readings += shape_readings(image, scene)
    table = shape_confusion(readings)
    assert set(table) == {"circle", "square", "triangle"}
    for true, row in table.items():
        assert row[true] == 1.0 and row["n"] >= 5, (true, row)
    assert table["square"]["median fill"] == pytest.approx(1.0, abs=0.01)

    scene = {"objects": [{"colour": "red", "shape": "square"}, {"colour": "blue", "shape": "circle"}]}
    image = np.full((64, 64, 3), 128, dtype=np.uint8)
    half, radius = 10.0, 8.0  # a 20-px square, corners rounded to radius 8: fill ~ 1 - (4 - pi) 64 / 400 = 0.86
    x, y = np.abs(np.mgrid[0:64, 0:64] - 31.5)
    rounded = (x <= half) & (y <= half) & \
        (np.maximum(x - (half - radius), 0) ** 2 + np.maximum(y - (half - radius), 0) ** 2 <= radius ** 2)
    image[rounded] = COLOURS["red"]
    square, circle = shape_readings(image, scene)
    assert square[:2] == ("square", "circle") and 0.64 < square[2] < 0.89  # the detector's circle band
    assert circle == ("circle", "none", None)
    assert shape_confusion([square, circle])["square"] == {"circle": 1.0, "n": 1.0, "median fill": square[2]}


def test_the_shape_confusion_command_reads_a_demo_runs_stages_and_its_real_renders(tmp_path, capsys):
    """`python -m cascade.demo.shape_confusion RUN`: a run whose samples are the real renders reads
    every shape on the diagonal at every stage; a folder without the run's scenes is named."""
    from PIL import Image

    from cascade.demo.shape_confusion import main

    scenes = [s for s in (sample_scene(i, seed=3, split="heldout") for i in range(30))][:12]
    (tmp_path / "reference").mkdir()
    (tmp_path / "reference" / "scenes.json").write_text(json.dumps(scenes))
    folder = tmp_path / "samples" / "guidance=3"
    (folder / "intermediate" / "stage0_32px").mkdir(parents=True)
    lines = []
    for index, scene in enumerate(scenes):
        Image.fromarray(render(scene, 128)).save(tmp_path / "reference" / f"{index:05d}.png")
        Image.fromarray(render(scene, 128)).save(folder / f"{index:05d}_000.png")
        Image.fromarray(render(scene, 64)).save(folder / "intermediate" / "stage0_32px" / f"{index:05d}_000.png")
        lines.append(json.dumps({"file": f"{index:05d}_000.png", "prompt": scene["caption"], "condition_index": index}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    assert main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for label in ("guidance=3, stage0_32px", "guidance=3, final", "real renders", "real renders box-averaged to 64 px"):
        assert label in printed
    rows = [line.split() for line in printed.splitlines() if line.split()[:1] in (["circle"], ["square"], ["triangle"])]
    assert rows and all(float(row[2 + ("circle", "square", "triangle").index(row[0])]) == 1.0 for row in rows), printed

    with pytest.raises(SystemExit):
        main([str(tmp_path / "nothing")])
    assert "nothing/reference/scenes.json: not found" in capsys.readouterr().err


def test_blurring_the_renders_rounds_triangles_long_before_squares():
    """`cascade.demo.shape_confusion.blurred_render_readings`: unblurred renders at 32 px read on the
    diagonal; a Gaussian blur of 1 px turns most triangles into circles and leaves the squares square
    (so a base that only drew unsharply would lose triangles first, docs/benchmarks.md)."""
    from cascade.demo.shape_confusion import blurred_render_readings
    from cascade.eval.heldout import heldout_caption_set

    scenes = heldout_caption_set(40)
    sharp, blurred = (shape_confusion(blurred_render_readings(scenes, 32, sigma)) for sigma in (0.0, 1.0))
    assert sharp["square"]["square"] == 1.0 and sharp["circle"]["circle"] == 1.0
    assert blurred["square"].get("square", 0.0) >= 0.9 and blurred["triangle"].get("triangle", 0.0) <= 0.3
