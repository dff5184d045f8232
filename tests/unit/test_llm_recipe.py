"""Encoding with an adapter's LLM recipe: the same numbers as an encoder loaded with those settings,
for that call only, and a clear error when the recipe is for another kind of LLM."""
import dataclasses

import pytest
import torch

from llm4gen_core import RELEASE, LLM4GENError, LLMRecipe, load_llm
from synthetic.llm import tiny_decoder, tiny_decoder_folder, tiny_spm_tokenizer, tiny_t5_encoder, tiny_t5_rankgen_folder

PROMPTS = ["a photo of a cat sitting on a mat", "", "the dog " * 40]


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t5")
    tok = tiny_spm_tokenizer(folder / "tok")
    model = tiny_t5_encoder(seed=2)
    return tiny_t5_rankgen_folder(folder / "rankgen-t5", model), tok, model


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return tiny_decoder_folder(tmp_path_factory.mktemp("llama") / "tiny-llama", tiny_decoder("llama", seed=4))


def settings(llm):
    return llm.kind, llm.prefix, llm.hidden_layer, llm.template, llm.source


def assert_same(a, b):
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.attention_mask, b.attention_mask)
    assert torch.equal(a.hidden_states, b.hidden_states)
    assert (a.token_counts, a.truncated) == (b.token_counts, b.truncated)


def test_recipe_describes_the_encoder(t5, llama):
    folder, tok, _ = t5
    assert load_llm(folder, tokenizer_path=tok).recipe() == dataclasses.replace(RELEASE, llm_name="rankgen-t5")
    assert load_llm(folder, tokenizer_path=tok, prefix="").recipe(64) == LLMRecipe(
        "t5-encoder", "", 64, -1, "plain", "rankgen-t5")
    assert load_llm(llama, hidden_layer=1, template="chat").recipe(32) == LLMRecipe(
        "decoder", "", 32, 1, "chat", "tiny-llama")


def test_encode_without_a_recipe_reports_its_own(t5):
    folder, tok, _ = t5
    llm = load_llm(folder, tokenizer_path=tok)
    assert llm.encode(PROMPTS, 48).recipe == llm.recipe(48)


def test_t5_recipe_equals_those_settings_and_leaves_the_encoder_unchanged(t5):
    folder, tok, model = t5
    llm = load_llm(folder, tokenizer_path=tok)
    before, release_out = settings(llm), llm.encode(PROMPTS)
    recipe = LLMRecipe("t5-encoder", prefix="", max_tokens=16, llm_name="trained-on-this")
    # the recipe's max_tokens wins over the argument, as the nodes pass LLM Encode's
    out = llm.encode(PROMPTS, max_tokens=256, recipe=recipe)
    assert_same(out, load_llm(folder, tokenizer_path=tok, prefix="").encode(PROMPTS, max_tokens=16))
    assert out.hidden_states.shape == (3, 16, model.config.d_model) and out.recipe == recipe
    assert settings(llm) == before
    assert_same(llm.encode(PROMPTS), release_out)
    # a T5 recipe may take an inner hidden state: hidden_states[k] of the encoder, as transformers gives it
    inner = llm.encode(PROMPTS, recipe=dataclasses.replace(RELEASE, hidden_layer=1, max_tokens=20))
    with torch.no_grad():
        expected = model(input_ids=inner.input_ids, attention_mask=inner.attention_mask,
                         output_hidden_states=True).hidden_states[1]
    assert torch.equal(inner.hidden_states, expected)
    assert not torch.equal(inner.hidden_states, llm.encode(PROMPTS, 20).hidden_states)


@pytest.mark.parametrize("loaded, recipe", [
    (dict(), LLMRecipe("decoder", prefix="Describe: ", max_tokens=24, hidden_layer=1, template="chat")),
    (dict(hidden_layer=2, template="chat", prefix="x "), LLMRecipe("decoder", prefix="", max_tokens=20)),
], ids=["plain-loaded-chat-recipe", "chat-loaded-plain-recipe"])
def test_decoder_recipe_equals_those_settings_and_leaves_the_encoder_unchanged(llama, loaded, recipe):
    llm = load_llm(llama, **loaded)
    before, own = settings(llm), llm.encode(PROMPTS, 24)
    out = llm.encode(PROMPTS, max_tokens=recipe.max_tokens, recipe=recipe)
    direct = load_llm(llama, hidden_layer=recipe.hidden_layer, template=recipe.template, prefix=recipe.prefix)
    assert_same(out, direct.encode(PROMPTS, max_tokens=recipe.max_tokens))
    assert out.recipe == recipe
    assert settings(llm) == before
    assert_same(llm.encode(PROMPTS, 24), own)
    ids, mask, _, _ = llm.tokenize(PROMPTS, recipe=recipe)
    assert torch.equal(ids, out.input_ids) and torch.equal(mask, out.attention_mask)


def test_recipe_of_another_kind_is_a_clear_error(t5, llama):
    folder, tok, _ = t5
    t5_recipe = dataclasses.replace(RELEASE, llm_name="rankgen-t5-xl-all")
    with pytest.raises(LLM4GENError, match=r"the adapter was trained with rankgen-t5-xl-all \(a T5 encoder\), but "
                                           r"the loaded LLM is tiny-llama \(a decoder-only LLM\)"):
        load_llm(llama).encode("a cat", recipe=t5_recipe)
    with pytest.raises(LLM4GENError, match=r"trained with Llama-3\.2-1B \(a decoder-only LLM\), but the loaded LLM "
                                           r"is rankgen-t5 \(a T5 encoder\)"):
        load_llm(folder, tokenizer_path=tok).encode("a cat", recipe=LLMRecipe("decoder", "", 64, -1, "plain",
                                                                               "Llama-3.2-1B"))


def test_recipe_the_encoder_cannot_follow(t5, llama):
    folder, tok, _ = t5
    t5_llm = load_llm(folder, tokenizer_path=tok)
    with pytest.raises(LLM4GENError, match="'chat' template, but rankgen-t5's tokenizer has none"):
        t5_llm.encode("a cat", recipe=dataclasses.replace(RELEASE, template="chat"))
    with pytest.raises(LLM4GENError, match=r"takes hidden state 9, but tiny-llama has hidden states 0\.\.3"):
        load_llm(llama).encode("a cat", recipe=LLMRecipe("decoder", "", 8, 9, "plain", "a-bigger-llama"))
    with pytest.raises(LLM4GENError, match="recipe must be an LLMRecipe"):
        t5_llm.encode("a cat", recipe={"max_tokens": 8})
