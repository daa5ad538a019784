"""The stratified held-out caption set and its caption-level bootstrap intervals (cascade.eval.heldout)."""

import json

import numpy as np
import pytest
from PIL import Image

from cascade.data.synthetic import caption_split, render, sample_scene
from cascade.eval.alignment import aggregate, score
from cascade.eval.heldout import (
    BALANCED,
    STRATA,
    ScoredImage,
    heldout_caption_set,
    heldout_captions_by_stratum,
    images_per_caption,
    paired_difference,
    score_folder,
    stratified_alignment,
    stratum_of,
    stratum_quotas,
)

CHECKS = ("colour", "shape", "count", "exact", "relation")


def _object(colour, shape):
    return {"colour": colour, "shape": shape}


@pytest.mark.parametrize("caption, objects, relation, stratum", [
    ("a green circle", [_object("green", "circle")], None, "1 object"),
    ("two red circles", [_object("red", "circle")] * 2, None, "2 objects, no relation"),
    ("a red circle left of a blue square", [_object("red", "circle"), _object("blue", "square")],
     {"subject": [0], "relation": "left of", "object": [1]}, "2 objects, relation"),
    ("three blue circles", [_object("blue", "circle")] * 3, None, "3 objects, no relation"),
    ("two red circles left of a blue square", [_object("red", "circle")] * 2 + [_object("blue", "square")],
     {"subject": [0, 1], "relation": "left of", "object": [2]}, "3 objects, relation"),
    ("a red circle and a blue square right of a green triangle",
     [_object("red", "circle"), _object("blue", "square"), _object("green", "triangle")],
     {"subject": [0, 1], "relation": "right of", "object": [2]}, "3 objects, relation"),
])
def test_strata_of_example_captions(caption, objects, relation, stratum):
    assert stratum_of({"caption": caption, "objects": objects, "relation": relation}) == stratum


def test_the_enumerated_grammar_holds_every_generated_caption_in_its_stratum():
    captions = {stratum: set(values) for stratum, values in heldout_captions_by_stratum().items()}
    seen = set()
    for index in range(400):
        scene = sample_scene(index, seed=5, split="heldout")
        assert scene["caption"] in captions[stratum_of(scene)], scene["caption"]
        seen.add(stratum_of(scene))
    assert seen == set(STRATA)
    assert all(caption_split(c) == "heldout" for values in captions.values() for c in values)
    # The held-out split is a fixed hash of the caption: these are the sizes the report quotes.
    assert {stratum: len(values) for stratum, values in captions.items()} == {
        "1 object": 1, "2 objects, no relation": 4, "2 objects, relation": 96,
        "3 objects, no relation": 2, "3 objects, relation": 2706}


def test_quotas_give_small_strata_all_they_have_and_share_the_rest_equally():
    available = {"1 object": 1, "2 objects, no relation": 4, "2 objects, relation": 96,
                 "3 objects, no relation": 2, "3 objects, relation": 2706}
    assert stratum_quotas(128, available) == {"1 object": 1, "2 objects, no relation": 4, "2 objects, relation": 61,
                                              "3 objects, no relation": 2, "3 objects, relation": 60}
    assert stratum_quotas(400, available) == {"1 object": 1, "2 objects, no relation": 4, "2 objects, relation": 96,
                                              "3 objects, no relation": 2, "3 objects, relation": 297}
    assert stratum_quotas(5, available) == dict.fromkeys(STRATA, 1)
    assert sum(stratum_quotas(2809, available).values()) == 2809
    with pytest.raises(ValueError, match="n_captions"):
        stratum_quotas(2810, available)


def test_heldout_caption_set_is_distinct_heldout_balanced_and_deterministic():
    scenes = heldout_caption_set(128)
    captions = [scene["caption"] for scene in scenes]
    assert len(set(captions)) == 128
    assert all(scene["split"] == "heldout" and caption_split(scene["caption"]) == "heldout" for scene in scenes)
    counts = {stratum: sum(stratum_of(s) == stratum for s in scenes) for stratum in STRATA}
    assert counts == {"1 object": 1, "2 objects, no relation": 4, "2 objects, relation": 61,
                      "3 objects, no relation": 2, "3 objects, relation": 60}
    assert [stratum_of(s) for s in scenes[:5]] == list(STRATA)  # round robin: a prefix spans the strata
    for scene in scenes[:10]:  # each is the generator's own scene of that index
        assert scene == sample_scene(scene["index"], seed=scene["seed"], split="heldout")
    assert heldout_caption_set(20, seed=7) == heldout_caption_set(20, seed=7)


