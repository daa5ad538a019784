"""The built-in captioned dataset: determinism, resolution consistency, ground truth vs pixels."""

import numpy as np
import pytest

from cascade.data.synthetic import (
    CLASS_NAMES,
    COLOURS,
    SHAPES,
    caption_split,
    class_index,
    render,
    render_sample,
    sample_scene,
)


def test_same_seed_and_index_give_the_same_scene_and_pixels():
    for index in range(5):
        first, scene = render_sample(index, 64, seed=3)
        second, again = render_sample(index, 64, seed=3)
        assert scene == again
        np.testing.assert_array_equal(first, second)
    assert sample_scene(0, seed=3) != sample_scene(0, seed=4)
    assert sample_scene(0, seed=3) != sample_scene(1, seed=3)


def test_renders_at_different_resolutions_agree():
    """render(32) equals render(128) averaged over 4x4 blocks, up to edge anti-aliasing."""
    for index in range(6):
        scene = sample_scene(index, seed=1)
        small = render(scene, 32).astype(float)
        large = render(scene, 128).astype(float)
        pooled = large.reshape(32, 4, 32, 4, 3).mean(axis=(1, 3))
        difference = np.abs(small - pooled)
        assert difference.mean() < 1.5, (index, difference.mean())
        assert np.percentile(difference, 99) < 25


@pytest.mark.parametrize("resolution", [64, 128])
def test_ground_truth_matches_the_pixels(resolution):
    for index in range(40):
        image, scene = render_sample(index, resolution, seed=0)
        for obj in scene["objects"]:
            x, y = obj["center"]
            pixel = image[int(y * resolution), int(x * resolution)]
            np.testing.assert_array_equal(pixel, COLOURS[obj["colour"]], err_msg=f"{index} {obj}")
            assert obj["rgb"] == list(COLOURS[obj["colour"]])
        corner = image[0, 0].astype(int)
        assert corner.max() - corner.min() < 40, "the background must stay unsaturated"


def test_captions_state_colours_shapes_and_counts():
    count_words = {1: ("a ",), 2: ("two ", " and a ", " a "), 3: ("three ", "two ", " and a ", " a ")}
    for index in range(200):
        scene = sample_scene(index, seed=2)
        caption, objects = scene["caption"], scene["objects"]
        assert 1 <= len(objects) <= 3
        for obj in objects:
            assert obj["colour"] in caption and obj["shape"] in caption
        assert any(word in " " + caption for word in count_words[len(objects)])
        if scene["relation"] is not None:
            assert scene["relation"]["relation"] in caption
            subject = objects[scene["relation"]["subject"][0]]["center"]
            other = objects[scene["relation"]["object"][0]]["center"]
            relation = scene["relation"]["relation"]
            axis = 0 if relation in ("left of", "right of") else 1
            before = relation in ("left of", "above")
            assert (subject[axis] < other[axis]) == before
        main = max(objects, key=lambda o: o["size"])
        assert CLASS_NAMES[scene["class"]] == f"{main['colour']} {main['shape']}" == scene["class_name"]


def test_objects_are_large_and_never_touch():
    for index in range(300):
        objects = sample_scene(index, seed=5)["objects"]
        for obj in objects:
            assert obj["size"] >= 0.12
            x, y = obj["center"]
            assert obj["size"] <= min(x, y, 1 - x, 1 - y)
        for a in range(len(objects)):
            for b in range(a + 1, len(objects)):
                (xa, ya), (xb, yb) = objects[a]["center"], objects[b]["center"]
                gap = max(abs(xa - xb), abs(ya - yb)) - objects[a]["size"] - objects[b]["size"]
                assert gap > 0.04


def test_heldout_captions_never_appear_in_train():
    train = {sample_scene(i, split="train")["caption"] for i in range(300)}
    heldout = {sample_scene(i, split="heldout")["caption"] for i in range(60)}
    assert train.isdisjoint(heldout)
    assert all(caption_split(c) == "heldout" for c in heldout)
    assert len(heldout) > 20


def test_class_index_round_trips():
    for colour in COLOURS:
        for shape in SHAPES:
            assert CLASS_NAMES[class_index(colour, shape)] == f"{colour} {shape}"


def test_a_rebound_caption_has_the_same_words_in_the_same_places_and_binds_them_otherwise():
    """The negative prompt of `rebound_caption`: the colour and shape words of the caption, each in
    a place where the caption has one of its kind, describing another scene; None exactly where
    every cycle of them describes the same scene (one kind of object)."""
    from collections import Counter

    from cascade.data.synthetic import rebound_caption

    rebound_kinds = Counter()
    for index in range(400):
        scene = sample_scene(index, seed=3)
        caption, rebound = scene["caption"], rebound_caption(scene["caption"])
        kinds = {(o["colour"], o["shape"]) for o in scene["objects"]}
        if len(kinds) == 1:
            assert rebound is None, caption
            continue
        rebound_kinds[len(scene["objects"])] += 1
        assert rebound is not None and rebound != caption, caption
        def words_of(text: str) -> list[str]:  # a shape's plural is the same shape word
            return [word[:-1] if word[:-1] in SHAPES else word for word in text.split()]

        words, rebound_words = words_of(caption), words_of(rebound)
        assert len(words) == len(rebound_words) and Counter(words) == Counter(rebound_words), (caption, rebound)
        for word, other in zip(words, rebound_words):
            if word != other:
                assert {word, other} <= set(COLOURS) or {word, other} <= set(SHAPES), (caption, rebound)
    assert rebound_kinds[2] > 20 and rebound_kinds[3] > 20
    assert rebound_caption("a red circle left of a blue square") == "a red square left of a blue circle"
    assert rebound_caption("a red square above a blue square") == "a blue square above a red square"
    # cycling the shapes would only reorder "A and B": the colours are cycled instead
    assert rebound_caption("a red circle and a red square left of a blue circle") == \
        "a red circle and a blue square left of a red circle"
