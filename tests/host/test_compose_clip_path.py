"""What reaches LLM4GEN conditioning through ComfyUI's CLIP path, in a real ComfyUI: a stock
LoraLoader patching UNet and CLIP, prompt weights ``(word:1.3)``, textual-inversion embeddings
(``embedding:name``), and CLIP prompts longer than 77 tokens / LLM prompts longer than 256.

References are computed outside ComfyUI: CLIP features with transformers (patched by the LoRA's
own deltas, or given the embedding's vectors), fusion with the tests' copy of llm4gen_core."""
from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from scripts import llm4gen_graphs as lg
from scripts import stock_graphs as g
from composition_matrix import MODEL, TEXT, verified
from compose_support import (CLIP_TOL, POSITIVE, assert_fused, clip_reference_with_vectors, latent_only,
                             rows_by_side, saved_latent, write_lora)
from synthetic import sd15

pytestmark = pytest.mark.host

STEPS = 1
NEGATIVE = ""


def apply_graph(checkpoint: str, models, positive: str, negative: str, prefix: str, **fusion_options) -> dict:
    return latent_only(lg.with_apply(g.txt2img(checkpoint, positive, negative, steps=STEPS, prefix=prefix),
                                     models.llm, models.adapter, **fusion_options))


def single_call(result) -> dict:
    (call,) = result.records("unet")  # one step, positive and negative batched (333 / 333)
    assert call["batch_size"] == 2 and call["context_shape"] == [2, 333, 768]
    return call


# --- prompt weights and textual inversion ----------------------------------------------------

WEIGHTED = "a photo of (red:1.3) embedding:llm4gen_cube on a table"     # "cube" as an embedding
WITH_RANDOM = "a photo of red cube on a table embedding:llm4gen_random"  # two random vectors


@pytest.fixture(scope="module")
def embeddings(comfy_base, tmp_path_factory, clip_reference):
    """Two embeddings in the formats ComfyUI's sd1_clip reads: a safetensors ``emb_params`` holding
    the checkpoint's own token vector of "cube", and an A1111 ``.pt`` (``string_to_param``) of
    two random vectors."""
    folder = tmp_path_factory.mktemp("embeddings")
    token_table = load_file(str(sd15.small_sd15_checkpoint()))[
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"]
    (cube_id,) = clip_reference.tokenizer("cube", add_special_tokens=False).input_ids
    cube = token_table[cube_id: cube_id + 1].clone()
    save_file({"emb_params": cube}, str(folder / "llm4gen_cube.safetensors"))
    random = (0.02 * torch.randn(2, 768, generator=torch.Generator().manual_seed(8))).half()
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": random}, "name": "llm4gen_random",
                "step": 100}, folder / "llm4gen_random.pt")
    for name in ("llm4gen_cube.safetensors", "llm4gen_random.pt"):
        comfy_base.place("embeddings", folder / name)
    return {"cube": cube[0], "random": random}


