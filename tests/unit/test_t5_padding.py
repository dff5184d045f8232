"""Pad positions computed once (llm4gen_core.t5_padding): the encoder gives the full forward's
features at all 256 positions while computing only the real tokens and one pad per distinct bias row."""
import dataclasses

import pytest
import torch

from llm4gen_core import load_llm
from llm4gen_core.t5_padding import first_self_attention, padding_plan, run_once_per_distinct_position
from synthetic.llm import sized_t5_encoder, tiny_spm_tokenizer, tiny_t5_rankgen_folder

N = 256


@pytest.fixture(scope="module")
def model():
    # T5's own bucket settings (32 buckets, max distance 128), small widths
    return sized_t5_encoder(seed=3, vocab_size=1000, d_model=128, d_kv=16, num_heads=8, d_ff=256, num_layers=3)


def batch(lengths, n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 1000, (len(lengths), n), generator=g)
    mask = torch.zeros(len(lengths), n, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
        ids[row, length:] = 0
    return ids, mask


def full_and_once(model, ids, mask):
    forward = lambda i, m: model(input_ids=i, attention_mask=m).last_hidden_state  # noqa: E731
    with torch.no_grad():
        return forward(ids, mask), run_once_per_distinct_position(model, ids, mask, forward)


@pytest.mark.parametrize("lengths", [[1], [2], [9], [74], [127], [200], [254], [1, 74], [74, 3, 150], [255], [256]])
def test_every_position_equals_the_full_forward(model, lengths):
    ids, mask = batch(lengths)
    full, once = full_and_once(model, ids, mask)
    assert once.shape == full.shape
    torch.testing.assert_close(once, full, atol=2e-5, rtol=0)


def test_the_plan_computes_few_pad_positions_and_each_takes_an_equal_bias_row(model):
    attention = first_self_attention(model)
    bias = attention.compute_bias(N, N)
    for length, most in [(1, 17), (2, 26), (74, 170)]:  # of 256
        _, mask = batch([length])
        plan = padding_plan(bias, mask)
        assert len(plan.keep) <= most, (length, len(plan.keep))
        assert torch.equal(plan.keep[:length], torch.arange(length))  # every real token is computed
        assert torch.equal(plan.keep[plan.index][:length], torch.arange(length))
        source = plan.keep[plan.index]  # the position whose output each position takes
        assert torch.equal(bias[0][:, torch.arange(N), :length], bias[0][:, source, :length])
        assert bool((source <= torch.arange(N)).all())


def test_no_plan_where_nothing_is_saved_or_padding_is_not_on_the_right(model):
    bias = first_self_attention(model).compute_bias(N, N)
    assert padding_plan(bias, batch([256])[1]) is None
    assert padding_plan(bias, batch([255])[1]) is None
    _, mask = batch([5])
    mask[0, 2] = 0  # a hole: not "real tokens, then padding"
    assert padding_plan(bias, mask) is None
    assert padding_plan(bias, torch.flip(batch([5])[1], [1])) is None  # left padding


def test_the_model_is_left_as_it_was(model):
    ids, mask = batch([9])
    full, _ = full_and_once(model, ids, mask)
    assert "compute_bias" not in vars(first_self_attention(model))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).last_hidden_state, full)


def test_an_error_inside_leaves_the_model_as_it_was(model):
    ids, mask = batch([9])

    def failing(i, m):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_once_per_distinct_position(model, ids, mask, failing)
    assert "compute_bias" not in vars(first_self_attention(model))


def test_encode_through_load_llm_inner_layers_and_bf16(tmp_path, model):
    """LLMEncoder.encode uses the plan: the last and an inner hidden state equal transformers' full
    forward on the same ids, in fp32 and (looser) bf16, for a batch with an empty prompt."""
    tok = tiny_spm_tokenizer(tmp_path / "tok")
    folder = tiny_t5_rankgen_folder(tmp_path / "rankgen", model)
    prompts = ["", "a red cube on a blue sphere", "a photo of a cat sitting on a mat under blue sky"]
    for dtype, atol in [("fp32", 2e-5), ("bf16", 0.1)]:
        llm = load_llm(folder, tokenizer_path=tok, dtype=dtype, device="cpu")
        out = llm.encode(prompts, 256)
        assert 0 < int(out.attention_mask.sum(1).max()) < 40
        with torch.no_grad():
            states = llm.model(input_ids=out.input_ids, attention_mask=out.attention_mask,
                               output_hidden_states=True).hidden_states
        torch.testing.assert_close(out.hidden_states, states[-1], atol=atol, rtol=0)
        inner = llm.encode(prompts, recipe=dataclasses.replace(out.recipe, hidden_layer=1))
        torch.testing.assert_close(inner.hidden_states, states[1], atol=atol, rtol=0)
