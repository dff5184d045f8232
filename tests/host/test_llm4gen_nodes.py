"""The LLM4GEN nodes in a real ComfyUI: registration, graphs with the stock KSampler, what the
UNet receives, the diffusers-format UNet, and bad input that must not take the server down.

What the UNet receives is checked against values the tests compute without llm4gen_core
(``synthetic.release_reference``): CLIP features from transformers' CLIPTextModel, LLM features
from transformers' T5EncoderModel on ids tokenized by the ``tokenizers`` library and cut/padded by
the release's rule, fused by the CAM's equations in float64 (docs/reference.md)."""
from __future__ import annotations

import logging

import pytest
import torch

from scripts import llm4gen_graphs as lg
from scripts import stock_graphs as g
from comfy_harness import ComfyExecutionError
from llm4gen_core import load_cross_adapter

NODES = {
    "LLM4GENLoadLLM": ("Load LLM (LLM4GEN)", "loaders/llm4gen", ["LLM4GEN_LLM"]),
    "LLM4GENLoadCrossAdapter": ("Load LLM4GEN Cross-Adapter", "loaders/llm4gen", ["LLM4GEN_ADAPTER"]),
    "LLM4GENLLMEncode": ("LLM Encode", "conditioning/llm4gen", ["LLM4GEN_EMBEDS"]),
    "LLM4GENCLIPLLMCrossAdapter": ("CLIP+LLM Cross-Adapter", "conditioning/llm4gen", ["CONDITIONING"]),
    "LLM4GENApplyConditioning": ("Apply LLM4GEN Conditioning", "conditioning/llm4gen", ["CONDITIONING"]),
}
POSITIVE = "Ground view of the Great Pyramids and Sphinx on the moon's surface, an astronaut in the foreground"


FUSION_TOL = 1e-5  # the nodes' fp32 against the float64 reference (docs/reference.md: below 1e-5)


class ReleaseReference:
    """The release's text path for the tests' tiny models, computed without llm4gen_core."""

    def __init__(self, models):
        from safetensors.torch import load_file

        from synthetic import release_reference as rr

        self.rr = rr
        self.t5 = rr.rankgen_t5_encoder(models.llm_path)
        self.tokenize = rr.comfy_t5_ids(models.t5_tokenizer)
        self.cam_state = load_file(str(models.adapter_path))

    def llm_features(self, text: str, max_tokens: int = 256) -> torch.Tensor:
        ids, mask = self.rr.release_ids(self.tokenize, [text], max_tokens)
        return self.rr.llm_features(self.t5, ids, mask)

    def __call__(self, clip_tokens: torch.Tensor, text: str, strength: float = 1.0, max_tokens: int = 256,
                 cam_state: dict | None = None) -> torch.Tensor:
        """The fused context (float64) of ``clip_tokens`` (what ComfyUI's CLIP gave) with ``text``."""
        return self.rr.cam_fusion(cam_state or self.cam_state, clip_tokens, self.llm_features(text, max_tokens),
                                  heads=8, strength=strength)


@pytest.fixture(scope="session")
def release(llm4gen_models) -> ReleaseReference:
    return ReleaseReference(llm4gen_models)


def test_the_independent_reference_tokenizes_as_the_release():
    """The reference's own tokenizer side: "pre " + text, </s>, cut to 256 (a longer prompt loses
    its </s>) or padded with 0 to 256; "" is the pieces ▁pre, </s>."""
    from synthetic.comfy_env import comfyui_root
    from synthetic.release_reference import comfy_t5_ids, release_ids

    tokenize = comfy_t5_ids(comfyui_root() / "comfy" / "text_encoders" / "t5_tokenizer")
    ids, mask = release_ids(tokenize, ["", "a cat", "cat " * 300])
    assert ids.shape == mask.shape == (3, 256)
    assert ids[0, :3].tolist() == [554, 1, 0] and mask[0].sum() == 2   # ▁pre </s> <pad>
    assert ids[1, :6].tolist() == [554, 3, 9, 1712, 1, 0] and mask[1].sum() == 5
    assert mask[2].all() and 1 not in ids[2].tolist()
    assert not ids[0, 2:].any() and not ids[1, 5:].any()


