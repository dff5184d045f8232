"""Bad input to load_llm / encode: each a typed error that names the file and what to do."""
import json
import pickle

import pytest
import torch

from llm4gen_core import CheckpointError, LLM4GENError, LLMLoadError, load_llm
from synthetic.llm import (
    t5_state, tiny_spm_tokenizer, tiny_t5_encoder, tiny_t5_hf_folder, tiny_t5_rankgen_folder, tiny_t5_safetensors,
)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tiny_spm_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def model():
    return tiny_t5_encoder(seed=7)


def test_missing_path(tmp_path):
    with pytest.raises(LLMLoadError, match=rf"{tmp_path / 'nope'}: no such file or folder .*models/text_encoders"):
        load_llm(tmp_path / "nope")


def test_empty_folder(tmp_path, tok):
    with pytest.raises(LLMLoadError, match=rf"{tmp_path}: no weight files"):
        load_llm(tmp_path, tokenizer_path=tok)


def test_single_file_needs_a_tokenizer(tmp_path, model):
    file = tiny_t5_safetensors(tmp_path / "t5.safetensors", model)
    with pytest.raises(LLMLoadError, match=r"t5\.safetensors: no tokenizer .*pass tokenizer_path"):
        load_llm(file)


def test_config_and_weights_mismatch(tmp_path, model, tok):
    folder = tiny_t5_hf_folder(tmp_path / "hf", model, tokenizer_from=tok)
    config = json.loads((folder / "config.json").read_text())
    config["d_ff"] = 96
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(LLMLoadError, match=r"do not fit the model described by .*config\.json.*wi_0\.weight \(64, 32\) \(config wants \(96, 32\)\)"):
        load_llm(folder)


def test_missing_layer_weights(tmp_path, model, tok):
    folder = tiny_t5_hf_folder(tmp_path / "hf", model, tokenizer_from=tok)
    config = json.loads((folder / "config.json").read_text())
    config["num_layers"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(LLMLoadError, match=r"missing weights: encoder\.block\.2\."):
        load_llm(folder)


def test_unsupported_architecture(tmp_path, tok):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(LLMLoadError, match=r"unsupported architecture 'bert' .*supported: T5 encoders"):
        load_llm(tmp_path, tokenizer_path=tok)


def test_weights_that_are_not_a_t5_encoder(tmp_path, tok):
    from safetensors.torch import save_file

    save_file({"unet.conv.weight": torch.zeros(2, 2)}, str(tmp_path / "unet.safetensors"))
    with pytest.raises(LLMLoadError, match=r"unet\.safetensors: not a T5 encoder"):
        load_llm(tmp_path / "unet.safetensors", tokenizer_path=tok)


def test_umt5_style_weights_are_refused(tmp_path, tok, model):
    state = t5_state(model)
    del state["encoder.embed_tokens.weight"]
    state["encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"] = torch.zeros(32, 4)
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "umt5.safetensors"))
    with pytest.raises(LLMLoadError, match="UMT5"):
        load_llm(tmp_path / "umt5.safetensors", tokenizer_path=tok)


def test_tokenizer_vocab_larger_than_the_model(tmp_path, tok):
    small = tiny_t5_encoder(seed=8, vocab_size=64)
    file = tiny_t5_safetensors(tmp_path / "small.safetensors", small)
    with pytest.raises(LLMLoadError, match=rf"tokenizer {tok}.*spiece\.model has \d+ tokens but the model at .*small\.safetensors embeds only 64"):
        load_llm(file, tokenizer_path=tok)


def test_corrupt_and_unsafe_weight_files(tmp_path, tok):
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1")
    with pytest.raises(CheckpointError, match=r"cut\.safetensors"):
        load_llm(tmp_path / "cut.safetensors", tokenizer_path=tok)

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    with open(tmp_path / "evil.bin", "wb") as f:
        pickle.dump({"t5_encoder.x": Payload()}, f)
    with pytest.raises(CheckpointError, match=r"evil\.bin"):
        load_llm(tmp_path / "evil.bin", tokenizer_path=tok)


def test_missing_shard(tmp_path, model, tok):
    folder = tiny_t5_hf_folder(tmp_path / "hf", model, tokenizer_from=tok, max_shard_size="20KB")
    next(folder.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(LLMLoadError, match=r"index\.json: shard files missing: model-00002"):
        load_llm(folder)


def test_ambiguous_weight_files(tmp_path, model, tok):
    folder = tiny_t5_rankgen_folder(tmp_path / "rg", model, fmt="safetensors")
    (folder / "model.safetensors").rename(folder / "a.safetensors")
    (folder / "b.safetensors").write_bytes((folder / "a.safetensors").read_bytes())
    with pytest.raises(LLMLoadError, match="several weight files"):
        load_llm(folder, tokenizer_path=tok)


def test_bad_encode_arguments(tmp_path, model, tok):
    llm = load_llm(tiny_t5_safetensors(tmp_path / "t5.safetensors", model), tokenizer_path=tok)
    for texts in ([], [1, 2], None):
        with pytest.raises(LLM4GENError, match="texts must be"):
            llm.encode(texts)
    for max_tokens in (0, -1, 2.5, True):
        with pytest.raises(LLM4GENError, match="max_tokens must be"):
            llm.encode("a", max_tokens=max_tokens)


def test_config_json_nested_100000_deep_is_a_clear_error(tmp_path, model, tok):
    """README-safety.md: unreadable JSON, including JSON nested 100,000 deep, names the file."""
    folder = tiny_t5_hf_folder(tmp_path / "deep", model, tokenizer_from=tok)
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(LLMLoadError, match=rf"{folder / 'config.json'}: unreadable JSON"):
        load_llm(folder)