def test_prompt_weights_and_embeddings_reach_the_fusion(request, comfy_inprocess, sd15_checkpoint, llm4gen_models,
                                                        embeddings, fusion, clip_reference):
    """Positive: CLIPTextEncode -> Apply; negative: the CLIP+LLM Cross-Adapter node. Both LLM
    prompts are the plain text, so every difference comes through CLIP."""
    prompt = apply_graph(sd15_checkpoint, llm4gen_models, WEIGHTED, NEGATIVE, "weights")
    prompt[lg.FUSE_NEG] = {"class_type": "LLM4GENCLIPLLMCrossAdapter", "inputs": {
        **prompt[lg.FUSE_NEG]["inputs"], "clip": [g.CKPT, 1], "text": WITH_RANDOM}}
    del prompt[lg.FUSE_NEG]["inputs"]["conditioning"], prompt[g.NEG]
    for node in (lg.ENC_POS, lg.ENC_NEG):
        prompt[node]["inputs"]["text"] = POSITIVE
    rows = rows_by_side(single_call(comfy_inprocess.run(prompt)))

    ids = clip_reference.token_ids([POSITIVE])
    plain, empty = clip_reference([POSITIVE, ""])
    (red,) = (ids[0] == clip_reference.tokenizer("red", add_special_tokens=False).input_ids[0]).nonzero()[0]
    # (red:1.3): ComfyUI scales that token's distance from the empty prompt's; every other
    # token is the plain prompt's, since the cube embedding is the checkpoint's own "cube" vector.
    expected = plain.clone()
    expected[red] = (plain[red] - empty[red]) * 1.3 + empty[red]
    positive = rows["positive"]
    torch.testing.assert_close(positive[0, :77].float(), expected, **CLIP_TOL)
    assert (positive[0, red] - plain[red].to(positive.dtype)).abs().max() > 10 * CLIP_TOL["atol"]
    assert_fused(positive, positive[:, :77], POSITIVE, fusion, "weighted positive")

    # embedding:llm4gen_random: its two vectors stand in the input where the word was.
    end = int((ids[0] == clip_reference.tokenizer.eos_token_id).nonzero()[0])
    with_slots = torch.cat([ids[:, :end], ids[:, end - 1: end].repeat(1, 2), ids[:, end:-2]], dim=1)
    expected = clip_reference_with_vectors(clip_reference, with_slots, {end: embeddings["random"][0],
                                                                         end + 1: embeddings["random"][1]})[0]
    negative = rows["negative"]
    torch.testing.assert_close(negative[0, :77].float(), expected, **CLIP_TOL)
    assert (negative[0, end:end + 2].float() - plain[end:end + 2]).abs().max() > 10 * CLIP_TOL["atol"]
    assert_fused(negative, negative[:, :77], POSITIVE, fusion, "negative with an embedding")
    # Same LLM text on both sides: the fused LLM tokens differ only through the CLIP path.
    assert (positive[0, 77:] - negative[0, 77:]).abs().max() > 10 * CLIP_TOL["atol"]
    verified(request, "CLIPTextEncode: prompt weights `(word:1.3)`", TEXT,
             "the weighted token's CLIP features are ComfyUI's (z - z_empty) * w + z_empty, the rest unchanged; "
             "the LLM tokens are the fusion of those")
    verified(request, "CLIPTextEncode: textual inversion `embedding:name`", TEXT,
             "safetensors `emb_params` and A1111 `.pt` embeddings, through CLIP Text Encode + Apply and through "
             "CLIP+LLM Cross-Adapter: CLIP features = transformers CLIP given the embedding's vectors there; "
             "the LLM tokens are the fusion of those")


# --- long prompts ----------------------------------------------------------------------------

LONG = " ".join(
    f"the {n}th lantern of the harbour glows {c} above a narrow stone stair, beside a sleeping cat,"
    for n, c in zip(range(1, 15), ["amber", "green", "blue", "violet", "white", "gold", "red"] * 2))


def test_long_prompts_warn_and_clip_tokens_chooses(request, comfy_inprocess, sd15_checkpoint, llm4gen_models,
                                                   fusion, caplog):
    assert fusion.llm.encode([LONG]).truncated[0], "the LLM prompt must be longer than 256 tokens"
    seen = {}
    for clip_tokens in ("first 77 (release)", "all chunks"):
        caplog.clear()
        prompt = apply_graph(sd15_checkpoint, llm4gen_models, LONG, NEGATIVE, "long", clip_tokens=clip_tokens)
        with caplog.at_level(logging.WARNING, logger="LLM4GEN"):
            result = comfy_inprocess.run(prompt)
        (clip_conditioning,) = comfy_inprocess.node_output(g.POS)
        clip = clip_conditioning[0][0]
        chunks = clip.shape[1] // 77
        assert clip.shape[1] == 77 * chunks and chunks >= 3, clip.shape  # ComfyUI's 77-token chunks
        messages = [r.getMessage() for r in caplog.records if r.name == "LLM4GEN"]
        if not seen:  # LLM Encode ran (the second prompt reuses its cached output, silently)
            assert any("only the first 256 are used" in m for m in messages), messages
        calls = result.records("unet")
        if clip_tokens == "first 77 (release)":
            assert any(f"has {clip.shape[1]} CLIP tokens" in m and "first 77" in m for m in messages), messages
            (call,) = calls  # 333 and 333: positive and negative still batch together
            positive = rows_by_side(call)["positive"]
            assert torch.equal(positive[:, :77], clip[:, :77].to(positive.dtype))
        else:
            assert any(f"fusing {clip.shape[1]} CLIP tokens" in m for m in messages), messages
            # 77k + 256 against 333 tokens: ComfyUI cannot batch them, one call per side.
            assert sorted(c["cond_or_uncond"][0] for c in calls) == [0, 1] and len(calls) == 2
            (call,) = [c for c in calls if c["cond_or_uncond"] == [0]]
            positive = call["context"]
            assert torch.equal(positive[:, :clip.shape[1]], clip.to(positive.dtype))
        assert_fused(positive, positive[:, :-256], LONG, fusion, f"{clip_tokens}: long positive")
        seen[clip_tokens] = positive.shape[1]
        assert torch.isfinite(saved_latent(result)).all()
    assert seen["first 77 (release)"] == 333 and seen["all chunks"] == 77 * chunks + 256
    verified(request, "CLIPTextEncode: prompts over 77 CLIP tokens", TEXT,
             f"a {77 * chunks}-token CLIP prompt and a >256-token LLM prompt: warnings logged; `clip_tokens` "
             f"first 77 gives 333 tokens (batched), all chunks {77 * chunks + 256} (one UNet call per side)")


