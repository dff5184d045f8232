"""Stock nodes around the LLM4GEN nodes on SDXL, in a real ComfyUI, on the tiny SDXL-architecture
model ComfyUI detects as SDXL (tests/synthetic/sdxl.py): CLIP Text Encode (SDXL)'s size and crop
keys, a ControlNet before and after Apply, a LoRA on the UNet and both text encoders, and a latent
batch under ConditioningCombine / ConditioningSetArea before and after Apply.

SDXL adds ``y`` to what the UNet receives: bigG's pooled output and the size/crop embeddings of
the conditioning's dict. Apply passes the dict through, so ``y`` must be, row for row, the one
the same graph without LLM4GEN gives; the context must be the fused one."""
from __future__ import annotations

import logging
import math

import pytest
import torch

from scripts import llm4gen_graphs as lg
from scripts import stock_graphs as g
from composition_matrix import AFTER, BEFORE, CONTROLNET, MODEL, SAMPLING, SDXL, verified
from compose_support import POSITIVE, assert_fused, rows_by_side, write_lora
from synthetic import sdxl as sdxl_models_source

pytestmark = pytest.mark.host

NEGATIVE = ""
OTHER = "a blue glass sphere in tall grass"
SIDES = (("positive", POSITIVE), ("negative", NEGATIVE))
CLIP_TOL = dict(atol=1e-4, rtol=1e-4)  # ComfyUI's SDXL CLIP (fp32 in the tests' loader) against transformers'
# CLIP Text Encode (SDXL)'s keys, each unlike its default, and the order SDXL embeds them in y.
SIZES = dict(width=1024, height=768, crop_w=32, crop_h=16, target_width=896, target_height=640)
Y_ORDER = ("height", "width", "crop_h", "crop_w", "target_height", "target_width")


def sdxl_graph(models, prefix: str, positive: str = POSITIVE, **options) -> dict:
    return g.sdxl_txt2img(models.unet, models.clip_l, models.clip_g, positive, NEGATIVE, steps=1, prefix=prefix,
                          **options)


def fused_graph(models, sdxl, prefix: str, **fusion_options) -> dict:
    return lg.with_apply(sdxl_graph(models, prefix), sdxl.llm, sdxl.adapter, **fusion_options)


def size_embedding(values: dict) -> torch.Tensor:
    """SDXL's size/crop part of y, written out: each value's 256-d sinusoidal embedding (cosines,
    then sines, periods up to 10000), in SDXL's order."""
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
    parts = [torch.cat([torch.cos(values[k] * freqs), torch.sin(values[k] * freqs)]) for k in Y_ORDER]
    return torch.cat(parts)[None]


# --- CLIP Text Encode (SDXL) ------------------------------------------------------------------

def with_sdxl_encoders(prompt: dict) -> dict:
    """CLIPTextEncode (pos, neg) replaced by CLIPTextEncodeSDXL, the same text for CLIP-L and bigG."""
    for node in (g.POS, g.NEG):
        inputs = prompt[node]["inputs"]
        prompt[node] = {"class_type": "CLIPTextEncodeSDXL", "inputs": {
            "clip": inputs["clip"], "text_g": inputs["text"], "text_l": inputs["text"], **SIZES}}
    return prompt


def test_clip_text_encode_sdxl_keeps_its_sizes_in_y(request, comfy_inprocess, sdxl_models, sdxl, sdxl_fusion,
                                                    sdxl_clip_reference):
    """y is checked against an independent computation here (the stock graph's y for CLIP Text
    Encode is compared in test_sdxl_nodes.py, and row for row under areas below)."""
    result = comfy_inprocess.run(with_sdxl_encoders(fused_graph(sdxl_models, sdxl, "sdxl-encode-apply")))
    (call,) = result.records("unet")
    assert call["context_shape"] == [2, 333, 2048] and call["y_shape"] == [2, 2816]
    contexts, pooled = sdxl_clip_reference([POSITIVE, NEGATIVE])
    context, y = rows_by_side(call), rows_by_side(call, "y")
    for i, (side, text) in enumerate(SIDES):
        # y = bigG's pooled output (transformers) + the node's sizes (not SDXL's 768 defaults).
        torch.testing.assert_close(y[side][:, :1280], pooled[i: i + 1], **CLIP_TOL)
        torch.testing.assert_close(y[side][:, 1280:], size_embedding(SIZES), atol=1e-5, rtol=0)
        torch.testing.assert_close(context[side][:, :77], contexts[i: i + 1], **CLIP_TOL)
        assert_fused(context[side], context[side][:, :77], text, sdxl_fusion, f"CLIPTextEncodeSDXL {side}")
    encoded = comfy_inprocess.node_output(g.POS)[0]
    # Every key of CLIP Text Encode (SDXL)'s dict passes through as the same object.
    (fused,) = comfy_inprocess.node_output(lg.FUSE_POS)
    ((_, options),), ((_, new_options),) = encoded, fused
    assert set(options) >= set(SIZES) | {"pooled_output"}
    assert set(new_options) == set(options) | {"llm4gen", "cross_attn_controlnet"}
    assert all(new_options[k] is v for k, v in options.items())
    verified(request, "CLIPTextEncodeSDXL", BEFORE,
             "`pooled_output` and width/height/crop/target keys pass through as the same objects: the UNet's y is "
             "transformers' bigG pooled output + those sizes' sinusoidal embeddings; context [2, 333, 2048] is the "
             "fusion of transformers' CLIP-L + bigG", SDXL)


