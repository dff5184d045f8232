"""T5 encoders through load_llm: every layout, the release's padding/truncation, dtypes, progress.

References: token ids from the sentencepiece library, padded/cut the way the release does it
(docs/reference.md, section 1), fed to the transformers T5EncoderModel the files were made from.
"""
import pytest
import sentencepiece as spm
import torch

from llm4gen_core import EncodedText, LLM4GENError, LLMLoadError, load_llm
from synthetic.llm import (
    tiny_spm_tokenizer, tiny_t5_encoder, tiny_t5_hf_folder, tiny_t5_rankgen_folder, tiny_t5_safetensors,
    tiny_t5_tokenizer_json,
)

PROMPTS = [
    "a photo of a cat sitting on a mat under blue sky",
    "",
    "naïve café 😀 日本  \n trailing ",
    " ".join(["ground view of the great pyramids and sphinx on the moon surface"] * 30),  # > 256 tokens
    "\nGround view of the Great Pyramids.\n",
]


def release_batch(sp, prompts, max_length=256):
    """The release's tokenizer side (docs/reference.md, section 1): "pre " + prompt, ids + </s>,
    padded with 0 to the longest, then cut to max_length or zero-padded up to it."""
    ids = [sp.encode("pre " + p) + [1] for p in prompts]
    longest = max(map(len, ids))
    input_ids = torch.tensor([x + [0] * (longest - len(x)) for x in ids])
    mask = torch.tensor([[1] * len(x) + [0] * (longest - len(x)) for x in ids])
    if longest > max_length:
        return input_ids[:, :max_length], mask[:, :max_length]
    pad = torch.zeros(len(prompts), max_length - longest, dtype=input_ids.dtype)
    return torch.cat([input_ids, pad], 1), torch.cat([mask, pad], 1)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tiny_spm_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def sp(tok):
    return spm.SentencePieceProcessor(model_file=str(tok / "spiece.model"))


@pytest.fixture(scope="module")
def model():
    return tiny_t5_encoder(seed=1)


@pytest.fixture(scope="module")
def reference(model, sp):
    ids, mask = release_batch(sp, PROMPTS)
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    return ids, mask, hidden


@pytest.fixture(scope="module")
def rankgen(tmp_path_factory, model):
    return tiny_t5_rankgen_folder(tmp_path_factory.mktemp("rankgen"), model)


def assert_matches(out: EncodedText, reference):
    ids, mask, hidden = reference
    assert torch.equal(out.input_ids, ids)
    assert torch.equal(out.attention_mask, mask)
    assert out.input_ids.dtype == out.attention_mask.dtype == torch.long
    assert out.hidden_states.shape == hidden.shape
    torch.testing.assert_close(out.hidden_states, hidden, atol=1e-5, rtol=0)


def test_rankgen_bin_layout_matches_the_release(rankgen, tok, sp, reference):
    llm = load_llm(rankgen, tokenizer_path=tok)
    assert (llm.kind, llm.hidden_size, llm.dtype) == ("t5-encoder", 32, torch.float32)
    out = llm.encode(PROMPTS)
    assert_matches(out, reference)
    assert out.hidden_states.shape == (len(PROMPTS), 256, 32)
    assert out.token_counts == [len(sp.encode("pre " + p)) + 1 for p in PROMPTS]
    assert out.truncated == [False, False, False, True, False]
    assert out.token_counts[3] > 256 and 1 not in out.input_ids[3].tolist()  # lost its </s>
    assert out.input_ids[1].tolist()[:3] == sp.encode("pre") + [1, 0]      # "" -> "pre </s>"
    assert not any(p.requires_grad for p in llm.model.parameters()) and not llm.model.training


def test_padding_positions_are_encoded_not_zeroed(rankgen, tok):
    out = load_llm(rankgen, tokenizer_path=tok).encode([""])
    assert out.attention_mask[0].sum() == 2
    assert out.hidden_states[0, 2:].abs().sum() > 0  # the release keeps (and fuses) these


def test_rankgen_safetensors_layout(tmp_path, model, tok, reference):
    folder = tiny_t5_rankgen_folder(tmp_path / "rg", model, fmt="safetensors")
    assert_matches(load_llm(folder, tokenizer_path=tok).encode(PROMPTS), reference)