# --- LoRA ------------------------------------------------------------------------------------
# (Last in the module: its last prompt holds the plain CLIP encodes of POSITIVE and "", which the
# next composition module's first prompt then takes from ComfyUI's cache.)

# A known subset: attention queries/keys of two CLIP layers (they re-weight attention, so the
# start token, which attends only to itself, must come out unchanged), and the UNet's
# cross-attention keys/values, which read the fused context. Kohya/diffusers-style SD1.5 names.
CLIP_LORA = {f"lora_te_text_model_encoder_layers_{layer}_self_attn_{proj}_proj": (768, 768)
             for layer in (3, 11) for proj in ("q", "k")}
UNET_LORA = {f"lora_unet_{block}_transformer_blocks_0_attn2_to_{proj}": (320, 768)
             for block in ("down_blocks_0_attentions_0", "mid_block_attentions_0") for proj in ("k", "v")}


def comfy_clip_key(lora_key: str) -> str:
    layer, proj = lora_key.removeprefix("lora_te_text_model_encoder_layers_").split("_self_attn_")
    return f"clip_l.transformer.text_model.encoder.layers.{layer}.self_attn.{proj}.weight"


def comfy_unet_key(lora_key: str) -> str:
    block, proj = lora_key.removeprefix("lora_unet_").split("_transformer_blocks_0_attn2_to_")
    ldm = {"down_blocks_0_attentions_0": "input_blocks.1.1", "mid_block_attentions_0": "middle_block.1"}[block]
    return f"diffusion_model.{ldm}.transformer_blocks.0.attn2.to_{proj}.weight"


@pytest.fixture(scope="module")
def lora(comfy_base, tmp_path_factory):
    path = tmp_path_factory.mktemp("lora") / "llm4gen-test-lora.safetensors"
    deltas = write_lora(path, {**CLIP_LORA, **UNET_LORA}, scale=0.2, seed=5)
    return comfy_base.place("loras", path), deltas


def lora_clip_reference(clip_reference, deltas: dict, texts: list[str]) -> torch.Tensor:
    """transformers' CLIP with W + alpha/rank * up @ down on the LoRA's layers."""
    params = dict(clip_reference.model.named_parameters())
    originals = {}
    try:
        for name, delta in deltas.items():
            if name in CLIP_LORA:
                suffix = comfy_clip_key(name).removeprefix("clip_l.transformer.text_model.")
                (key,) = [k for k in params if k.endswith(suffix)]
                originals[key] = params[key].detach().clone()
                with torch.no_grad():
                    params[key] += delta
        return clip_reference(texts)
    finally:
        with torch.no_grad():
            for key, value in originals.items():
                params[key].copy_(value)