# --- ControlNet -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def controlnet_name(comfy_base):
    return comfy_base.place("controlnet", sdxl_models_source.tiny_sdxl_controlnet(), "sdxl-tiny-controlnet.safetensors")


def controlnet_graph(models, sdxl, controlnet: str, where: str, mode: str) -> dict:
    """Apply on both sides and one ControlNetApplyAdvanced (grey hint) on both sides, before or after it."""
    prompt = fused_graph(models, sdxl, f"sdxl-cnet-{where}-{mode}", controlnet_context=mode)
    prompt["cnet_loader"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": controlnet}}
    prompt["hint"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                             "color": 0x808080}}
    prompt["cnet"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "control_net": ["cnet_loader", 0], "image": ["hint", 0], "strength": 1.0,
        "start_percent": 0.0, "end_percent": 1.0}}
    if where == "before":
        prompt["cnet"]["inputs"].update(positive=[g.POS, 0], negative=[g.NEG, 0])
        prompt[lg.FUSE_POS]["inputs"]["conditioning"] = ["cnet", 0]
        prompt[lg.FUSE_NEG]["inputs"]["conditioning"] = ["cnet", 1]
    else:
        prompt["cnet"]["inputs"].update(positive=[lg.FUSE_POS, 0], negative=[lg.FUSE_NEG, 0])
        prompt[g.SAMPLER]["inputs"].update(positive=["cnet", 0], negative=["cnet", 1])
    return prompt


@pytest.mark.parametrize("where,modes", [("before", ("clip", "fused")), ("after", ("clip",))], ids=["before", "after"])
def test_sdxl_controlnet_sees_clip_or_fused_tokens(where, modes, request, comfy_inprocess, sdxl_models, sdxl,
                                                   controlnet_name, sdxl_fusion):
    """After Apply, `fused` is a stock ControlNet on stock-shaped conditioning; `clip` is the
    case that needs the fused entries to carry the CLIP tokens, so only it runs there."""
    seen = {}
    for mode in modes:
        result = comfy_inprocess.run(controlnet_graph(sdxl_models, sdxl, controlnet_name, where, mode))
        (call,), (control,) = result.records("unet"), result.records("controlnet")
        assert control["seq"] < call["seq"] and call["has_control"]
        assert call["batch_size"] == control["batch_size"] == 2 and call["context_shape"] == [2, 333, 2048]
        unet, cnet = rows_by_side(call), rows_by_side({**control, "cond_or_uncond": call["cond_or_uncond"]})
        # The SDXL ControlNet gets the UNet's y (pooled output + sizes), as stock.
        assert control["y_shape"] == [2, 2816] and torch.equal(control["y"], call["y"])
        for side, text in SIDES:
            assert_fused(unet[side], unet[side][:, :77], text, sdxl_fusion, f"{where}/{mode}: UNet {side}")
            if mode == "clip":
                assert call["controlnet_context_key"] == "crossattn_controlnet"
                assert list(cnet[side].shape) == [1, 77, 2048]
                assert torch.equal(cnet[side], unet[side][:, :77].to(cnet[side].dtype))
            else:
                assert call["controlnet_context_key"] == "c_crossattn"
                assert torch.equal(cnet[side], unet[side].to(cnet[side].dtype))
        seen[mode] = (call["context_shape"][1], control["context_shape"][1])
    assert seen == {m: {"clip": (333, 77), "fused": (333, 333)}[m] for m in modes}
    fused_mode = "; `fused`: both get the same 333" if "fused" in modes else ""
    verified(request, CONTROLNET, BEFORE if where == "before" else AFTER,
             "an SDXL ControlNet: `clip`: its cross-attention gets the 77 CLIP tokens (2048 wide), the UNet the 333 "
             f"fused{fused_mode}; the ControlNet's y is the UNet's", SDXL)


# --- LoRA -------------------------------------------------------------------------------------
# Attention queries/keys of the first two layers of both text encoders (kohya's SDXL names:
# te1 = CLIP-L, te2 = bigG), and cross-attention keys/values of the UNet (ComfyUI's layout names).