def test_hf_t5_folder_with_its_own_tokenizer(tmp_path, model, tok, reference):
    folder = tiny_t5_hf_folder(tmp_path / "hf", model, tokenizer_from=tok)
    assert_matches(load_llm(folder).encode(PROMPTS), reference)


def test_sharded_hf_t5_folder(tmp_path, model, tok, reference):
    folder = tiny_t5_hf_folder(tmp_path / "hf", model, tokenizer_from=tok, max_shard_size="20KB")
    assert (folder / "model.safetensors.index.json").is_file()
    assert_matches(load_llm(folder).encode(PROMPTS), reference)


def test_single_safetensors_file_with_a_tokenizer_json_folder(tmp_path, model, tok, reference):
    file = tiny_t5_safetensors(tmp_path / "t5.safetensors", model)
    tj = tiny_t5_tokenizer_json(tmp_path / "tj", tok)
    assert_matches(load_llm(file, tokenizer_path=tj).encode(PROMPTS), reference)


def test_single_bin_file_with_a_prefix(tmp_path, model, tok, reference):
    from synthetic.llm import t5_state

    torch.save({f"t5_encoder.{k}": v for k, v in t5_state(model).items()}, tmp_path / "rankgen.bin")
    assert_matches(load_llm(tmp_path / "rankgen.bin", tokenizer_path=tok).encode(PROMPTS), reference)


def test_full_t5_checkpoint_keeps_only_the_encoder(tmp_path, tok, sp):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(3)
    full = T5ForConditionalGeneration(T5Config(vocab_size=512, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                               num_heads=4, feed_forward_proj="gated-gelu")).eval()
    full.save_pretrained(str(tmp_path / "full"))
    (tmp_path / "full" / "spiece.model").write_bytes((tok / "spiece.model").read_bytes())
    ids, mask = release_batch(sp, PROMPTS[:2])
    with torch.no_grad():
        expected = full.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    out = load_llm(tmp_path / "full").encode(PROMPTS[:2])
    torch.testing.assert_close(out.hidden_states, expected, atol=1e-5, rtol=0)


def test_relu_t5_config_is_inferred_from_shapes(tmp_path, tok, sp):
    relu = tiny_t5_encoder(seed=2, feed_forward_proj="relu", d_ff=48, num_layers=3, num_heads=2, d_kv=12)
    file = tiny_t5_safetensors(tmp_path / "relu.safetensors", relu)
    llm = load_llm(file, tokenizer_path=tok)
    cfg = llm.model.config
    assert (cfg.is_gated_act, cfg.d_ff, cfg.num_layers, cfg.num_heads, cfg.d_kv) == (False, 48, 3, 2, 12)
    ids, mask = release_batch(sp, PROMPTS[:3], max_length=64)
    with torch.no_grad():
        expected = relu(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(llm.encode(PROMPTS[:3], max_tokens=64).hidden_states, expected, atol=1e-5, rtol=0)


def test_rankgen_release_config_is_read_not_run(rankgen, tok):
    cfg = load_llm(rankgen, tokenizer_path=tok).model.config
    assert (cfg.d_model, cfg.d_kv, cfg.num_heads, cfg.d_ff, cfg.num_layers, cfg.vocab_size) == (32, 8, 4, 64, 2, 512)
    assert cfg.is_gated_act and cfg.dense_act_fn == "gelu_new"
    assert (rankgen / "modeling_rankgen.py").is_file()  # raises if executed: loading did not run it


def test_rankgen_with_a_non_t5_config_infers_it_from_shapes(tmp_path, model, tok, reference):
    folder = tiny_t5_rankgen_folder(tmp_path / "rg", model, config_style="custom")
    llm = load_llm(folder, tokenizer_path=tok)
    cfg = llm.model.config
    assert (cfg.d_model, cfg.d_kv, cfg.num_heads, cfg.d_ff, cfg.num_layers, cfg.vocab_size) == (32, 8, 4, 64, 2, 512)
    assert cfg.is_gated_act and cfg.dense_act_fn == "gelu_new"
    assert_matches(llm.encode(PROMPTS), reference)


def test_rankgen_folder_with_its_own_tokenizer(tmp_path, model, tok, reference):
    folder = tiny_t5_rankgen_folder(tmp_path / "rg", model, tokenizer_from=tok)
    assert_matches(load_llm(folder, tokenizer_path=tmp_path / "ignored").encode(PROMPTS), reference)


def test_batches_larger_than_a_chunk_and_other_lengths(rankgen, tok, sp, model):
    llm = load_llm(rankgen, tokenizer_path=tok)
    prompts = [f"a cat {'and a dog ' * i}" for i in range(11)]
    ids, mask = release_batch(sp, prompts, max_length=20)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
    out = llm.encode(prompts, max_tokens=20)
    assert_matches(out, (ids, mask, expected))
    assert out.truncated == [n > 20 for n in out.token_counts] and any(out.truncated) and not all(out.truncated)


def test_single_string_and_custom_prefix(rankgen, tok, sp, model):
    llm = load_llm(rankgen, tokenizer_path=tok, prefix="")
    out = llm.encode("a cat", max_tokens=8)
    assert out.input_ids.shape == (1, 8)
    assert out.input_ids[0, : out.token_counts[0]].tolist() == sp.encode("a cat") + [1]


def test_step_callback_reports_every_layer_of_every_chunk(rankgen, tok):
    llm = load_llm(rankgen, tokenizer_path=tok)
    calls = []
    llm.encode([f"prompt {i}" for i in range(10)], max_tokens=16, step_callback=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 4) for i in range(1, 5)]  # 2 chunks (8 + 2 prompts) x 2 layers


