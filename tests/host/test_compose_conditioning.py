"""Stock conditioning nodes around Apply LLM4GEN Conditioning, in a real ComfyUI:
ConditioningCombine, ConditioningSetArea, ConditioningSetMask, ConditioningSetTimestepRange,
ConditioningConcat and ConditioningAverage, before and after it. Every dict key survives, the
inputs are not mutated (snapshots of the upstream nodes' cached outputs, compared after the
LLM4GEN node ran on the very same objects), and the UNet receives each entry's fused tokens on
the latent area and at the steps the entry asks for. Also: a latent batch of 4 under prompts of
batch 1."""
from __future__ import annotations

from collections import defaultdict

import pytest
import torch

from scripts import llm4gen_graphs as lg
from scripts import stock_graphs as g
from composition_matrix import AFTER, BEFORE, SAMPLING, verified
from compose_support import FUSION_TOL, POSITIVE, assert_fused, assert_unchanged, latent_only, snapshot

pytestmark = pytest.mark.host

OTHER = "a blue glass sphere in tall grass"
NEGATIVE = ""
WIDTH, HEIGHT = 128, 64        # ConditioningSetArea's smallest area is 64 px: room for a half
FULL, HALF = (8, 16), (8, 8)   # latent sizes (h, w) of the whole image and of one half
END = 0.3                      # ConditioningSetTimestepRange(0, END): only the first of 2 steps
STOCK_NODES = ("ConditioningAverage", "ConditioningSetTimestepRange", "ConditioningSetArea",
               "ConditioningSetMask", "ConditioningConcat", "ConditioningCombine")
# What each stock node adds to an entry's dict.
ADDED_KEYS = {"ts": {"start_percent", "end_percent"}, "area": {"area", "strength", "set_area_to_bounds"},
              "mask": {"mask", "mask_strength", "set_area_to_bounds"}, "concat": set(), "avg": set()}
ENTRIES = ("ts", "area", "mask", "concat")  # the combined conditioning, in order
FUSED_KEYS = {"llm4gen", "cross_attn_controlnet"}


