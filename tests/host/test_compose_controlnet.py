"""Stock ControlNetLoader + ControlNetApplyAdvanced before and after Apply LLM4GEN Conditioning,
in a real ComfyUI: what the ControlNet's cross-attention and the UNet each receive, for both
``controlnet_context`` settings (a random SD1.5 ControlNet built locally, tests/synthetic/sd15.py)."""
from __future__ import annotations

import pytest
import torch

from scripts import llm4gen_graphs as lg
from scripts import stock_graphs as g
from composition_matrix import AFTER, BEFORE, verified
from compose_support import CLIP_TOL, POSITIVE, assert_fused, latent_only, rows_by_side
from synthetic import sd15

pytestmark = pytest.mark.host

NEGATIVE = ""
CNET = "cnet_apply"
STEPS = 1  # what a step receives is the same at every step; one keeps the test cheap


@pytest.fixture(scope="module")
def controlnet_name(comfy_base):
    return comfy_base.place("controlnet", sd15.small_sd15_controlnet())


def controlnet_graph(checkpoint: str, models, controlnet: str, where: str, mode: str) -> dict:
    """txt2img with Apply LLM4GEN Conditioning on both sides and one ControlNetApplyAdvanced
    (grey hint) on both sides, ``where`` = before or after the Apply nodes."""
    prompt = lg.with_apply(g.txt2img(checkpoint, POSITIVE, NEGATIVE, steps=STEPS, prefix=f"cnet-{where}-{mode}"),
                           models.llm, models.adapter, controlnet_context=mode)
    prompt = latent_only(prompt)
    prompt["cnet_loader"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": controlnet}}
    prompt["hint"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                             "color": 0x808080}}
    prompt[CNET] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "control_net": ["cnet_loader", 0], "image": ["hint", 0], "strength": 1.0,
        "start_percent": 0.0, "end_percent": 1.0}}
    if where == "before":   # CLIPTextEncode -> ControlNet -> Apply -> KSampler
        prompt[CNET]["inputs"].update(positive=[g.POS, 0], negative=[g.NEG, 0])
        prompt[lg.FUSE_POS]["inputs"]["conditioning"] = [CNET, 0]
        prompt[lg.FUSE_NEG]["inputs"]["conditioning"] = [CNET, 1]
    else:                   # CLIPTextEncode -> Apply -> ControlNet -> KSampler
        prompt[CNET]["inputs"].update(positive=[lg.FUSE_POS, 0], negative=[lg.FUSE_NEG, 0])
        prompt[g.SAMPLER]["inputs"].update(positive=[CNET, 0], negative=[CNET, 1])
    return prompt


@pytest.mark.parametrize("where", ["before", "after"])
def test_controlnet_sees_clip_or_fused_tokens(where, request, comfy_inprocess, sd15_checkpoint, llm4gen_models,
                                              controlnet_name, fusion, clip_reference):
    clip_ref = dict(zip(("positive", "negative"), clip_reference([POSITIVE, NEGATIVE])))
    seen = {}
    for mode in ("clip", "fused"):
        prompt = controlnet_graph(sd15_checkpoint, llm4gen_models, controlnet_name, where, mode)
        result = comfy_inprocess.run(prompt)
        unet, cnet = result.records("unet"), result.records("controlnet")
        # Both sides carry the same keys and 333 tokens: one batched UNet call (and one
        # ControlNet call just before it) per step.
        assert len(unet) == len(cnet) == STEPS, (len(unet), len(cnet))
        for call, control in zip(unet, cnet):
            assert control["seq"] < call["seq"] and call["has_control"]
            assert call["batch_size"] == control["batch_size"] == 2
            assert call["context_shape"] == [2, 333, 768]
            unet_rows = rows_by_side(call)
            cnet_rows = rows_by_side({**control, "cond_or_uncond": call["cond_or_uncond"]})
            for side, text in (("positive", POSITIVE), ("negative", NEGATIVE)):
                context, control_context = unet_rows[side], cnet_rows[side]
                torch.testing.assert_close(context[0, :77].float(), clip_ref[side], **CLIP_TOL)
                assert_fused(context, context[:, :77], text, fusion, f"{where}/{mode}: UNet {side}")
                if mode == "clip":
                    # The ControlNet attends to the plain 77 CLIP tokens, the UNet to all 333.
                    assert call["controlnet_context_key"] == "crossattn_controlnet"
                    assert list(control_context.shape) == [1, 77, 768]
                    assert torch.equal(control_context, context[:, :77].to(control_context.dtype))
                else:
                    assert call["controlnet_context_key"] == "c_crossattn"
                    assert list(control_context.shape) == [1, 333, 768]
                    assert torch.equal(control_context, context.to(control_context.dtype))
        seen[mode] = (call["context_shape"][1], control["context_shape"][1])
        # The fused entries keep the ControlNet (applied before) or carry it on (applied after).
        fused = comfy_inprocess.node_output(CNET if where == "after" else lg.FUSE_POS)[0]
        assert fused[0][1]["control"] is not None and fused[0][1]["llm4gen"]["clip_tokens"] == 77
    assert seen == {"clip": (333, 77), "fused": (333, 333)}
    verified(request, "ControlNetLoader + ControlNetApplyAdvanced", BEFORE if where == "before" else AFTER,
             "controlnet_context `clip`: ControlNet cross-attention gets the 77 CLIP tokens, UNet the 333 fused; "
             "`fused`: both get the same 333; positive and negative batched in one call per step")