def test_interrupt_in_step_callback_aborts_cleanly(rankgen, tok):
    llm = load_llm(rankgen, tokenizer_path=tok)
    before = llm.encode(PROMPTS[:2], max_tokens=32).hidden_states

    class Interrupted(Exception):
        pass

    def interrupt(done, total):
        if done == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        llm.encode(PROMPTS[:2], max_tokens=32, step_callback=interrupt)
    assert not any(block._forward_hooks for block in llm.model.encoder.block)
    assert torch.equal(llm.encode(PROMPTS[:2], max_tokens=32).hidden_states, before)


def test_encode_follows_the_module_dtype_at_call_time(rankgen, tok):
    llm = load_llm(rankgen, tokenizer_path=tok)
    llm.model.to(torch.bfloat16)
    out = llm.encode("a cat", max_tokens=8)
    assert llm.dtype == out.hidden_states.dtype == torch.bfloat16
    assert out.hidden_states.device == llm.device == torch.device("cpu")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_t5_stays_finite_where_activations_overflow_fp16(tmp_path, tok, sp, dtype):
    """T5 v1.1's feed-forward outputs overflow fp16 (here forced with large wo weights): the guard
    (wo kept in fp32, transformers' clamping) keeps the features finite and close to fp32."""
    loud = tiny_t5_encoder(seed=4)
    with torch.no_grad():
        for block in loud.encoder.block:
            block.layer[1].DenseReluDense.wo.weight.mul_(3e4)
    file = tiny_t5_safetensors(tmp_path / "loud.safetensors", loud)
    ids, mask = release_batch(sp, PROMPTS[:3], max_length=32)
    peaks = []
    hooks = [b.layer[1].register_forward_hook(lambda m, i, o: peaks.append(o.abs().max().item())) for b in loud.encoder.block]
    with torch.no_grad():
        expected = loud(input_ids=ids, attention_mask=mask).last_hidden_state
    for h in hooks:
        h.remove()
    assert max(peaks) > torch.finfo(torch.float16).max  # the residual stream leaves fp16's range
    llm = load_llm(file, tokenizer_path=tok, dtype=dtype, device="cpu")
    assert llm.dtype == dtype
    if dtype == torch.float16:
        assert llm.model.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32
    out = llm.encode(PROMPTS[:3], max_tokens=32).hidden_states
    assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), expected, atol=0.1, rtol=0.05)