def with_lora(prompt: dict, lora_name: str, strength_model: float, strength_clip: float) -> dict:
    """CheckpointLoaderSimple -> LoraLoader -> (recorder -> KSampler, CLIPTextEncode)."""
    prompt["lora"] = {"class_type": "LoraLoader", "inputs": {
        "model": [g.CKPT, 0], "clip": [g.CKPT, 1], "lora_name": lora_name,
        "strength_model": strength_model, "strength_clip": strength_clip}}
    prompt[g.RECORD]["inputs"]["model"] = ["lora", 0]
    for node in (g.POS, g.NEG):
        prompt[node]["inputs"]["clip"] = ["lora", 1]
    return prompt


def test_lora_patches_unet_and_clip_and_the_fusion_follows(request, comfy_inprocess, sd15_checkpoint, llm4gen_models,
                                                           lora, fusion, clip_reference, caplog):
    lora_name, deltas = lora
    graph = lambda prefix: apply_graph(sd15_checkpoint, llm4gen_models, POSITIVE, NEGATIVE, prefix)
    with caplog.at_level(logging.WARNING):
        both = comfy_inprocess.run(with_lora(graph("lora-both"), lora_name, 1.0, 1.0))
    assert "lora key not loaded" not in caplog.text, "ComfyUI did not map some of the LoRA's keys"
    # ComfyUI mapped every key of the file onto the layers it names, UNet and CLIP.
    model, clip = comfy_inprocess.node_output("lora")
    assert set(model.patches) == {comfy_unet_key(k) for k in UNET_LORA}
    assert set(clip.patcher.patches) == {comfy_clip_key(k) for k in CLIP_LORA}
    plain = comfy_inprocess.run(graph("lora-none"))
    # LoraLoaderModelOnly: the UNet patched, CLIP not (its encodes are the plain run's, cached).
    unet_only = graph("lora-unet")
    unet_only["lora"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
        "model": [g.CKPT, 0], "lora_name": lora_name, "strength_model": 1.0}}
    unet_only[g.RECORD]["inputs"]["model"] = ["lora", 0]
    unet_only = comfy_inprocess.run(unet_only)

    plain_rows, lora_rows = rows_by_side(single_call(plain)), rows_by_side(single_call(both))
    reference = dict(zip(("positive", "negative"), lora_clip_reference(clip_reference, deltas, [POSITIVE, NEGATIVE])))
    for side, text in (("positive", POSITIVE), ("negative", NEGATIVE)):
        before, after = plain_rows[side], lora_rows[side]
        # The CLIP part is the LoRA'd CLIP's output (transformers with the LoRA's deltas) ...
        torch.testing.assert_close(after[0, :77].float(), reference[side], **CLIP_TOL)
        # ... changed exactly where q/k LoRAs can act: every token but the start token, which
        # attends only to itself.
        assert torch.equal(after[0, 0], before[0, 0])
        change = (after[0, 1:77] - before[0, 1:77]).abs().amax(dim=-1)
        assert (change > 2 * CLIP_TOL["atol"]).all(), change.min()  # well beyond fp16 noise
        # The LLM tokens change exactly as llm4gen_core's fusion of the LoRA'd CLIP tokens says.
        assert_fused(after, after[:, :77], text, fusion, f"LoRA {side}")
        assert (after[0, 77:] - before[0, 77:]).abs().max() > 10 * CLIP_TOL["atol"]

    # UNet only: the very same contexts reach the UNet, yet the result differs: the recorded
    # calls ran the LoRA-patched UNet.
    for a, b in zip(plain.records("unet"), unet_only.records("unet")):
        assert torch.equal(a["context"], b["context"])
    assert not torch.equal(saved_latent(plain), saved_latent(unet_only))
    assert torch.isfinite(saved_latent(both)).all()
    verified(request, "LoraLoader", MODEL,
             "CLIP part = transformers CLIP with the LoRA's deltas, changed at exactly the tokens its q/k layers "
             "reach; LLM tokens = fusion of the LoRA'd CLIP tokens; every LoRA key mapped, UNet and CLIP")
    verified(request, "LoraLoaderModelOnly", MODEL,
             "the same fused contexts reach the patched UNet, and its sample differs from the unpatched one")