def rows_by_side(record: dict) -> dict[str, torch.Tensor]:
    """Split a batched UNet call's context into its positive and negative rows."""
    side = {0: "positive", 1: "negative"}
    return {side[c]: record["context"][i: i + 1] for i, c in enumerate(record["cond_or_uncond"])}


def assert_release_context(result, release, clip_reference, positive: str, negative: str, steps: int = 2):
    calls = result.records("unet")
    assert len(calls) == steps, "positive and negative (both 333 tokens) are batched into one UNet call per step"
    for call in calls:
        assert call["context_shape"] == [2, 333, 768]
        rows = rows_by_side(call)
        for name, text in (("positive", positive), ("negative", negative)):
            context = rows[name]
            clip_part = context[:, :77]
            # the first 77 tokens are CLIP's own (ComfyUI runs CLIP in fp16 on CPU: loose tolerance)
            assert torch.allclose(clip_part.float(), clip_reference([text]), atol=3e-2, rtol=3e-2)
            error = (context.double() - release(clip_part, text)).abs().max().item()
            assert error < FUSION_TOL, f"{name} differs from the release's equations by {error}"


def test_object_info_lists_the_nodes_with_tooltips(comfy_server, llm4gen_models):
    info = comfy_server.object_info()
    for node_id, (display, category, outputs) in NODES.items():
        assert node_id in info, f"{node_id} not registered"
        node = info[node_id]
        assert node["display_name"] == display
        assert node["category"] == category
        assert node["output"] == outputs
        assert node["python_module"].startswith("custom_nodes.")
        inputs = {**node["input"].get("required", {}), **node["input"].get("optional", {})}
        assert inputs, node_id
        for name, spec in inputs.items():
            assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert llm4gen_models.llm in info["LLM4GENLoadLLM"]["input"]["required"]["model"][1]["options"]
    assert llm4gen_models.adapter in info["LLM4GENLoadCrossAdapter"]["input"]["required"]["adapter_name"][1]["options"]
    fusing = info["LLM4GENApplyConditioning"]["input"]["required"]
    assert fusing["strength"][1]["default"] == 1.0
    assert fusing["controlnet_context"][1]["options"] == ["clip", "fused"]


def test_help_pages_are_served(comfy_server):
    pack = comfy_server.object_info("LLM4GENApplyConditioning")["python_module"].split(".", 1)[1]
    for node_id in NODES:
        status, body = comfy_server.request("GET", f"/extensions/{pack}/docs/{node_id}.md", timeout=30)
        assert status == 200, node_id
        text = body if isinstance(body, str) else body.decode()
        assert text.startswith("# " + NODES[node_id][0])


def test_apply_conditioning_reaches_the_unet_as_the_release_fuses(comfy_host, sd15_checkpoint, llm4gen_models,
                                                                  release, clip_reference):
    prompt = lg.with_apply(g.txt2img(sd15_checkpoint, POSITIVE, "", prefix="apply"),
                           llm4gen_models.llm, llm4gen_models.adapter)
    result = comfy_host.run(prompt)
    assert len(result.images()) == 1 and result.images()[0].stat().st_size > 0
    assert_release_context(result, release, clip_reference, POSITIVE, "")


def test_clip_llm_cross_adapter_gives_the_same_context(comfy_inprocess, sd15_checkpoint, llm4gen_models,
                                                       release, clip_reference):
    base = g.txt2img(sd15_checkpoint, POSITIVE, "", prefix="cross")
    via_node = comfy_inprocess.run(lg.with_cross_adapter(base, llm4gen_models.llm, llm4gen_models.adapter))
    assert_release_context(via_node, release, clip_reference, POSITIVE, "")
    via_apply = comfy_inprocess.run(lg.with_apply(base, llm4gen_models.llm, llm4gen_models.adapter))
    for a, b in zip(via_node.records("unet"), via_apply.records("unet")):
        assert torch.equal(a["context"], b["context"])
    conditioning = comfy_inprocess.node_output(lg.FUSE_POS)[0]
    assert set(conditioning[0][1]) >= {"pooled_output", "cross_attn_controlnet"}
    assert conditioning[0][1]["pooled_output"].shape == (1, 768)