def test_dtype_and_device_choices(rankgen, tok):
    assert load_llm(rankgen, tokenizer_path=tok, device="cpu").dtype == torch.float32  # auto on CPU
    assert load_llm(rankgen, tokenizer_path=tok, dtype="bf16").dtype == torch.bfloat16
    with pytest.raises(LLMLoadError, match="unsupported dtype"):
        load_llm(rankgen, tokenizer_path=tok, dtype="int8")
    with pytest.raises(LLMLoadError, match="unknown device"):
        load_llm(rankgen, tokenizer_path=tok, device="warp-drive")


# --- edges the release's rule decides, and guards that must hold --------------------------------

def _prompt_of_length(sp, n: int) -> str:
    """A prompt whose release tokenization ("pre " + prompt, with </s>) is exactly n ids."""
    for k in range(2 * n):
        text = " ".join(["cat"] * k)
        if len(sp.encode("pre " + text)) + 1 == n:
            return text
    raise AssertionError(f"no prompt of {n} tokens")


@pytest.mark.parametrize("max_tokens", [256, 9], ids=["release-256", "9"])
def test_exactly_max_tokens_is_kept_whole_and_one_more_is_truncated(rankgen, tok, sp, model, max_tokens):
    """A prompt of exactly max_tokens ids (</s> included) is not truncated and keeps its </s> in
    the last position; one id more is truncated and loses the </s>; one fewer gets one pad."""
    llm = load_llm(rankgen, tokenizer_path=tok)
    texts = [_prompt_of_length(sp, max_tokens + d) for d in (0, 1, -1)]
    out = llm.encode(texts, max_tokens=max_tokens)
    assert out.token_counts == [max_tokens, max_tokens + 1, max_tokens - 1]
    assert out.truncated == [False, True, False]
    ids, mask = out.input_ids.tolist(), out.attention_mask.tolist()
    assert ids[0] == sp.encode("pre " + texts[0]) + [1] and mask[0] == [1] * max_tokens
    assert ids[1] == sp.encode("pre " + texts[1])[:max_tokens] and 1 not in ids[1] and mask[1] == [1] * max_tokens
    assert ids[2] == sp.encode("pre " + texts[2]) + [1, 0] and mask[2] == [1] * (max_tokens - 1) + [0]
    expected_ids, expected_mask = release_batch(sp, texts, max_length=max_tokens)
    with torch.no_grad():
        expected = model(input_ids=expected_ids, attention_mask=expected_mask).last_hidden_state
    assert_matches(out, (expected_ids, expected_mask, expected))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_features_are_an_error_not_a_black_image(rankgen, tok, bad):
    """Weights that turn non-finite after loading (as fp16 overflow does at run time) give NaN/inf
    features: encode refuses to return them."""
    llm = load_llm(rankgen, tokenizer_path=tok)
    assert torch.isfinite(llm.encode("a cat", max_tokens=8).hidden_states).all()
    with torch.no_grad():
        llm.model.encoder.final_layer_norm.weight[3] = bad
    with pytest.raises(LLM4GENError, match=r"the LLM gave NaN or infinite features .*load it in fp32 or bf16"):
        llm.encode(["a cat", "a dog"], max_tokens=8)


@pytest.mark.parametrize("fmt,name", [("safetensors", "t5-encoder.bin"), ("safetensors", "t5-encoder.pth"),
                                      ("torch-zip", "t5-encoder.safetensors"),
                                      ("torch-legacy", "t5-encoder.safetensors")])
def test_single_llm_file_is_read_by_its_bytes_not_its_name(tmp_path, model, tok, reference, fmt, name):
    from safetensors.torch import save_file

    from synthetic.llm import t5_state

    state = t5_state(model)
    path = tmp_path / name
    if fmt == "safetensors":
        del state["encoder.embed_tokens.weight"]  # safetensors refuses shared storage
        save_file(state, str(path))
    else:
        torch.save(state, path, _use_new_zipfile_serialization=fmt == "torch-zip")
    assert_matches(load_llm(path, tokenizer_path=tok).encode(PROMPTS), reference)


def test_rankgen_folder_whose_bin_holds_safetensors_bytes(tmp_path, model, tok, reference):
    folder = tiny_t5_rankgen_folder(tmp_path / "rg", model, fmt="safetensors")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    assert_matches(load_llm(folder, tokenizer_path=tok).encode(PROMPTS), reference)
