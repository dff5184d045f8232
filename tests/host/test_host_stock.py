"""The host harness on stock ComfyUI graphs only: random SD1.5 weights load, sample, decode and
save in the in-process host and in the server; the recorder sees what the UNet and a
ControlNet receive; errors come back with ComfyUI's message and the server keeps serving."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from scripts import stock_graphs as g
from comfy_harness import PACK_LINK, REPO, ComfyExecutionError, ComfyServer, ComfyValidationError
from synthetic import sd15

pytestmark = pytest.mark.host

POSITIVE = "a red cube on a wooden table"
NEGATIVE = ""
# ComfyUI runs SD1.5's CLIP in fp16 on CPU; the reference is fp32 transformers.
CLIP_TOL = dict(atol=3e-2, rtol=3e-2)


def assert_context_rows(record: dict, expected: dict[int, torch.Tensor], key: str = "context") -> None:
    """Rows of a batched context are laid out per ``cond_or_uncond`` entry (0 = positive,
    1 = negative), each repeated for every latent in the batch."""
    context = record[key].float()
    per_cond = context.shape[0] // len(record["cond_or_uncond"])
    for i, which in enumerate(record["cond_or_uncond"]):
        for row in context[i * per_cond:(i + 1) * per_cond]:
            torch.testing.assert_close(row, expected[which], **CLIP_TOL)


def assert_good_outputs(result, count: int = 1) -> None:
    images = result.images()
    assert len(images) == count and all(p.is_file() for p in images)
    pixels = np.asarray(Image.open(images[0]))
    assert pixels.shape == (64, 64, 3) and pixels.std() > 0  # a decoded picture, not a blank
    (latent_file,) = result.files("latents")
    latent = load_file(str(latent_file))["latent_tensor"]
    assert latent.shape == (count, 4, 8, 8) and torch.isfinite(latent).all()


def test_repo_is_linked_as_the_pack(comfy_base):
    assert (comfy_base.root / "custom_nodes" / PACK_LINK).resolve() == REPO


def test_small_checkpoint_is_detected_as_sd15(comfy_inprocess, sd15_checkpoint):
    loader = comfy_inprocess.node_class("CheckpointLoaderSimple")()
    model, clip, vae = loader.load_checkpoint(sd15_checkpoint)[:3]
    config = model.model.model_config
    assert type(config).__name__ == "SD15"
    assert config.unet_config["channel_mult"] == [1] and config.unet_config["context_dim"] == 768
    assert clip is not None and vae is not None


def test_txt2img_records_cond_and_uncond_in_one_batch(comfy_host, sd15_checkpoint, clip_reference):
    result = comfy_host.run(g.txt2img(sd15_checkpoint, POSITIVE, NEGATIVE))
    assert_good_outputs(result)

    calls = result.records("unet")
    assert len(calls) == 2  # euler, 2 steps: one UNet call per step
    reference = clip_reference([POSITIVE, NEGATIVE])
    assert (reference[0] - reference[1]).abs().max() > 10 * CLIP_TOL["atol"]  # a swap would show
    for call in calls:
        # ComfyUI concatenates positive and negative (same shapes) into one UNet batch.
        assert call["batch_size"] == 2 and sorted(call["cond_or_uncond"]) == [0, 1]
        assert call["context_shape"] == [2, 77, 768] and call["x_shape"] == [2, 4, 8, 8]
        assert not call["has_control"]
        assert_context_rows(call, {0: reference[0], 1: reference[1]})
    assert calls[0]["sigmas"][0] > calls[1]["sigmas"][0]


def test_latent_batch_of_two_doubles_the_unet_batch(comfy_inprocess, sd15_checkpoint, clip_reference):
    result = comfy_inprocess.run(g.txt2img(sd15_checkpoint, POSITIVE, NEGATIVE, batch=2, prefix="batch2"))
    assert_good_outputs(result, count=2)
    reference = clip_reference([POSITIVE, NEGATIVE])
    for call in result.records("unet"):
        assert call["batch_size"] == 4 and call["context_shape"] == [4, 77, 768]
        assert_context_rows(call, {0: reference[0], 1: reference[1]})
    # The conditioning a node produced is readable in-process: one [1, 77, 768] entry.
    (conditioning,) = comfy_inprocess.node_output(g.POS)
    torch.testing.assert_close(conditioning[0][0][0].float(), reference[0], **CLIP_TOL)


@pytest.fixture(scope="module")
def controlnet_name(comfy_base):
    return comfy_base.place("controlnet", sd15.small_sd15_controlnet())


def test_controlnet_gets_cross_attn_controlnet_context(comfy_inprocess, sd15_checkpoint, controlnet_name, clip_reference):
    prompt = g.with_controlnet(g.txt2img(sd15_checkpoint, POSITIVE, NEGATIVE, prefix="cnet"), controlnet_name,
                               positive_text="a dog", negative_text="a bird")
    result = comfy_inprocess.run(prompt)
    assert_good_outputs(result)
    ref = dict(zip(["pos", "neg", "dog", "bird"], clip_reference([POSITIVE, NEGATIVE, "a dog", "a bird"])))
    unet_calls, cnet_calls = result.records("unet"), result.records("controlnet")
    assert len(unet_calls) == len(cnet_calls) == 2
    for call, cnet in zip(unet_calls, cnet_calls):
        assert cnet["seq"] < call["seq"]  # the ControlNet runs just before its UNet call
        assert call["has_control"] and call["controlnet_context_key"] == "crossattn_controlnet"
        assert call["batch_size"] == cnet["batch_size"] == 2 and cnet["context_shape"] == [2, 77, 768]
        assert_context_rows(call, {0: ref["pos"], 1: ref["neg"]})  # the UNet keeps its own context
        assert_context_rows({**cnet, "cond_or_uncond": call["cond_or_uncond"]}, {0: ref["dog"], 1: ref["bird"]})
        torch.testing.assert_close(call["controlnet_context"], cnet["context"], rtol=0, atol=0)


def test_cross_attn_controlnet_on_one_side_splits_the_batch(comfy_inprocess, sd15_checkpoint, controlnet_name, clip_reference):
    """Conds batch together only when they have the same keys: a ``cross_attn_controlnet`` on
    the positive alone makes ComfyUI run positive and negative as separate UNet calls."""
    prompt = g.with_controlnet(g.txt2img(sd15_checkpoint, POSITIVE, NEGATIVE, prefix="cnet1"), controlnet_name,
                               positive_text="a dog", negative_text=None)
    result = comfy_inprocess.run(prompt)
    ref = dict(zip(["neg", "dog"], clip_reference([NEGATIVE, "a dog"])))
    calls, cnets = result.records("unet"), result.records("controlnet")
    assert len(calls) == len(cnets) == 4 and all(c["batch_size"] == 1 for c in calls + cnets)
    for call, cnet in zip(calls, cnets):
        expected = ref["dog"] if call["cond_or_uncond"] == [0] else ref["neg"]  # the negative falls back to c_crossattn
        torch.testing.assert_close(cnet["context"][0].float(), expected, **CLIP_TOL)


def test_small_checkpoint_unet_has_no_diffusers_form(comfy_inprocess):
    """ComfyUI recognises diffusers UNets only by a fixed list of layouts: the one-level UNet
    of the small checkpoint is not among them, so the builder refuses rather than writing a
    file UNETLoader would reject."""
    with pytest.raises(ValueError, match="fixed list of layouts"):
        sd15.diffusers_unet(sd15.small_sd15_checkpoint())


@pytest.fixture(scope="module")
def xs_unet_name(comfy_base):
    folder = sd15.small_diffusers_unet().parent
    return comfy_base.place("diffusion_models", folder, "sd15-xs") + "/diffusion_pytorch_model.safetensors"


def test_diffusers_unet_loads_with_unet_loader_as_sd15(comfy_inprocess, xs_unet_name):
    (model,) = comfy_inprocess.node_class("UNETLoader")().load_unet(xs_unet_name, "default")
    config = model.model.model_config
    assert type(config).__name__ == "SD15" and config.unet_config["channel_mult"] == [1, 2, 4]
    # Every weight of the file landed in the model, and every parameter came from the file.
    file_tensors = load_file(str(sd15.small_diffusers_unet()))
    signature = lambda t: (tuple(t.shape), t.flatten()[:16].half().float().numpy().tobytes())
    by_signature = {signature(t): t for t in file_tensors.values()}
    params = model.model.diffusion_model.state_dict()
    assert len(params) == len(file_tensors) == len(by_signature)
    for name, value in params.items():
        assert torch.equal(value.half(), by_signature[signature(value)].half()), name


def test_diffusers_unet_samples_with_clip_and_vae_loaders(comfy_inprocess, xs_unet_name, sd15_parts, clip_reference):
    prompt = g.use_separate_loaders(g.txt2img("unused", POSITIVE, NEGATIVE, prefix="xs"),
                                    xs_unet_name, sd15_parts["clip"], sd15_parts["vae"])
    result = comfy_inprocess.run(prompt)
    assert_good_outputs(result)
    reference = clip_reference([POSITIVE, NEGATIVE])
    calls = result.records("unet")
    assert len(calls) == 2
    for call in calls:
        assert call["context_shape"] == [2, 77, 768]
        assert_context_rows(call, {0: reference[0], 1: reference[1]})
    comfy_inprocess.free()  # 1.3 GB of UNet


def test_missing_checkpoint_is_refused_by_validation(comfy_host):
    with pytest.raises(ComfyValidationError) as refused:
        comfy_host.run(g.txt2img("no-such-model.safetensors", prefix="missing"))
    assert "no-such-model.safetensors" in str(refused.value) and "Value not in list" in str(refused.value)
    assert g.CKPT in refused.value.node_errors
    assert comfy_host.run(g.tiny_image("after-missing")).images()


@pytest.fixture(scope="session")
def broken_checkpoint(comfy_base, tmp_path_factory):
    """Listed like any checkpoint (so validation passes) but not a safetensors file."""
    broken = tmp_path_factory.mktemp("broken") / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}" + bytes(64))
    return comfy_base.place("checkpoints", broken)


def test_failing_node_reports_its_error_and_the_host_keeps_serving(comfy_host, broken_checkpoint):
    with pytest.raises(ComfyExecutionError) as failed:
        comfy_host.run(g.txt2img(broken_checkpoint, prefix="broken"))
    assert failed.value.node_id == g.CKPT and failed.value.node_type == "CheckpointLoaderSimple"
    assert failed.value.exception_message.strip()
    assert comfy_host.run(g.tiny_image("after-broken")).images()


def test_failed_prompt_is_in_the_server_history(comfy_server, broken_checkpoint):
    entry = comfy_server.wait(comfy_server.queue(g.txt2img(broken_checkpoint, prefix="broken-history")), timeout=120)
    assert entry["status"]["status_str"] == "error" and not entry["status"]["completed"]
    errors = [data for event, data in entry["status"]["messages"] if event == "execution_error"]
    assert errors and errors[0]["node_type"] == "CheckpointLoaderSimple" and errors[0]["exception_message"]


def test_placed_files_show_up_without_restarting(comfy_host, comfy_base, sd15_checkpoint):
    def listed():
        if isinstance(comfy_host, ComfyServer):
            return comfy_host.object_info("CheckpointLoaderSimple")["input"]["required"]["ckpt_name"][0]
        return comfy_host.folder_paths.get_filename_list("checkpoints")

    assert sd15_checkpoint in listed()  # ComfyUI has now cached the listing
    name = comfy_base.place("checkpoints", sd15.small_sd15_checkpoint(), f"placed-later-{type(comfy_host).__name__}.safetensors")
    assert name in listed()


def test_server_lists_the_recorder_node(comfy_server):
    info = comfy_server.object_info("LLM4GENTestRecordUNet")
    assert info["output"] == ["MODEL"] and "model" in info["input"]["required"]