CLIP_LORA = {f"lora_te{n}_text_model_encoder_layers_{layer}_self_attn_{proj}_proj": (width, width)
             for n, width in ((1, 768), (2, 1280)) for layer in (0, 1) for proj in ("q", "k")}
UNET_LORA = {f"lora_unet_input_blocks_{block}_1_transformer_blocks_{i}_attn2_to_{proj}": (320, 2048)
             for block, i in ((4, 0), (8, 9)) for proj in ("k", "v")}


def comfy_clip_key(lora_key: str) -> str:
    encoder, rest = lora_key.removeprefix("lora_te").split("_text_model_encoder_layers_")
    layer, proj = rest.split("_self_attn_")
    return f"clip_{'l' if encoder == '1' else 'g'}.transformer.text_model.encoder.layers.{layer}.self_attn.{proj}.weight"


def comfy_unet_key(lora_key: str) -> str:
    block, rest = lora_key.removeprefix("lora_unet_input_blocks_").split("_1_transformer_blocks_")
    i, proj = rest.split("_attn2_to_")
    return f"diffusion_model.input_blocks.{block}.1.transformer_blocks.{i}.attn2.to_{proj}.weight"


def reference_with_lora(reference, deltas: dict, texts: list[str]):
    """transformers' SDXL text encoders with W + alpha/rank * up @ down on the LoRA's layers."""
    originals = []
    try:
        for name, delta in deltas.items():
            if name in CLIP_LORA:
                part, suffix = comfy_clip_key(name).split(".transformer.text_model.")
                params = dict(reference.models[part].named_parameters())
                (key,) = [k for k in params if k.endswith(suffix)]
                originals.append((params[key], params[key].detach().clone()))
                with torch.no_grad():
                    params[key] += delta
        return reference(texts)
    finally:
        with torch.no_grad():
            for param, value in originals:
                param.copy_(value)


def test_sdxl_lora_patches_unet_and_both_text_encoders(request, comfy_inprocess, comfy_base, sdxl_models, sdxl,
                                                       sdxl_fusion, sdxl_clip_reference, tmp_path, caplog):
    path = tmp_path / "llm4gen-sdxl-lora.safetensors"
    deltas = write_lora(path, {**CLIP_LORA, **UNET_LORA}, scale=0.2, seed=7)
    prompt = fused_graph(sdxl_models, sdxl, "sdxl-lora")
    prompt["lora"] = {"class_type": "LoraLoader", "inputs": {
        "model": [g.CKPT, 0], "clip": [g.CLIP, 0], "lora_name": comfy_base.place("loras", path),
        "strength_model": 1.0, "strength_clip": 1.0}}
    prompt[g.RECORD]["inputs"]["model"] = ["lora", 0]
    for node in (g.POS, g.NEG):
        prompt[node]["inputs"]["clip"] = ["lora", 1]
    with caplog.at_level(logging.WARNING):
        result = comfy_inprocess.run(prompt)
    assert "lora key not loaded" not in caplog.text, "ComfyUI did not map some of the LoRA's keys"
    model, clip = comfy_inprocess.node_output("lora")
    assert set(model.patches) == {comfy_unet_key(k) for k in UNET_LORA}
    assert set(clip.patcher.patches) == {comfy_clip_key(k) for k in CLIP_LORA}

    (call,) = result.records("unet")
    context, y = rows_by_side(call), rows_by_side(call, "y")
    plain_contexts, _ = sdxl_clip_reference([POSITIVE, NEGATIVE])
    contexts, pooled = reference_with_lora(sdxl_clip_reference, deltas, [POSITIVE, NEGATIVE])
    for i, (side, text) in enumerate(SIDES):
        # The CLIP part and the pooled output in y are the LoRA'd text encoders' (transformers with
        # the LoRA's deltas), which differ from the plain ones on every token but the start token.
        torch.testing.assert_close(context[side][:, :77], contexts[i: i + 1], **CLIP_TOL)
        torch.testing.assert_close(y[side][:, :1280], pooled[i: i + 1], **CLIP_TOL)
        change = (contexts[i, 1:] - plain_contexts[i, 1:]).abs().amax(dim=-1)
        assert (change > 100 * CLIP_TOL["atol"]).all(), change.min()
        assert_fused(context[side], context[side][:, :77], text, sdxl_fusion, f"LoRA {side}")
    verified(request, "LoraLoader", MODEL,
             "every LoRA key mapped (UNet, CLIP-L `te1`, bigG `te2`); CLIP part and y's pooled output = transformers "
             "CLIP-L + bigG with the LoRA's deltas; LLM tokens = fusion of the LoRA'd CLIP tokens", SDXL)


