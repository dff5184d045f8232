"""The bundled workflows in a real ComfyUI server: every node exists, the template browser lists
and serves them, and each one runs on random weights (64x64, 2 steps) with the UNet and any
ControlNet receiving what the workflow promises. The SDXL workflow runs on smoke mode's SDXL
checkpoint stand-in, which stock CheckpointLoaderSimple loads as SDXL."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from comfy_harness import RECORDER_NODE
from scripts import workflow_api
from workflow_host import NAMES, STEPS, load, tiny, workflow_host

PACK_NODES = {"LLM4GENLoadLLM", "LLM4GENLoadCrossAdapter", "LLM4GENLLMEncode", "LLM4GENCLIPLLMCrossAdapter",
              "LLM4GENApplyConditioning"}


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    return workflow_host(tmp_path_factory)


SDXL = "llm4gen_sdxl_txt2img"


def test_the_five_bundled_workflows_are_found():
    assert NAMES == ["llm4gen_sd15_apply_conditioning", "llm4gen_sd15_controlnet_lora", "llm4gen_sd15_txt2img",
                     "llm4gen_sdxl_txt2img", "llm4gen_vs_sd15_dense_prompt"]


@pytest.mark.parametrize("name", NAMES)
def test_every_node_exists_in_the_host(host, name):
    workflow = host.workflows[name]
    assert workflow_api.missing_node_types(workflow, host.object_info) == []
    used = workflow_api.node_types(workflow)
    assert used & PACK_NODES, "the workflow uses the pack's nodes"
    frontend_only = {n["type"] for n in workflow["nodes"]} - used
    assert frontend_only <= workflow_api.FRONTEND_ONLY


@pytest.mark.parametrize("name", NAMES)
def test_every_file_the_workflow_names_is_offered_by_the_loaders(host, name):
    """With the stand-ins in place, no loader widget names a file ComfyUI does not list (the
    frontend would draw it red), and the conversion covers every widget of every node."""
    prompt = host.prompts[name]
    assert workflow_api.unavailable_choices(prompt, host.object_info) == []
    for node_id, node in prompt.items():
        expected = {n for n in workflow_api.widget_layout(host.object_info[node["class_type"]]) if n}
        assert expected <= set(node["inputs"]), f"node {node_id} ({node['class_type']}) lacks widget inputs"


def test_the_template_browser_lists_each_workflow_once_and_serves_it(host):
    status, listing = host.server.request("GET", "/api/workflow_templates")
    assert status == 200
    assert sorted(listing["ComfyUI-LLM4GEN"]) == NAMES, listing
    for name in NAMES:
        status, served = host.server.request("GET", f"/api/workflow_templates/ComfyUI-LLM4GEN/{name}.json")
        assert status == 200 and served == load(name)


def with_recorders(prompt: dict) -> dict:
    """A recorder between each sampler and its model, labelled with the sampler's node id."""
    prompt = workflow_api.copy_prompt(prompt)
    for node_id, node in list(prompt.items()):
        if node["class_type"] == "KSampler":
            prompt[f"record_{node_id}"] = {"class_type": RECORDER_NODE, "inputs": {
                "model": node["inputs"]["model"], "label": node_id, "keep_tensors": False}}
            node["inputs"]["model"] = [f"record_{node_id}", 0]
    return prompt


def sampler_ids(prompt: dict, model_from: str) -> list[str]:
    """Samplers whose model comes (directly or through a LoRA) from a loader of this type."""
    found = []
    for node_id, node in prompt.items():
        if node["class_type"] != "KSampler":
            continue
        source = prompt[node["inputs"]["model"][0]]
        while source["class_type"] == "LoraLoader":
            source = prompt[source["inputs"]["model"][0]]
        if source["class_type"] == model_from:
            found.append(node_id)
    return found


def assert_picture(path, size) -> None:
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.shape[:2] == size[::-1], pixels.shape
    assert pixels.std() > 0, "a blank image"


@pytest.mark.parametrize("name", NAMES)
def test_the_workflow_runs_on_random_weights(host, name):
    prompt = host.prompts[name]
    result = host.server.run(with_recorders(tiny(prompt)), timeout=900)
    saved = [p for p in result.images() if "/output/" in str(p)]
    assert len(saved) == 1, result.outputs
    if name == SDXL:
        assert_sdxl_run(host, prompt, result)
        assert_picture(saved[0], (64, 64))
        return
    llm4gen_samplers = sampler_ids(prompt, "UNETLoader")
    assert len(llm4gen_samplers) == 1
    # The released UNet's context: 77 CLIP + 256 LLM tokens for the positive and for the negative
    # (which goes through the same Cross-Adapter path), so ComfyUI batches them in one call.
    calls = result.records("unet", label=llm4gen_samplers[0])
    assert len(calls) == STEPS
    for call in calls:
        assert call["context_shape"] == [2, 333, 768] and sorted(call["cond_or_uncond"]) == [0, 1]
    if name == "llm4gen_vs_sd15_dense_prompt":
        (stock,) = sampler_ids(prompt, "CheckpointLoaderSimple")
        stock_calls = result.records("unet", label=stock)
        assert len(stock_calls) == STEPS
        # The long prompt is two CLIP chunks for stock SD1.5 (the empty negative, one chunk, is
        # repeated to match); LLM4GEN fused the first 77 CLIP tokens with 256 LLM tokens.
        assert {tuple(c["context_shape"]) for c in stock_calls} == {(2, 154, 768)}
        assert_picture(saved[0], (2 * 64 + 16, 64))  # side by side, 16 px apart
    else:
        assert_picture(saved[0], (64, 64))
    if name == "llm4gen_sd15_controlnet_lora":
        controlnet = result.records("controlnet")
        assert controlnet, "the ControlNet ran"
        # controlnet_context = clip: the ControlNet attends to the 77 CLIP tokens it was trained on.
        assert {c["context_shape"][1] for c in controlnet} == {77}
        assert all(c["hint_shape"][-2:] == [64, 64] for c in controlnet)
        log = host.server.log()
        assert "lora key not loaded" not in log, "the LoRA's keys must all patch the UNet or CLIP"


def assert_sdxl_run(host, prompt: dict, result) -> None:
    """The checkpoint is loaded as SDXL with its full-depth CLIP (nothing missing but what SDXL
    checkpoints never hold), and the UNet gets SDXL's fused context and its size-conditioned y."""
    (sampler,) = sampler_ids(prompt, "CheckpointLoaderSimple")
    calls = result.records("unet", label=sampler)
    assert len(calls) == STEPS
    for call in calls:
        # 77 CLIP-L + bigG tokens (768 + 1280) fused with 256 LLM tokens, positive and negative
        # batched; y: bigG's pooled output (1280) + 6 size embeddings (256 each).
        assert call["context_shape"] == [2, 333, 2048] and call["y_shape"] == [2, 2816]
        assert sorted(call["cond_or_uncond"]) == [0, 1]
    # ComfyUI warns "clip missing" when a checkpoint lacks text-encoder weights it builds (a
    # shrunk bigG would leave layers uninitialised); SDXL files never hold CLIP-L's projection
    # and logit scale, which it does not warn about.
    assert "clip missing" not in host.server.log()