def _scored(stratum_rates, captions_per_stratum, images_per_caption, rng):
    """Images with known per-caption success rates: caption c of stratum s succeeds with rate
    p_c ~ Beta(mean m_s, concentration 4); every check shares the image's outcome."""
    scored = []
    for (stratum, mean), n in zip(stratum_rates.items(), captions_per_stratum):
        count = int(stratum[0])
        relation = {"subject": [0], "relation": "left of", "object": [1]} if stratum.endswith(", relation") else None
        for c in range(n):
            rate = rng.beta(4 * mean, 4 * (1 - mean))
            scene = {"caption": f"{stratum} #{c}", "objects": [_object("red", "circle")] * count, "relation": relation}
            for k in range(images_per_caption):
                ok = bool(rng.random() < rate)
                scores = {f"{check}_ok": ok for check in CHECKS}
                scores["relation_ok"] = ok if relation else None
                scored.append(ScoredImage(f"{c:05d}_{k:03d}.png", scene, scores))
    return scored


def test_small_strata_draw_more_seeds_per_caption_so_every_stratum_has_its_images():
    scenes = heldout_caption_set(128)
    counts = images_per_caption(scenes, per_caption=2, per_stratum=16)
    images = {stratum: 0 for stratum in STRATA}
    for scene, count in zip(scenes, counts):
        images[stratum_of(scene)] += count
    # 1, 4 and 2 held-out captions: 16 seeds, 4 and 8 of each; the large strata keep 2 per caption
    assert images == {"1 object": 16, "2 objects, no relation": 16, "2 objects, relation": 122,
                      "3 objects, no relation": 16, "3 objects, relation": 120}
    assert images_per_caption(scenes, per_caption=3, per_stratum=0) == (3,) * 128
    with pytest.raises(ValueError, match="per_caption must be >= 1"):
        images_per_caption(scenes, per_caption=0, per_stratum=16)


def test_caption_bootstrap_intervals_cover_the_true_rates_at_the_nominal_level():
    rates = {"1 object": 0.9, "2 objects, relation": 0.4, "3 objects, relation": 0.15}
    rng = np.random.default_rng(0)
    covered = {stratum: 0 for stratum in [*rates, BALANCED]}
    runs = 200
    for run in range(runs):
        result = stratified_alignment(_scored(rates, (40, 40, 40), 2, rng), seed=run)
        for stratum, true_rate in [*rates.items(), (BALANCED, np.mean(list(rates.values())))]:
            _, low, high = result[stratum]["exact"]
            covered[stratum] += low <= true_rate <= high
    assert all(hits >= 0.9 * runs for hits in covered.values()), covered


def test_the_resampling_unit_is_the_caption_not_the_image():
    """Copies of a caption's image add no information: with every image repeated four times the
    intervals are exactly those of one image per caption (an image-level bootstrap would narrow them)."""
    once = _scored({"2 objects, relation": 0.5, "3 objects, relation": 0.3}, (30, 30), 1, np.random.default_rng(1))
    repeated = [image for image in once for _ in range(4)]
    single, four = stratified_alignment(once, seed=3), stratified_alignment(repeated, seed=3)
    for stratum in ("2 objects, relation", "3 objects, relation", BALANCED):
        assert four[stratum]["exact"] == single[stratum]["exact"]
        assert four[stratum]["n_images"] == 4 * single[stratum]["n_images"]
        assert four[stratum]["n_captions"] == single[stratum]["n_captions"]


def test_each_stratum_is_its_images_mean_and_balanced_is_the_mean_of_strata():
    rates = {"1 object": 0.9, "2 objects, no relation": 0.6, "2 objects, relation": 0.4, "3 objects, relation": 0.2}
    scored = _scored(rates, (3, 5, 40, 20), 2, np.random.default_rng(2))
    result = stratified_alignment(scored)
    for stratum in rates:
        members = [s.scores for s in scored if stratum_of(s.scene) == stratum]
        for check in ("colour", "exact"):
            assert result[stratum][check][0] == pytest.approx(aggregate(members)[check])
    for check in ("colour", "shape", "count", "exact"):
        assert result[BALANCED][check][0] == pytest.approx(np.mean([result[s][check][0] for s in rates]))
    assert result[BALANCED]["n_images"] == 2 * 68 and result[BALANCED]["n_captions"] == 68


