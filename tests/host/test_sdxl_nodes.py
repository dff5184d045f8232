"""The LLM4GEN nodes on SDXL in a real ComfyUI, on a tiny SDXL-architecture model with random
weights (tests/synthetic/sdxl.py): stock UNETLoader detects its UNet as SDXL, so ComfyUI builds
the UNet's ``y`` from the conditioning's pooled output and size keys as for any SDXL; its text
encoders are SDXL's CLIP-L and OpenCLIP bigG at full width, 3 layers deep.

What the UNet receives is checked against an independent computation: CLIP-L and bigG features
from transformers on the same files, concatenated, the LLM features from ``load_llm``, the CAM
from ``load_cross_adapter``; ``y`` against the stock graph's for the same prompt."""
from __future__ import annotations


import pytest
import torch

from scripts import llm4gen_graphs as lg
from scripts import stock_graphs as g
from comfy_harness import ComfyExecutionError
from compose_support import POSITIVE, assert_fused, rows_by_side

pytestmark = pytest.mark.host

NEGATIVE = ""
SIDES = (("positive", POSITIVE), ("negative", NEGATIVE))
# ComfyUI's SDXL CLIP (fp32 in the tests' loader) against transformers', and what that difference
# becomes through the CAM.
CLIP_TOL = dict(atol=1e-4, rtol=1e-4)
CHAIN_TOL = dict(atol=1e-3, rtol=1e-3)


def sdxl_graph(models, prefix: str, **options) -> dict:
    return g.sdxl_txt2img(models.unet, models.clip_l, models.clip_g, POSITIVE, NEGATIVE, steps=1, prefix=prefix,
                          **options)


def test_unet_gets_the_fused_2048_wide_context_and_the_stock_y(comfy_inprocess, sdxl_models, sdxl, sdxl_fusion,
                                                               sdxl_clip_reference):
    import comfy.model_base
    import comfy.supported_models

    # The stock graph: ComfyUI treats the model as SDXL, and its CLIP is transformers' CLIP-L + bigG.
    stock = comfy_inprocess.run(sdxl_graph(sdxl_models, "sdxl-stock"))
    model = comfy_inprocess.node_output(g.CKPT)[0].model
    assert type(model) is comfy.model_base.SDXL and type(model.model_config) is comfy.supported_models.SDXL
    stock_pooled = comfy_inprocess.node_output(g.POS)[0][0][1]["pooled_output"]
    (stock_call,) = stock.records("unet")
    assert stock_call["context_shape"] == [2, 77, 2048] and stock_call["y_shape"] == [2, 2816]
    stock_context, stock_y = rows_by_side(stock_call), rows_by_side(stock_call, "y")
    contexts, pooled = sdxl_clip_reference([POSITIVE, NEGATIVE])
    reference = {side: (contexts[i: i + 1], pooled[i: i + 1]) for i, (side, _) in enumerate(SIDES)}
    for side, _ in SIDES:
        torch.testing.assert_close(stock_context[side].float(), reference[side][0], **CLIP_TOL)
        torch.testing.assert_close(stock_y[side][:, :1280].float(), reference[side][1], **CLIP_TOL)

    # Apply LLM4GEN Conditioning on CLIP Text Encode, and CLIP+LLM Cross-Adapter on the SDXL CLIP.
    seen = {}
    for name, build in (("apply", lg.with_apply), ("cross-adapter", lg.with_cross_adapter)):
        result = comfy_inprocess.run(build(sdxl_graph(sdxl_models, f"sdxl-{name}"), sdxl.llm, sdxl.adapter))
        (call,) = result.records("unet")  # positive and negative, 333 tokens each, batched
        assert call["context_shape"] == [2, 333, 2048] and call["y_shape"] == [2, 2816]
        context, y = rows_by_side(call), rows_by_side(call, "y")
        for side, text in SIDES:
            assert torch.equal(context[side][:, :77], stock_context[side]), f"{name}: CLIP tokens changed"
            # Independent: transformers' CLIP-L + bigG -> load_llm's features -> load_cross_adapter.
            torch.testing.assert_close(context[side].float(), sdxl_fusion(reference[side][0], text), **CHAIN_TOL)
            # Exactly llm4gen_core's fusion of the CLIP tokens ComfyUI gave.
            assert_fused(context[side], context[side][:, :77], text, sdxl_fusion, f"{name} {side}")
            assert torch.equal(y[side], stock_y[side]), f"{name}: {side} y is not the stock graph's"
        (conditioning,) = comfy_inprocess.node_output(lg.FUSE_POS)
        options = conditioning[0][1]
        assert torch.equal(options["pooled_output"], stock_pooled) and options["pooled_output"].shape == (1, 1280)
        assert options["cross_attn_controlnet"].shape == (1, 77, 2048)
        seen[name] = call["context"]
    assert torch.equal(seen["apply"], seen["cross-adapter"])


