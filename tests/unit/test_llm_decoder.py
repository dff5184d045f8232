"""Decoder-only LLMs through load_llm: each family, hidden-layer choice, plain and chat templates.

References: ids from the ``tokenizers`` library on the folder's tokenizer.json, right-padded, fed
to the transformers model the folder was saved from.
"""
import pytest
import torch
from tokenizers import Tokenizer

from llm4gen_core import LLMLoadError, load_llm
from synthetic.llm import tiny_decoder, tiny_decoder_folder, tiny_llama_folder

PROMPTS = ["a photo of a cat", "", "naïve café 😀 日本\n", "the dog " * 40]
PAD = 3  # "<pad>" in the tiny BPE vocabulary


def reference(folder, model, prompts, max_tokens, chat=False, layer=-1):
    rust = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = torch.full((len(prompts), max_tokens), PAD)
    mask = torch.zeros((len(prompts), max_tokens), dtype=torch.long)
    for row, p in enumerate(prompts):
        tokens = (rust.encode(f"<s>[user] {p}</s>", add_special_tokens=False) if chat else rust.encode(p)).ids
        tokens = tokens[:max_tokens]
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
    with torch.no_grad():
        out = model.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    hidden = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
    return ids, mask, hidden


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    model = tiny_decoder("llama", seed=5)
    return tiny_decoder_folder(tmp_path_factory.mktemp("llama"), model), model


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"])
def test_families_match_transformers(tmp_path, family):
    model = tiny_decoder(family, seed=6)
    folder = tiny_decoder_folder(tmp_path / family, model)
    llm = load_llm(folder, device="cpu")
    assert (llm.kind, llm.hidden_size, llm.dtype) == ("decoder", 32, torch.float32)
    out = llm.encode(PROMPTS, max_tokens=48)
    ids, mask, hidden = reference(folder, model, PROMPTS, 48)
    assert torch.equal(out.input_ids, ids) and torch.equal(out.attention_mask, mask)
    torch.testing.assert_close(out.hidden_states, hidden, atol=1e-5, rtol=0)
    assert out.truncated == [False, False, False, True]


@pytest.mark.parametrize("layer", [0, 1, -2])
def test_hidden_layer_choice(llama, layer):
    folder, model = llama
    out = load_llm(folder, hidden_layer=layer).encode(PROMPTS, max_tokens=32)
    torch.testing.assert_close(out.hidden_states, reference(folder, model, PROMPTS, 32, layer=layer)[2], atol=1e-5, rtol=0)


def test_chat_template(llama):
    folder, model = llama
    out = load_llm(folder, template="chat").encode(PROMPTS, max_tokens=64)
    ids, mask, hidden = reference(folder, model, PROMPTS, 64, chat=True)
    assert torch.equal(out.input_ids, ids)
    torch.testing.assert_close(out.hidden_states, hidden, atol=1e-5, rtol=0)


def test_no_prefix_by_default_and_a_custom_one(llama):
    folder, _ = llama
    rust = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert load_llm(folder).encode("cat", 8).token_counts == [len(rust.encode("cat").ids)]
    assert load_llm(folder, prefix="a ").encode("cat", 8).token_counts == [len(rust.encode("a cat").ids)]


def test_progress_over_decoder_layers(llama):
    folder, _ = llama
    calls = []
    load_llm(folder).encode(PROMPTS, 16, step_callback=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 3) for i in (1, 2, 3)]


def test_tiny_llama_folder_builder_loads(tmp_path):
    llm = load_llm(tiny_llama_folder(tmp_path / "l"))
    assert llm.encode(["a cat"], 8).hidden_states.shape == (1, 8, 32)


def test_hidden_layer_out_of_range(llama):
    folder, _ = llama
    with pytest.raises(LLMLoadError, match=r"hidden_layer 4 out of range: this model has hidden states 0\.\.3"):
        load_llm(folder, hidden_layer=4)


def test_chat_template_missing(tmp_path):
    folder = tiny_decoder_folder(tmp_path / "l", tiny_decoder("llama"))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    import json

    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(LLMLoadError, match="no chat template"):
        load_llm(folder, template="chat")


def test_decoder_without_tokenizer_uses_tokenizer_path(tmp_path, llama):
    folder, model = llama
    bare = tiny_decoder_folder(tmp_path / "bare", model, with_tokenizer=False)
    with pytest.raises(LLMLoadError, match="no tokenizer in the model folder and no tokenizer_path"):
        load_llm(bare)
    out = load_llm(bare, tokenizer_path=folder).encode(PROMPTS, 16)
    torch.testing.assert_close(out.hidden_states, reference(folder, model, PROMPTS, 16)[2], atol=1e-5, rtol=0)


def test_decoder_weights_that_do_not_fit_config(tmp_path):
    import json

    folder = tiny_decoder_folder(tmp_path / "l", tiny_decoder("llama"))
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 96
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(LLMLoadError, match=rf"{folder}: the weights do not fit config.json: shapes that do not match "
                       r"config.json: layers.0.mlp.down_proj.weight \(32, 64\) \(config.json wants \(32, 96\)\)"):
        load_llm(folder)


def test_decoder_with_missing_layers(tmp_path):
    import json

    folder = tiny_decoder_folder(tmp_path / "l", tiny_decoder("llama"))
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 4
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(LLMLoadError, match=r"weights missing from the files: layers\.3\."):
        load_llm(folder)
