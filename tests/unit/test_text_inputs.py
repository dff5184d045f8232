"""Prompts of every kind through llm.encode: empty, whitespace, 100k characters, control and
invisible characters, mixed scripts and emoji, prompt-weight syntax with errors. Each encodes
exactly as the tokenizer's own library says (T5: sentencepiece, cut/padded as the release does;
decoders: the transformers tokenizer) or fails with a clear LLM4GENError; none takes long.
"""
from __future__ import annotations

import time

import pytest
import sentencepiece as spm
import torch

from llm4gen_core import LLM4GENError, load_llm
from synthetic.llm import tiny_llama_folder, tiny_spm_tokenizer, tiny_t5_encoder, tiny_t5_safetensors

TEXTS = {
    "empty": "",
    "whitespace": " \t\n\r\u3000\u00a0  ",
    "100k words": "a photo of a cat sitting on a mat, " * 2900,
    "100k one word": "a" * 100_000,
    "100k emoji": "😀👩‍👩‍👧" * 20_000,
    "100k newlines": "\n" * 100_000,
    "control characters": "a\x00b\x01c\x07d\x1b[31me\x7ff\x9bg",
    "invisible and bidi": "cat\u200b\u200c\u200d\u2060\ufeff on\u202e mat\u202c \u2066x\u2069",
    "mixed scripts and emoji": "naïve café 日本の猫 привет мир مرحبا שלום 👩‍👩‍👧 🇫🇷 ǅ ﬁ Ⅻ ①",
    "prompt weight, unclosed": "(word:1.3",
    "prompt weight, unbalanced": "((a) cat)) [dog (house:0.5",
    "prompt weight, bad number": "(cat:abc) (dog:1e309) (bird:-inf) (fish:nan)",
    "prompt syntax soup": "{a|b} [c:d:0.5] <lora:x:1> embedding:foo \\(escaped\\) :::: ((((",
}
LONG = {"100k words", "100k one word", "100k emoji", "100k newlines"}


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t5")
    tokenizer = tiny_spm_tokenizer(folder / "tok")
    llm = load_llm(tiny_t5_safetensors(folder / "t5.safetensors", tiny_t5_encoder(seed=4)), tokenizer_path=tokenizer,
                   dtype="fp32", device="cpu")
    return llm, spm.SentencePieceProcessor(model_file=str(tokenizer / "spiece.model"))


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from transformers import AutoTokenizer

    folder = tiny_llama_folder(tmp_path_factory.mktemp("llama") / "llama")
    return load_llm(folder, dtype="fp32", device="cpu"), AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def _padded(ids: list[int], max_tokens: int, pad: int) -> torch.Tensor:
    kept = ids[:max_tokens]
    return torch.tensor([kept + [pad] * (max_tokens - len(kept))])


def _timed_encode(llm, text, max_tokens=256):
    start = time.perf_counter()
    out = llm.encode(text, max_tokens=max_tokens)
    return out, time.perf_counter() - start


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_t5_encodes_every_prompt_as_sentencepiece_tokenizes_it(t5, name):
    llm, sp = t5
    text = TEXTS[name]
    out, seconds = _timed_encode(llm, text)
    reference = sp.encode("pre " + text) + [1]  # RankGen's prefix, then </s>, as the release's T5Tokenizer
    assert torch.equal(out.input_ids, _padded(reference, 256, 0))
    assert torch.equal(out.attention_mask, (torch.arange(256) < min(len(reference), 256)).long()[None])
    assert out.token_counts == [len(reference)] and out.truncated == [len(reference) > 256]
    assert out.hidden_states.shape == (1, 256, 32) and torch.isfinite(out.hidden_states).all()
    if name in LONG:
        print(f"\nT5 encode of {name!r} ({len(text):,} characters, {len(reference):,} tokens): {seconds * 1000:.0f} ms")


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_decoder_encodes_every_prompt_as_its_tokenizer_does(llama, name):
    llm, tokenizer = llama
    text = TEXTS[name]
    out, seconds = _timed_encode(llm, text, 64)
    reference = tokenizer(text, add_special_tokens=True)["input_ids"]
    assert torch.equal(out.input_ids, _padded(reference, 64, tokenizer.pad_token_id))
    assert out.token_counts == [len(reference)]
    assert out.hidden_states.shape == (1, 64, 32) and torch.isfinite(out.hidden_states).all()
    if name in LONG:
        print(f"\nLlama encode of {name!r} ({len(text):,} characters, {len(reference):,} tokens): {seconds * 1000:.0f} ms")


@pytest.mark.parametrize("texts", [["a cat", "half of a pair: \ud800 here"], "\udfff", "ok \ud83d"])
def test_text_that_is_not_unicode_is_a_clear_error(t5, llama, texts):
    """A lone surrogate (JSON allows "\\ud800", so a prompt from the API can hold one) cannot be
    encoded; the error says where it is instead of sentencepiece's pybind11 cast error."""
    for llm in (t5[0], llama[0]):
        with pytest.raises(LLM4GENError, match=r"prompt \d is not valid Unicode: .* at character \d+ is half of a surrogate"):
            llm.encode(texts)


def test_a_batch_of_odd_prompts_matches_the_prompts_one_by_one(t5):
    """Batching never mixes prompts: each row equals that prompt encoded alone."""
    llm, _ = t5
    names = ["empty", "control characters", "mixed scripts and emoji", "100k words", "prompt weight, unclosed"]
    batch = llm.encode([TEXTS[n] for n in names])
    for row, name in enumerate(names):
        alone = llm.encode(TEXTS[name])
        assert torch.equal(batch.input_ids[row], alone.input_ids[0])
        torch.testing.assert_close(batch.hidden_states[row], alone.hidden_states[0], atol=1e-5, rtol=0)