def _fusing_nodes(comfy_inprocess, llm_name: str, adapter_name: str):
    node = comfy_inprocess.node_class
    llm = node("LLM4GENLoadLLM").execute(llm_name, "auto", "default")[0]
    embeds = node("LLM4GENLLMEncode").execute(llm, POSITIVE, 256)[0]
    adapter = node("LLM4GENLoadCrossAdapter").execute(adapter_name)[0]
    return node("LLM4GENApplyConditioning"), adapter, embeds


def test_widths_that_do_not_fit_are_one_clear_error(comfy_inprocess, sdxl_models, llm4gen_models, sdxl):
    """The error is ValueError here: ComfyUI imports the pack under another module name, so its
    LLM4GENError is not the class the tests import (it is a ValueError in both)."""
    # An SD1.5 adapter on SDXL's CLIP, in a graph: the fusing node fails with both widths named.
    prompt = lg.with_apply(sdxl_graph(sdxl_models, "sdxl-wrong-adapter"), llm4gen_models.llm, llm4gen_models.adapter)
    with pytest.raises(ComfyExecutionError) as err:
        comfy_inprocess.run(prompt)
    assert err.value.node_id in (lg.FUSE_POS, lg.FUSE_NEG)
    assert err.value.exception_message.strip() == (
        f"conditioning entry 0 has CLIP tokens 2048 wide (SDXL's CLIP-L 768 + OpenCLIP bigG 1280), but Cross-Adapter "
        f"{llm4gen_models.adapter} fuses CLIP tokens 768 wide (SD1.5's CLIP-L): use a Cross-Adapter made for SDXL "
        "(CLIP width 2048) with this conditioning, or this adapter with SD1.5's CLIP and UNet")

    apply, adapter, embeds = _fusing_nodes(comfy_inprocess, sdxl.llm, sdxl.adapter)
    # The SDXL refiner's conditioning (CLIP Text Encode (SDXL Refiner): bigG alone, 1280 wide).
    refiner = [[torch.zeros(1, 77, 1280), {"pooled_output": torch.zeros(1, 1280), "aesthetic_score": 6.0,
                                           "width": 1024, "height": 1024}]]
    with pytest.raises(ValueError, match=r"^conditioning entry 0 has CLIP tokens 1280 wide \(the SDXL refiner's "
                                         rf"OpenCLIP bigG alone\), but Cross-Adapter {sdxl.adapter} fuses CLIP tokens "
                                         r"2048 wide \(SDXL's CLIP-L 768 \+ OpenCLIP bigG 1280\): the refiner's "
                                         r"conditioning cannot be fused, LLM4GEN conditions the base model"):
        apply.execute(refiner, adapter, embeds, 1.0, "first 77 (release)", "clip")
    # An SDXL adapter on SD1.5's CLIP conditioning; the second entry is the one that does not fit.
    sd15 = [[torch.zeros(1, 77, 2048), {"pooled_output": torch.zeros(1, 1280)}],
            [torch.zeros(1, 77, 768), {"pooled_output": torch.zeros(1, 768)}]]
    with pytest.raises(ValueError, match=r"^conditioning entry 1 has CLIP tokens 768 wide \(SD1.5's CLIP-L\), but "
                                         rf"Cross-Adapter {sdxl.adapter} fuses CLIP tokens 2048 wide .*: use a "
                                         r"Cross-Adapter made for SD1.5 \(CLIP width 768\) with this conditioning, or "
                                         r"this adapter with SDXL's CLIP and UNet$"):
        apply.execute(sd15, adapter, embeds, 1.0, "first 77 (release)", "clip")
    assert apply.execute(sd15[:1], adapter, embeds, 1.0, "first 77 (release)", "clip")[0][0][0].shape == (1, 333, 2048)