def test_strength_scales_the_llm_tokens(comfy_inprocess, sd15_checkpoint, llm4gen_models, release):
    for strength in (0.0, 0.5):
        prompt = lg.with_apply(g.txt2img(sd15_checkpoint, POSITIVE, "", prefix="strength"),
                               llm4gen_models.llm, llm4gen_models.adapter, strength=strength)
        rows = rows_by_side(comfy_inprocess.run(prompt).records("unet")[0])
        context = rows["positive"]
        expected = release(context[:, :77], POSITIVE, strength)
        assert (context.double() - expected).abs().max() < FUSION_TOL
        if strength == 0.0:
            assert not context[:, 77:].any()


def test_released_unet_layout_loads_with_load_diffusion_model(comfy_host, comfy_base, sd15_parts, llm4gen_models,
                                                              release, clip_reference):
    """The release ships a diffusers-format UNet (unet/diffusion_pytorch_model.safetensors): stock
    UNETLoader reads it from models/diffusion_models and samples with the fused conditioning."""
    from synthetic import sd15

    unet = comfy_base.place("diffusion_models", sd15.small_diffusers_unet(), "llm4gen-unet-diffusers.safetensors")
    prompt = g.use_separate_loaders(g.txt2img("unused", POSITIVE, "", prefix="diffusers"),
                                    unet, sd15_parts["clip"], sd15_parts["vae"])
    result = comfy_host.run(lg.with_apply(prompt, llm4gen_models.llm, llm4gen_models.adapter))
    assert result.images()
    assert_release_context(result, release, clip_reference, POSITIVE, "")


def test_llm_is_managed_by_comfyui(comfy_inprocess, sd15_checkpoint, llm4gen_models):
    """The LLM and CAM are ModelPatchers that ComfyUI's model management loads and can unload."""
    import comfy.model_management as mm

    comfy_inprocess.run(lg.with_apply(g.txt2img(sd15_checkpoint, POSITIVE, "", prefix="managed"),
                                      llm4gen_models.llm, llm4gen_models.adapter))
    llm = comfy_inprocess.node_output(lg.LOAD_LLM)[0]
    adapter = comfy_inprocess.node_output(lg.LOAD_CAM)[0]
    loaded = [m.model for m in mm.current_loaded_models]
    assert llm.patcher in loaded and adapter.patcher in loaded
    assert llm.patcher.model.inner is llm.llm.model
    mm.unload_all_models()
    assert not any(m.model in (llm.patcher, adapter.patcher) for m in mm.current_loaded_models)


def test_llm_encode_reports_progress(comfy_inprocess, sd15_checkpoint, llm4gen_models):
    result = comfy_inprocess.run(lg.with_apply(g.txt2img(sd15_checkpoint, "progress " + POSITIVE, "", prefix="progress"),
                                               llm4gen_models.llm, llm4gen_models.adapter))
    progress = [data for event, data in result.events if event == "progress" and data.get("node") == lg.ENC_POS]
    assert progress, "LLM Encode sent no progress"
    assert progress[-1]["value"] == progress[-1]["max"] > 1


def test_llm_encode_honours_interrupt_and_recovers(comfy_inprocess, llm4gen_models):
    import comfy.model_management as mm

    llm = comfy_inprocess.node_class("LLM4GENLoadLLM").execute(llm4gen_models.llm, "auto", "default")[0]
    encode = comfy_inprocess.node_class("LLM4GENLLMEncode")
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            encode.execute(llm, "interrupted prompt", 256)
    finally:
        mm.interrupt_current_processing(False)
    assert encode.execute(llm, "interrupted prompt", 256)[0].hidden_states.shape == (1, 256, llm4gen_models.llm_dim)