def test_relation_counts_only_captions_that_state_one():
    rates = {"1 object": 0.95, "2 objects, no relation": 0.95, "2 objects, relation": 0.5, "3 objects, relation": 0.1}
    scored = _scored(rates, (4, 4, 30, 30), 2, np.random.default_rng(3))
    result = stratified_alignment(scored)
    for stratum in ("1 object", "2 objects, no relation"):
        assert all(np.isnan(value) for value in result[stratum]["relation"])
    related = [s.scores for s in scored if s.scene["relation"] is not None]
    by_stratum = [result[s]["relation"][0] for s in ("2 objects, relation", "3 objects, relation")]
    assert result[BALANCED]["relation"][0] == pytest.approx(np.mean(by_stratum))
    assert aggregate(related)["relation"] == pytest.approx(
        sum(r * 60 for r in by_stratum) / 120)  # equal image counts: the pooled rate is their mean too


def test_a_stratum_of_one_caption_has_no_interval():
    rates = {"1 object": 0.5, "2 objects, no relation": 0.5, "3 objects, relation": 0.5}
    result = stratified_alignment(_scored(rates, (1, 20, 1), 3, np.random.default_rng(4)))
    for stratum in ("1 object", "3 objects, relation"):
        accuracy, low, high = result[stratum]["exact"]
        assert not np.isnan(accuracy) and np.isnan(low) and np.isnan(high)
    assert not np.isnan(result[BALANCED]["exact"][1])  # the 20 captions of one stratum vary
    accuracy, low, high = result[BALANCED]["relation"]  # only the one-caption stratum states a relation
    assert accuracy == result["3 objects, relation"]["relation"][0] and np.isnan(low) and np.isnan(high)


def test_paired_difference_is_the_difference_of_balanced_accuracies_and_zero_against_itself():
    rates = {"1 object": 0.8, "2 objects, relation": 0.5, "3 objects, relation": 0.3}
    before = _scored(rates, (5, 30, 30), 2, np.random.default_rng(5))
    after = [image._replace(scores={key: (False if value is not None and image.scene["caption"].endswith("#0") else value)
                                    for key, value in image.scores.items()}) for image in before]
    difference = paired_difference(before, after)
    for check in CHECKS:
        expected = stratified_alignment(after)[BALANCED][check][0] - stratified_alignment(before)[BALANCED][check][0]
        estimate, low, high = difference[check]
        assert estimate == pytest.approx(expected) and low <= estimate <= high
        assert paired_difference(before, before)[check] == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same captions"):
        paired_difference(before, before[:-2])


def test_paired_difference_of_a_uniform_loss_has_a_zero_width_interval():
    """When the later stage loses the same share of every caption's images, the paired
    difference does not depend on which captions are drawn; an unpaired one would."""
    scene = {"objects": [_object("red", "circle")] * 2, "relation": {"subject": [0], "relation": "left of", "object": [1]}}
    rng = np.random.default_rng(6)
    before, after = [], []
    for c in range(30):
        first = bool(rng.random() < 0.5)
        captioned = {**scene, "caption": f"caption {c}"}
        for k, (ok_before, ok_after) in enumerate([(True, True), (True, False), (first, first), (first, first)]):
            before.append(ScoredImage(f"{c}_{k}", captioned, {f"{x}_ok": ok_before for x in CHECKS}))
            after.append(ScoredImage(f"{c}_{k}", captioned, {f"{x}_ok": ok_after for x in CHECKS}))
    assert paired_difference(before, after)["exact"] == pytest.approx((-0.25, -0.25, -0.25))


def test_score_folder_scores_each_image_against_its_captions_scene(tmp_path):
    scenes = heldout_caption_set(5)
    lines = []
    for index, scene in enumerate(scenes):
        for k in range(2):
            name = f"{index:05d}_{k:03d}.png"
            pixels = render(scene, 64) if k == 0 else render({**scene, "objects": []}, 64)
            Image.fromarray(pixels).save(tmp_path / name)
            lines.append(json.dumps({"file": name, "condition_index": index, "prompt": scene["caption"]}))
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    scored = score_folder(tmp_path, scenes)
    assert [s.file for s in scored] == [f"{i:05d}_{k:03d}.png" for i in range(5) for k in range(2)]
    for image in scored:
        assert image.scene is scenes[int(image.file[:5])]
        expected = score(np.asarray(Image.open(tmp_path / image.file).convert("RGB")), image.scene)
        assert image.scores == expected
        assert image.scores["exact_ok"] is (image.file.endswith("_000.png"))
    with pytest.raises(ValueError, match="is not the caption of scene 0"):
        score_folder(tmp_path, scenes[1:] + scenes[:1])
    with pytest.raises(ValueError, match="condition_index 4 is not one of the 4 scenes"):
        score_folder(tmp_path, scenes[:4])