def base_graph(checkpoint: str, prefix: str, steps: int = 2) -> dict:
    prompt = latent_only(g.txt2img(checkpoint, POSITIVE, NEGATIVE, width=WIDTH, height=HEIGHT, steps=steps,
                                   prefix=prefix))
    prompt["other"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": [g.CKPT, 1], "text": OTHER}}
    # A mask over the left half, for ConditioningSetMask's "mask bounds".
    prompt["mask_zero"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": WIDTH, "height": HEIGHT}}
    prompt["mask_one"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": WIDTH // 2, "height": HEIGHT}}
    prompt["mask"] = {"class_type": "MaskComposite", "inputs": {
        "destination": ["mask_zero", 0], "source": ["mask_one", 0], "x": 0, "y": 0, "operation": "add"}}
    return prompt


def add_stock_chain(prompt: dict, p: str, main: list, other: list) -> list:
    """The six stock nodes on ``main`` and ``other`` (node ids prefixed ``p``): Average(main,
    other) -> SetTimestepRange; SetArea(other, right half); SetMask(main, left half bounds);
    Concat(main, other); all four combined. Returns the link to the combined conditioning."""
    nodes = {
        "avg": ("ConditioningAverage", {"conditioning_to": main, "conditioning_from": other,
                                        "conditioning_to_strength": 0.75}),
        "ts": ("ConditioningSetTimestepRange", {"conditioning": [p + "avg", 0], "start": 0.0, "end": END}),
        "area": ("ConditioningSetArea", {"conditioning": other, "width": WIDTH // 2, "height": HEIGHT,
                                         "x": WIDTH // 2, "y": 0, "strength": 0.8}),
        "mask": ("ConditioningSetMask", {"conditioning": main, "mask": ["mask", 0], "strength": 0.9,
                                         "set_cond_area": "mask bounds"}),
        "concat": ("ConditioningConcat", {"conditioning_to": main, "conditioning_from": other}),
        "comb1": ("ConditioningCombine", {"conditioning_1": [p + "ts", 0], "conditioning_2": [p + "area", 0]}),
        "comb2": ("ConditioningCombine", {"conditioning_1": [p + "comb1", 0], "conditioning_2": [p + "mask", 0]}),
        "comb3": ("ConditioningCombine", {"conditioning_1": [p + "comb2", 0], "conditioning_2": [p + "concat", 0]}),
    }
    for name, (class_type, inputs) in nodes.items():
        prompt[p + name] = {"class_type": class_type, "inputs": inputs}
    return [p + "comb3", 0]


def apply_node(source: list, embeds: str, clip_tokens: str = "first 77 (release)") -> dict:
    return {"class_type": "LLM4GENApplyConditioning", "inputs": {
        "conditioning": source, "adapter": [lg.LOAD_CAM, 0], "llm_embeds": [embeds, 0], "strength": 1.0,
        "clip_tokens": clip_tokens, "controlnet_context": "clip"}}


def with_llm(prompt: dict, models) -> dict:
    prompt[lg.LOAD_LLM] = {"class_type": "LLM4GENLoadLLM", "inputs": {"model": models.llm, "dtype": "auto",
                                                                      "device": "default"}}
    prompt[lg.LOAD_CAM] = {"class_type": "LLM4GENLoadCrossAdapter", "inputs": {"adapter_name": models.adapter}}
    for node, text in ((lg.ENC_POS, POSITIVE), (lg.ENC_NEG, NEGATIVE)):
        prompt[node] = {"class_type": "LLM4GENLLMEncode", "inputs": {"llm": [lg.LOAD_LLM, 0], "text": text,
                                                                     "max_tokens": 256}}
    return prompt


def matches(row: torch.Tensor, context: torch.Tensor) -> bool:
    """``row`` is ``context``, or ``context`` repeated along the tokens: ComfyUI batches contexts
    whose lengths have a small common multiple by repeating the shorter ones (comfy/conds.py,
    CONDCrossAttn), which leaves cross-attention unchanged."""
    times, rest = divmod(row.shape[1], context.shape[1])
    if rest or times == 0 or row.shape[2] != context.shape[2]:
        return False
    return (context.repeat(1, times, 1).float() - row.float()).abs().max() < FUSION_TOL


def received(calls: list, expected: dict[str, torch.Tensor]) -> dict[str, list]:
    """Which expected context each row of each UNet call is, with that call's sigma and latent
    (h, w): {entry: [(sigma, (h, w)), ...]}. Every row must be exactly one expected context."""
    seen = defaultdict(list)
    for call in calls:
        for side, row in enumerate(call["context"].split(1)):
            names = [name for name, context in expected.items() if matches(row, context)]
            assert len(names) == 1, (f"a UNet row of {list(row.shape)} matches {names} of "
                                     f"{ {n: list(t.shape) for n, t in expected.items()} }")
            seen[names[0]].append((round(call["sigmas"][side], 3), tuple(call["x_shape"][2:])))
    return {name: sorted(found) for name, found in seen.items()}


def expected_schedule(calls: list, end_sigma: float) -> dict[str, list]:
    sigmas = sorted({round(c["sigmas"][0], 3) for c in calls}, reverse=True)
    assert len(sigmas) == 2 and sigmas[0] >= end_sigma > sigmas[1], (sigmas, end_sigma)  # a meaningful range
    # ComfyUI also runs the negative on every positive area it has none for (samplers.py,
    # create_cond_with_same_area_if_none): whole latent plus the two halves.
    return {"ts": [(sigmas[0], FULL)], "area": sorted((s, HALF) for s in sigmas),
            "mask": sorted((s, HALF) for s in sigmas), "concat": sorted((s, FULL) for s in sigmas),
            "negative": sorted((s, hw) for s in sigmas for hw in (FULL, HALF, HALF))}


def test_conditioning_nodes_before_and_after_apply(request, comfy_inprocess, sd15_checkpoint, llm4gen_models, fusion):
    # 1. The stock nodes alone, shown by stock PreviewAny nodes (no sampling): snapshot their
    #    outputs and the LLM features. They stay cached, the same Python objects, for the next
    #    prompts, which contain the same nodes.
    stock = with_llm(base_graph(sd15_checkpoint, "cond-stock"), llm4gen_models)
    for node in (g.SAMPLER, g.SAVE_LATENT, g.RECORD, g.LATENT):
        del stock[node]
    chain = add_stock_chain(stock, "st_", [g.POS, 0], ["other", 0])
    for source in (chain, [g.NEG, 0], [lg.ENC_POS, 0], [lg.ENC_NEG, 0]):
        stock["show_" + source[0]] = {"class_type": "PreviewAny", "inputs": {"source": source}}
    comfy_inprocess.run(stock)
    upstream = (g.POS, "other", g.NEG, "mask", lg.ENC_POS, lg.ENC_NEG) + tuple(
        "st_" + n for n in ("avg", "ts", "area", "mask", "concat", "comb1", "comb2", "comb3"))
    snapshots = {node: snapshot(comfy_inprocess.node_output(node)[0]) for node in upstream}
    model = comfy_inprocess.node_output(g.CKPT)[0]
    end_sigma = model.get_model_object("model_sampling").percent_to_sigma(END)

    # 2. BEFORE: the combined stock conditioning -> Apply (all chunks keeps Concat's 154 tokens).
    before = with_llm(base_graph(sd15_checkpoint, "cond-before"), llm4gen_models)
    add_stock_chain(before, "st_", [g.POS, 0], ["other", 0])
    before[lg.FUSE_POS] = apply_node(["st_comb3", 0], lg.ENC_POS, clip_tokens="all chunks")
    before[lg.FUSE_NEG] = apply_node([g.NEG, 0], lg.ENC_NEG)
    before[g.SAMPLER]["inputs"].update(positive=[lg.FUSE_POS, 0], negative=[lg.FUSE_NEG, 0])
    result = comfy_inprocess.run(before)
    for node, shot in snapshots.items():  # the same objects, untouched by the LLM4GEN node
        assert_unchanged(shot, comfy_inprocess.node_output(node)[0], node)
    (inputs,) = comfy_inprocess.node_output("st_comb3")
    (fused,) = comfy_inprocess.node_output(lg.FUSE_POS)
    assert len(fused) == len(inputs) == len(ENTRIES)
    expected = {}
    for name, (clip, options), (tensor, new_options) in zip(ENTRIES, inputs, fused):
        assert set(new_options) == set(options) | FUSED_KEYS, name
        assert ADDED_KEYS[name] <= set(options) and "pooled_output" in options
        for key, value in options.items():  # every key kept, the very same value
            assert new_options[key] is value, f"{name}: {key} replaced"
        assert new_options["llm4gen"]["clip_tokens"] == clip.shape[1]
        assert torch.equal(new_options["cross_attn_controlnet"], clip)
        assert_fused(tensor, clip, POSITIVE, fusion, f"before: {name}")
        expected[name] = tensor
    assert expected["concat"].shape[1] == 154 + 256  # Concat's two CLIP prompts, both fused
    (negative,) = comfy_inprocess.node_output(lg.FUSE_NEG)
    expected["negative"] = negative[0][0]
    calls = result.records("unet")
    assert received(calls, expected) == expected_schedule(calls, end_sigma)

    # 3. AFTER: Apply on each CLIP prompt -> the same stock nodes on the fused conditioning.
    after = with_llm(base_graph(sd15_checkpoint, "cond-after"), llm4gen_models)
    after["fuse_other"] = apply_node(["other", 0], lg.ENC_POS)
    after[lg.FUSE_POS] = apply_node([g.POS, 0], lg.ENC_POS)
    after[lg.FUSE_NEG] = apply_node([g.NEG, 0], lg.ENC_NEG)
    chain = add_stock_chain(after, "af_", [lg.FUSE_POS, 0], ["fuse_other", 0])
    after[g.SAMPLER]["inputs"].update(positive=chain, negative=[lg.FUSE_NEG, 0])
    result = comfy_inprocess.run(after)
    for node in (g.POS, "other", g.NEG, lg.ENC_POS, lg.ENC_NEG):
        assert_unchanged(snapshots[node], comfy_inprocess.node_output(node)[0], node)
    (main,) = comfy_inprocess.node_output(lg.FUSE_POS)
    (other,) = comfy_inprocess.node_output("fuse_other")
    (combined,) = comfy_inprocess.node_output("af_comb3")
    for name, (tensor, options) in zip(ENTRIES, combined):
        assert FUSED_KEYS | ADDED_KEYS[name] | {"pooled_output"} <= set(options), name  # our keys survive
    source = {"ts": main, "area": other, "mask": main, "concat": main}
    for name, (tensor, options) in zip(ENTRIES, combined):
        assert options["llm4gen"] is source[name][0][1]["llm4gen"]
        assert options["cross_attn_controlnet"] is source[name][0][1]["cross_attn_controlnet"]
    expected = {name: tensor for name, (tensor, _) in zip(ENTRIES, combined)}
    torch.testing.assert_close(expected["ts"], 0.75 * main[0][0] + 0.25 * other[0][0])
    assert torch.equal(expected["concat"], torch.cat([main[0][0], other[0][0]], 1))  # 333 + 333
    assert torch.equal(expected["area"], other[0][0]) and torch.equal(expected["mask"], main[0][0])
    (negative,) = comfy_inprocess.node_output(lg.FUSE_NEG)
    expected["negative"] = negative[0][0]
    calls = result.records("unet")
    assert received(calls, expected) == expected_schedule(calls, end_sigma)

    what = {
        "ConditioningCombine": "all entries fused one by one, in order; each reaches the UNet",
        "ConditioningSetArea": "`area`/`strength` kept; the entry's fused tokens reach the UNet on that latent "
                               "area only",
        "ConditioningSetMask": "`mask`/`mask_strength`/`set_area_to_bounds` kept; fused tokens reach the UNet on "
                               "the mask bounds",
        "ConditioningSetTimestepRange": "`start_percent`/`end_percent` kept; the fused entry reaches the UNet only "
                                        "in its steps",
        "ConditioningConcat": {BEFORE: "154 CLIP tokens fused with `clip_tokens` all chunks: 410 tokens reach the UNet",
                               AFTER: "two fused conditionings concatenated: 666 tokens reach the UNet"},
        "ConditioningAverage": {BEFORE: "the averaged CLIP tokens are fused",
                                AFTER: "the average of two fused conditionings reaches the UNet (the "
                                       "ControlNet context stays `conditioning_to`'s CLIP tokens)"},
    }
    for node in STOCK_NODES:
        for where in (BEFORE, AFTER):
            text = what[node] if isinstance(what[node], str) else what[node][where]
            suffix = "; inputs unchanged" if where == BEFORE else "; LLM4GEN keys kept"
            verified(request, node, where, text + suffix)


def test_latent_batch_of_four_under_one_prompt(request, comfy_inprocess, sd15_checkpoint, llm4gen_models, fusion):
    prompt = latent_only(lg.with_apply(g.txt2img(sd15_checkpoint, POSITIVE, NEGATIVE, batch=4, steps=1,
                                                 prefix="batch4"), llm4gen_models.llm, llm4gen_models.adapter))
    result = comfy_inprocess.run(prompt)
    (call,) = result.records("unet")  # positive and negative (333 / 333) in one call per step
    assert call["batch_size"] == 8 and call["x_shape"] == [8, 4, 8, 8] and call["context_shape"] == [8, 333, 768]
    assert sorted(call["cond_or_uncond"]) == [0, 1]
    for side, text, node in (("positive", POSITIVE, lg.FUSE_POS), ("negative", NEGATIVE, lg.FUSE_NEG)):
        (conditioning,) = comfy_inprocess.node_output(node)
        assert conditioning[0][0].shape[0] == 1  # the prompt batch stays 1: ComfyUI repeats it
        index = call["cond_or_uncond"].index(0 if side == "positive" else 1)
        rows = call["context"][index * 4:(index + 1) * 4]
        for row in rows:
            assert torch.equal(row, conditioning[0][0][0].to(row.dtype))
        assert_fused(rows[:1], rows[:1, :77], text, fusion, side)
    verified(request, "EmptyLatentImage batch 4 + KSampler", SAMPLING,
             "prompt batch 1 repeated over 4 latents; positive and negative (333 tokens each) batched "
             "into one UNet call of 8 per step")