def test_a_tokenizer_config_alone_still_gets_comfyuis_t5_tokenizer(comfy_inprocess, comfy_base, llm4gen_models, tmp_path):
    """The RankGen folder with a tokenizer_config.json but no tokenizer: Load LLM must still hand
    the loader ComfyUI's T5 tokenizer (it used to pass none: "no tokenizer")."""
    import json
    import shutil

    folder = tmp_path / "rankgen-with-tokenizer-config"
    shutil.copytree(llm4gen_models.llm_path, folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer", "extra_ids": 100}))
    name = comfy_base.place("LLM", folder)
    llm = comfy_inprocess.node_class("LLM4GENLoadLLM").execute(name, "auto", "default")[0]
    assert llm.llm.encode(["a red car"]).hidden_states.shape == (1, 256, llm4gen_models.llm_dim)


def test_batch_one_broadcasts_and_other_mismatches_are_clear(comfy_inprocess, llm4gen_models):
    import dataclasses

    load, apply = (comfy_inprocess.node_class(n) for n in ("LLM4GENLoadCrossAdapter", "LLM4GENApplyConditioning"))
    adapter = load.execute(llm4gen_models.adapter)[0]
    llm = comfy_inprocess.node_class("LLM4GENLoadLLM").execute(llm4gen_models.llm, "auto", "default")[0]
    embeds = comfy_inprocess.node_class("LLM4GENLLMEncode").execute(llm, "a cat", 256)[0]
    cond = [[torch.randn(3, 77, 768), {"pooled_output": torch.randn(3, 768)}]]
    fused = apply.execute(cond, adapter, embeds, 1.0, "first 77 (release)", "clip")[0]
    assert fused[0][0].shape == (3, 333, 768)
    two = dataclasses.replace(embeds, hidden_states=embeds.hidden_states.expand(2, -1, -1))
    with pytest.raises(ValueError, match="batch sizes do not match: 3 CLIP prompts and 2 LLM prompts"):
        apply.execute(cond, adapter, two, 1.0, "first 77 (release)", "clip")


# --- the LLM recipe an adapter records decides how the text is encoded ------------------------

OVERRIDDEN = "(the text is encoded again as the adapter needs)"


def _adapter_with_recipe(comfy_base, llm4gen_models, folder, name, recipe, cfg=None):
    """The tests' CAM (the same weights, unless ``cfg`` asks for other dims) saved with ``recipe``."""
    from llm4gen_core import read_cross_adapter_file, save_cross_adapter
    from synthetic.cam import cam_state

    state, adapter_cfg, _ = read_cross_adapter_file(llm4gen_models.adapter_path)
    if cfg is not None:
        state, adapter_cfg = cam_state(cfg, seed=5), cfg
    save_cross_adapter(state, folder / name, adapter_cfg, recipe=recipe)
    return comfy_base.place("llm4gen", folder / name), folder / name


@pytest.fixture(scope="module")
def recipe64_adapter(comfy_base, llm4gen_models, tmp_path_factory):
    from llm4gen_core import LLMRecipe

    recipe = LLMRecipe(max_tokens=64, llm_name=llm4gen_models.llm_path.name)
    return _adapter_with_recipe(comfy_base, llm4gen_models, tmp_path_factory.mktemp("recipe-cam"),
                                "recipe64-cam.safetensors", recipe)


def _overridden(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "LLM4GEN" and OVERRIDDEN in r.getMessage()]


@pytest.mark.parametrize("graph", [lg.with_apply, lg.with_cross_adapter], ids=["apply", "clip-llm"])
def test_adapter_recipe_decides_the_llm_encoding(comfy_inprocess, sd15_checkpoint, llm4gen_models, release,
                                                 recipe64_adapter, graph, caplog):
    """An adapter trained at 64 tokens, fed LLM Encode's 256: the fusing node encodes the same text
    again at 64 through the same LLM, so the UNet gets 77 + 64 tokens, as training computed them."""
    name, path = recipe64_adapter
    prompt = graph(g.txt2img(sd15_checkpoint, POSITIVE, "", prefix="recipe"), llm4gen_models.llm, name, max_tokens=256)
    with caplog.at_level(logging.INFO, logger="LLM4GEN"):
        result = comfy_inprocess.run(prompt)
    from safetensors.torch import load_file

    assert load_cross_adapter(path).recipe.max_tokens == 64
    calls = result.records("unet")
    assert len(calls) == 2
    for call in calls:
        assert call["context_shape"] == [2, 77 + 64, 768]
        for side, text in (("positive", POSITIVE), ("negative", "")):
            context = rows_by_side(call)[side]
            expected = release(context[:, :77], text, max_tokens=64, cam_state=load_file(str(path)))
            assert (context.double() - expected).abs().max().item() < FUSION_TOL, side
    assert comfy_inprocess.node_output(lg.ENC_POS)[0].hidden_states.shape[1] == 256, "LLM Encode's own output is kept"
    assert _overridden(caplog) == [f"LLM4GEN: adapter {name} was trained with max_tokens 64; LLM Encode's 256 is "
                                   f"overridden {OVERRIDDEN}"] * 2  # once per fusing node (positive, negative)
    progress = [data for event, data in result.events if event == "progress" and data.get("node") == lg.FUSE_POS]
    assert progress and progress[-1]["value"] == progress[-1]["max"], "the re-encode reports progress"


def test_release_style_adapter_fuses_as_before(comfy_inprocess, llm4gen_models, caplog):
    """An adapter that records no recipe is the release's: LLM Encode's 256 tokens are fused exactly
    as they come (no second encode); another length is encoded again at the release's 256."""
    node = comfy_inprocess.node_class
    llm = node("LLM4GENLoadLLM").execute(llm4gen_models.llm, "auto", "default")[0]
    adapter = node("LLM4GENLoadCrossAdapter").execute(llm4gen_models.adapter)[0]
    encode, apply = node("LLM4GENLLMEncode"), node("LLM4GENApplyConditioning")
    assert adapter.adapter.recipe is None
    cond = [[torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(1)), {}]]
    embeds = encode.execute(llm, POSITIVE, 256)[0]
    with caplog.at_level(logging.INFO, logger="LLM4GEN"):
        fused = apply.execute(cond, adapter, embeds, 1.0, "first 77 (release)", "clip")[0][0][0]
    with torch.no_grad():
        expected = adapter.adapter(cond[0][0], embeds.hidden_states)
    assert torch.equal(fused, expected) and fused.shape == (1, 333, 768)
    assert _overridden(caplog) == []
    with caplog.at_level(logging.INFO, logger="LLM4GEN"):
        again = apply.execute(cond, adapter, encode.execute(llm, POSITIVE, 64)[0], 1.0, "first 77 (release)", "clip")
    assert torch.equal(again[0][0][0], expected)
    assert _overridden(caplog) == [f"LLM4GEN: adapter {llm4gen_models.adapter} records no LLM recipe, so the "
                                   f"release's applies: max_tokens 256; LLM Encode's 64 is overridden {OVERRIDDEN}"]


