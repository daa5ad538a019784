"""Feature extractors and image sources: the offline random Inception, DINOv2 through timm,
CLIP score, image folders / shards / live batches, and float vs uint8 inputs."""

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from cascade.eval.clip_score import CLIPScore
from cascade.eval.extractors import DinoV2Extractor, RandomInceptionExtractor, build_extractor
from cascade.eval.features import extract_features
from cascade.files.images import to_uint8
from cascade.eval.inception import FIDInceptionV3
from cascade.eval.sources import ImageFolder, ShardImages, open_image_source
from cascade.eval.weights import state_dict_sha256


@pytest.fixture(scope="module")
def random_extractor():
    """Random-weight Inception at 75x75 input: the cheapest network with the real code path."""
    return RandomInceptionExtractor(seed=3, input_size=75)


def test_random_inception_is_deterministic_and_labelled_not_comparable(random_extractor):
    again = RandomInceptionExtractor(seed=3, input_size=75)
    assert again.weights_hash == random_extractor.weights_hash
    other_seed = FIDInceptionV3.with_random_weights(4)
    assert state_dict_sha256(other_seed.state_dict()) != random_extractor.weights_hash
    assert random_extractor.name == "random-inception-seed3-75px"
    assert "not comparable" in random_extractor.preprocessing.lower()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    features, logits = random_extractor.features_and_logits(images)
    assert features.shape == (2, 2048) and logits.shape == (2, 1008)
    assert torch.isfinite(features).all() and features.std() > 0
    assert torch.equal(features, again(images))