# --- latent batch, Combine and SetArea ---------------------------------------------------------

WIDTH, HEIGHT, BATCH = 128, 64, 2


def area_graph(models, sdxl, placement: str | None) -> dict:
    """Latent batch 2; positive = Combine(prompt, SetArea(other prompt, right half)), negative "".
    ``placement``: None (no LLM4GEN), "before" (Apply on the combined conditioning) or "after"
    (Apply on each prompt, then Combine and SetArea)."""
    prompt = sdxl_graph(models, f"sdxl-area-{placement}", width=WIDTH, height=HEIGHT, batch=BATCH)
    if placement is not None:
        prompt = lg.with_apply(prompt, sdxl.llm, sdxl.adapter)
    prompt["other"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": [g.CLIP, 0], "text": OTHER}}
    main, other = [g.POS, 0], ["other", 0]
    if placement == "after":
        prompt["fuse_other"] = {"class_type": "LLM4GENApplyConditioning",
                                "inputs": {**prompt[lg.FUSE_POS]["inputs"], "conditioning": other}}
        main, other = [lg.FUSE_POS, 0], ["fuse_other", 0]
    prompt["area"] = {"class_type": "ConditioningSetArea", "inputs": {
        "conditioning": other, "width": WIDTH // 2, "height": HEIGHT, "x": WIDTH // 2, "y": 0, "strength": 0.8}}
    prompt["combine"] = {"class_type": "ConditioningCombine",
                         "inputs": {"conditioning_1": main, "conditioning_2": ["area", 0]}}
    if placement == "before":
        prompt[lg.FUSE_POS]["inputs"]["conditioning"] = ["combine", 0]
    else:
        prompt[g.SAMPLER]["inputs"]["positive"] = ["combine", 0]
    return prompt


def test_sdxl_latent_batch_with_combine_and_area_before_and_after_apply(request, comfy_inprocess, sdxl_models,
                                                                        sdxl, sdxl_fusion):
    """Each UNet call of the LLM4GEN graphs is the stock graph's call, row for row: the same latent
    crop, sigma, sides and y; the context is the fusion of the stock call's CLIP tokens (every
    positive entry fused with the positive LLM prompt, as the graphs wire it)."""
    stock = comfy_inprocess.run(area_graph(sdxl_models, sdxl, None)).records("unet")
    # The whole latent (prompt + negative) and the right half (other prompt + negative there).
    assert sorted(tuple(c["x_shape"]) for c in stock) == [(2 * BATCH, 4, 8, 8), (2 * BATCH, 4, 8, 16)]
    fused_cache = {}

    def expected(clip: torch.Tensor, text: str) -> torch.Tensor:
        key = (text, clip.numpy().tobytes())
        if key not in fused_cache:
            fused_cache[key] = sdxl_fusion(clip, text)
        return fused_cache[key]

    for placement in ("before", "after"):
        calls = comfy_inprocess.run(area_graph(sdxl_models, sdxl, placement)).records("unet")
        assert len(calls) == len(stock)
        for call, plain in zip(calls, stock):
            for key in ("x_shape", "sigmas", "cond_or_uncond", "batch_size"):
                assert call[key] == plain[key], (placement, key)
            assert torch.equal(call["y"], plain["y"]), f"{placement}: y is not the stock graph's"
            per_side = call["batch_size"] // len(call["cond_or_uncond"])
            assert call["context_shape"] == [call["batch_size"], 333, 2048]
            for row in range(call["batch_size"]):
                text = POSITIVE if call["cond_or_uncond"][row // per_side] == 0 else NEGATIVE
                clip = plain["context"][row: row + 1]
                assert torch.equal(call["context"][row: row + 1, :77], clip)
                error = (call["context"][row: row + 1] - expected(clip, text)).abs().max().item()
                assert error < 1e-4, (placement, row, error)
        # The latent batch repeats each side's prompt (batch 1) and y over the 2 latents.
        for call in calls:
            for side in range(len(call["cond_or_uncond"])):
                rows = slice(side * BATCH, (side + 1) * BATCH)
                assert (call["context"][rows] == call["context"][rows][:1]).all()
                assert (call["y"][rows] == call["y"][rows][:1]).all()
    for node in ("ConditioningCombine", "ConditioningSetArea"):
        for where in (BEFORE, AFTER):
            verified(request, node, where,
                     "every UNet call is the stock graph's, row for row (latent area, sigma, sides, y unchanged); "
                     "its context is the fusion of the stock call's CLIP tokens", SDXL)
    verified(request, "EmptyLatentImage batch 2 + KSampler", SAMPLING,
             "prompts of batch 1 repeated over 2 latents, context and y; positive and negative batched per area, "
             "as in the stock graph", SDXL)