def test_recipe_that_cannot_be_reconciled_is_one_clear_error(comfy_inprocess, comfy_base, llm4gen_models,
                                                              tmp_path, recipe64_adapter):
    """The error is ValueError here: ComfyUI imports the pack under another module name, so its
    LLM4GENError is not the class the tests import (it is a ValueError in both)."""
    import dataclasses

    from llm4gen_core import CrossAdapterConfig, EncodedText, LLMRecipe

    node = comfy_inprocess.node_class
    llm = node("LLM4GENLoadLLM").execute(llm4gen_models.llm, "auto", "default")[0]
    embeds = node("LLM4GENLLMEncode").execute(llm, "a cat", 256)[0]
    apply = node("LLM4GENApplyConditioning")
    cond = [[torch.zeros(1, 77, 768), {}]]

    def fuse(adapter_name, llm_embeds=embeds):
        adapter = node("LLM4GENLoadCrossAdapter").execute(adapter_name)[0]
        return apply.execute(cond, adapter, llm_embeds, 1.0, "first 77 (release)", "clip")

    kind, _ = _adapter_with_recipe(comfy_base, llm4gen_models, tmp_path, "qwen-cam.safetensors",
                                   LLMRecipe("decoder", "", 128, -1, "chat", "Qwen3-0.6B"))
    with pytest.raises(ValueError, match=rf"adapter {kind} was trained with Qwen3-0\.6B \(a decoder-only LLM\), "
                                           rf"but the LLM features come from {llm4gen_models.llm} \(a T5 encoder\)"):
        fuse(kind)
    wide, _ = _adapter_with_recipe(comfy_base, llm4gen_models, tmp_path, "wide-cam.safetensors",
                                   LLMRecipe(max_tokens=64, llm_name="bigger-t5"),
                                   CrossAdapterConfig(clip_dim=768, llm_dim=48, heads=8, ffn_dim=96))
    with pytest.raises(ValueError, match=rf"LLM features are {llm4gen_models.llm_dim} wide but this Cross-Adapter "
                                           rf"expects 48: adapter {wide} was trained with bigger-t5 \(a T5 encoder\), "
                                           rf"and {llm4gen_models.llm} is not it"):
        fuse(wide)
    # features that do not carry their text (a bare EncodedText) cannot be encoded again
    bare = EncodedText(**{f.name: getattr(embeds, f.name) for f in dataclasses.fields(EncodedText)})
    with pytest.raises(ValueError, match=r"was trained with max_tokens 64, but these LLM features were encoded "
                                           r"with max_tokens 256 and do not carry their text"):
        fuse(recipe64_adapter[0], bare)
    assert fuse(llm4gen_models.adapter, bare)[0][0][0].shape == (1, 333, 768), "equal recipes: used as they are"