def test_float_images_are_quantised_like_png(random_extractor):
    floats = torch.linspace(-1, 1, 3 * 4 * 4).reshape(1, 3, 4, 4)
    expected = np.round((floats.numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
    assert np.array_equal(to_uint8(floats).numpy(), expected)
    assert torch.equal(random_extractor(floats), random_extractor(to_uint8(floats)))


def _png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_folder_shards_and_live_batches_give_the_same_features(tmp_path, random_extractor):
    rng = np.random.RandomState(0)
    arrays = [rng.randint(0, 256, (20, 30, 3), dtype=np.uint8) for _ in range(5)]
    (tmp_path / "folder" / "sub").mkdir(parents=True)
    for index, array in enumerate(arrays):
        target = tmp_path / "folder" / ("sub" if index == 4 else "") / f"{index:02d}.png"
        target.write_bytes(_png(array))
    (tmp_path / "shards").mkdir()
    for shard, indices in enumerate([(0, 1, 2), (3, 4)]):
        with tarfile.open(tmp_path / "shards" / f"part-{shard:06d}.tar", "w") as tar:
            for index in indices:
                for suffix, data in ((".png", _png(arrays[index])), (".txt", b"a caption")):
                    info = tarfile.TarInfo(f"sample{index:04d}{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    extractor = random_extractor
    from_folder = extract_features(extractor, open_image_source(tmp_path / "folder", resolution=16), batch_size=2,
                                   progress=False)
    from_shards = extract_features(extractor, open_image_source(tmp_path / "shards", resolution=16), batch_size=2,
                                   progress=False)
    pattern = str(tmp_path / "shards" / "part-{000000..000001}.tar")
    from_pattern = extract_features(extractor, open_image_source(pattern, resolution=16), progress=False)
    live = torch.stack([ImageFolder(tmp_path / "folder", resolution=16)[i] for i in range(5)])
    from_live = extract_features(extractor, iter([live[:3], live[3:]]), progress=False)
    for other in (from_shards, from_pattern, from_live):
        np.testing.assert_allclose(other.features, from_folder.features, rtol=1e-5, atol=1e-6)
    assert from_folder.logits.shape == (5, 1008)
    with pytest.raises(ValueError, match="--resolution"):  # 20x30 images are fine alone, not mixed with others
        (tmp_path / "folder" / "odd.png").write_bytes(_png(rng.randint(0, 256, (8, 8, 3), dtype=np.uint8)))
        extract_features(extractor, ImageFolder(tmp_path / "folder"), batch_size=8, progress=False)


def _tar(path, members, mode="w"):
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_reference_images_over_max_pixels_are_refused_with_their_name_and_size(tmp_path):
    big = np.zeros((30, 40, 3), dtype=np.uint8)  # 1200 pixels
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "big.png").write_bytes(_png(big))
    with pytest.raises(ValueError, match=r"big.png.*40x30"):
        ImageFolder(tmp_path / "folder", max_pixels=1000)[0]
    assert ImageFolder(tmp_path / "folder", max_pixels=1200)[0].shape == (3, 30, 40)
    shard = str(_tar(tmp_path / "refs.tar", [("k.png", _png(big))]))
    with pytest.raises(ValueError, match=r"'k.png' in shard .*refs.tar.*40x30"):
        list(ShardImages([shard], max_pixels=1000))


def test_shard_images_are_the_first_image_member_of_each_key(tmp_path):
    red, green, blue = (np.full((4, 4, 3), value, dtype=np.uint8) for value in ((255, 0, 0), (0, 255, 0), (0, 0, 255)))
    _tar(tmp_path / "a.tar", [("x/s1.txt", b"caption"), ("x/s1.PNG", _png(red)), ("x/s1.jpg", _png(green)),
                              ("x/s2.seg.png", _png(blue)), ("x/s1.png", _png(green))])  # s1 again: skipped
    _tar(tmp_path / "b.tar.gz", [("s3.png", _png(green))], mode="w:gz")
    images = list(open_image_source(tmp_path / "a.tar"))
    assert [tuple(image[:, 0, 0].tolist()) for image in images] == [(255, 0, 0), (0, 0, 255)]
    assert [tuple(image[:, 0, 0].tolist()) for image in open_image_source(tmp_path / "b.tar.gz")] == [(0, 255, 0)]
    assert len(open_image_source(str(tmp_path / "*.tar*")).shards) == 2  # a glob, as the training shards take

    _tar(tmp_path / "broken.tar", [("k.png", b"not a png")])
    with pytest.raises(ValueError, match=r"cannot decode image 'k.png' in shard .*broken.tar"):
        list(open_image_source(tmp_path / "broken.tar"))
    _tar(tmp_path / "part-000000.tar", [("k.png", _png(red))])
    with pytest.raises(FileNotFoundError, match="part-000001.tar' does not exist"):
        open_image_source(str(tmp_path / "part-{000000..000001}.tar"))


def test_dinov2_extractor_loads_a_local_timm_weights_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0)
    save_file(model.state_dict(), str(tmp_path / "dinov2-small.safetensors"))
    extractor = build_extractor("dinov2", dinov2_weights=tmp_path / "dinov2-small.safetensors",
                                dinov2_model="vit_small_patch14_dinov2", device="cpu")
    assert isinstance(extractor, DinoV2Extractor) and extractor.feature_dim == 384
    features, logits = extractor.features_and_logits(torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8))
    assert features.shape == (2, 384) and logits is None and torch.isfinite(features).all()
    with pytest.raises(ValueError, match="dinov2-weights"):
        build_extractor("dinov2", device="cpu")


def _tiny_clip(folder):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder.mkdir()
    characters = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(characters)} | {c + "</w>": len(characters) + i for i, c in enumerate(characters)}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    special = dict(bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                   pad_token_id=vocab["<|endoftext|>"])
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, **special),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    processor.save_pretrained(folder)


def test_clip_score_from_a_local_model_folder(tmp_path):
    from transformers import CLIPModel, CLIPProcessor

    _tiny_clip(tmp_path / "clip")
    metric = CLIPScore(tmp_path / "clip")
    images = torch.randint(0, 256, (3, 3, 40, 40), dtype=torch.uint8)
    prompts = ["a red circle", "two blue squares", "<script>alert(1)</script>"]
    metric.update(images[:2], prompts[:2])
    metric.update(images[2:], prompts[2:])
    model = CLIPModel.from_pretrained(tmp_path / "clip", local_files_only=True).eval()
    processor = CLIPProcessor.from_pretrained(tmp_path / "clip", local_files_only=True)
    inputs = processor(text=prompts, images=list(images.permute(0, 2, 3, 1).numpy()), return_tensors="pt",
                       padding=True)
    with torch.no_grad():
        out = model(**inputs)
    cosine = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds)
    assert metric.compute().item() == pytest.approx((100 * cosine).clamp_min(0).mean().item(), rel=1e-4, abs=1e-4)
    assert not any(key.startswith("model") for key in metric.state_dict())
    with pytest.raises(FileNotFoundError):
        CLIPScore(tmp_path / "missing")
