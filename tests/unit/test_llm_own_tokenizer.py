"""When load_llm needs a tokenizer_path (needs_tokenizer_path, the rule the Load LLM node asks
before passing ComfyUI's T5 tokenizer): exactly when loading without one fails for want of a
tokenizer. A tokenizer_config.json is settings, not a tokenizer: a RankGen folder holding one
must still get the fallback."""
from __future__ import annotations

import json
import shutil

import pytest

from llm4gen_core import LLMLoadError, load_llm, needs_tokenizer_path
from synthetic.llm import (
    tiny_decoder, tiny_decoder_folder, tiny_spm_tokenizer, tiny_t5_encoder, tiny_t5_rankgen_folder,
    tiny_t5_safetensors, tiny_t5_tokenizer_json,
)

SETTINGS_ONLY = {"model_max_length": 512, "tokenizer_class": "T5Tokenizer", "extra_ids": 100}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tiny_spm_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def t5():
    return tiny_t5_encoder(seed=5)


def rankgen(tmp_path, t5, *files):
    folder = tiny_t5_rankgen_folder(tmp_path / "rankgen", t5)
    for name, source in files:
        if isinstance(source, dict):
            (folder / name).write_text(json.dumps(source))
        else:
            shutil.copyfile(source, folder / name)
    return folder


def loads_without_tokenizer_path(path) -> bool:
    try:
        load_llm(path)
    except LLMLoadError as e:
        assert "no tokenizer" in str(e), e
        return False
    return True


def test_a_tokenizer_config_alone_is_no_tokenizer(tmp_path, t5, tok):
    folder = rankgen(tmp_path, t5, ("tokenizer_config.json", SETTINGS_ONLY))
    assert needs_tokenizer_path(folder)
    assert not loads_without_tokenizer_path(folder)
    assert load_llm(folder, tokenizer_path=tok).encode(["a red car"], 8).hidden_states.shape == (1, 8, 32)


@pytest.mark.parametrize("files", [
    "none", "spiece.model", "spiece.model + tokenizer_config.json", "tokenizer.json",
])
def test_the_rule_agrees_with_the_loader(tmp_path, t5, tok, files):
    available = {"spiece.model": tok / "spiece.model", "tokenizer_config.json": SETTINGS_ONLY}
    if files == "tokenizer.json":
        available["tokenizer.json"] = tiny_t5_tokenizer_json(tmp_path / "json", tok) / "tokenizer.json"
    chosen = [] if files == "none" else files.split(" + ")
    folder = rankgen(tmp_path, t5, *((name, available[name]) for name in chosen))
    assert needs_tokenizer_path(folder) == (not loads_without_tokenizer_path(folder))
    assert needs_tokenizer_path(folder) == (files == "none")


def test_a_single_weights_file_always_needs_one(tmp_path, t5):
    path = tiny_t5_safetensors(tmp_path / "t5.safetensors", t5)
    assert needs_tokenizer_path(path) and not loads_without_tokenizer_path(path)


def test_a_decoder_never_takes_the_t5_fallback(tmp_path):
    """A decoder-only LLM needs its own tokenizer: the T5 one is never the answer."""
    model = tiny_decoder("llama")
    with_tok = tiny_decoder_folder(tmp_path / "with", model)
    bare = tiny_decoder_folder(tmp_path / "bare", model, with_tokenizer=False)
    (bare / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    assert not needs_tokenizer_path(with_tok) and not needs_tokenizer_path(bare)
    assert loads_without_tokenizer_path(with_tok)
    with pytest.raises(LLMLoadError, match="no tokenizer in the model folder and no tokenizer_path"):
        load_llm(bare)