# --- bad input: a clear error in /history, and the server keeps serving ---------------------

def _expect_failure(host, prompt, node_ids: tuple[str, ...], needle: str):
    with pytest.raises(ComfyExecutionError) as err:
        host.run(prompt)
    assert err.value.node_id in node_ids  # ComfyUI may run either side's node first
    assert needle in err.value.exception_message, err.value.exception_message
    assert host.run(g.tiny_image("after-error")).images(), "the host no longer runs prompts"


def test_wrong_adapter_for_the_llm_width(comfy_server, comfy_base, sd15_checkpoint, llm4gen_models, tmp_path):
    from llm4gen_core import CrossAdapterConfig, save_cross_adapter
    from synthetic.cam import cam_state

    cfg = CrossAdapterConfig(clip_dim=768, llm_dim=2048, heads=8, ffn_dim=3072)
    save_cross_adapter(cam_state(cfg), tmp_path / "release-width-cam.safetensors", cfg)
    name = comfy_base.place("llm4gen", tmp_path / "release-width-cam.safetensors")
    prompt = lg.with_apply(g.txt2img(sd15_checkpoint, POSITIVE, "", prefix="bad"), llm4gen_models.llm, name)
    _expect_failure(comfy_server, prompt, (lg.FUSE_POS, lg.FUSE_NEG),
                    f"LLM features are {llm4gen_models.llm_dim} wide but this Cross-Adapter expects 2048")


def test_corrupt_adapter_file(comfy_server, comfy_base, sd15_checkpoint, llm4gen_models, tmp_path):
    data = llm4gen_models.adapter_path.read_bytes()
    (tmp_path / "truncated-cam.safetensors").write_bytes(data[: len(data) // 2])
    name = comfy_base.place("llm4gen", tmp_path / "truncated-cam.safetensors")
    prompt = lg.with_apply(g.txt2img(sd15_checkpoint, POSITIVE, "", prefix="bad"), llm4gen_models.llm, name)
    _expect_failure(comfy_server, prompt, (lg.LOAD_CAM,), "truncated-cam.safetensors")


def test_llm_folder_without_weights(comfy_server, comfy_base, sd15_checkpoint, llm4gen_models, tmp_path):
    folder = tmp_path / "config-only-llm"
    folder.mkdir()
    (folder / "config.json").write_text((llm4gen_models.llm_path / "config.json").read_text())
    name = comfy_base.place("LLM", folder)
    prompt = lg.with_apply(g.txt2img(sd15_checkpoint, POSITIVE, "", prefix="bad"), name, llm4gen_models.adapter)
    _expect_failure(comfy_server, prompt, (lg.LOAD_LLM,), "config-only-llm")


def test_missing_model_file_names_the_folder(comfy_server, sd15_checkpoint, llm4gen_models):
    """ComfyUI 0.3.75 does not check V3 combo values at validation, so the loader's own message is
    what the user sees when a workflow names a file they do not have."""
    prompt = lg.with_apply(g.txt2img(sd15_checkpoint, POSITIVE, "", prefix="bad"),
                           llm4gen_models.llm, "no-such-adapter.safetensors")
    _expect_failure(comfy_server, prompt, (lg.LOAD_CAM,),
                    "Cross-Adapter file 'no-such-adapter.safetensors' is not in models/llm4gen")
