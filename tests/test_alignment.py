"""The alignment detector judges real renders of the synthetic dataset (near) perfectly."""

import copy

import numpy as np
import pytest
import torch

from cascade.data.synthetic import COLOURS, render, render_sample, sample_scene
from cascade.eval.alignment import aggregate, detect, placement, score


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
