"""The training UNet layout against ComfyUI's own: key maps, detection, loading and numerics.

- ``llm4gen_core.train.unet_layout`` agrees key for key with ComfyUI's ``unet_to_diffusers``
  and with the state dict of ComfyUI's own UNet class (built on the meta device: shapes only),
  and what it writes is detected by ComfyUI as the model it is (SD1.5, SDXL).
- A diffusers UNet with the host's small SD1.5 layout, written in ComfyUI's layout, loads
  through the stock UNETLoader as SD1.5 and computes what diffusers computes (fp32, 333 tokens).
- ``load_single_file_base`` on the host's small SD1.5 checkpoint gives the CLIP, VAE and UNet
  ComfyUI gives for the same file.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import UNet2DConditionModel  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from llm4gen_core.train.single_file import load_single_file_base  # noqa: E402
from llm4gen_core.train.unet_layout import diffusers_config_from_comfy, diffusers_key_map, diffusers_to_comfy  # noqa: E402
from synthetic import comfy_env, sd15  # noqa: E402
from synthetic.seeded import randomize  # noqa: E402

# ComfyUI's reading of an SDXL UNet (comfy/model_detection.py, comfy/supported_models.py SDXL).
SDXL_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
UNET_CONFIGS = {"sd15": sd15.SD15_UNET, "sd15_small": sd15.SMALL_UNET, "sdxl": SDXL_UNET}
EXPECTED_MODEL = {"sd15": "SD15", "sd15_small": "SD15", "sdxl": "SDXL"}
PROMPT = "a red cube on a wooden table"
FP32_TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def comfy(comfy_base):
    """ComfyUI's modules, imported CPU-only with the session's base directory."""
    comfy_env.prepare(comfy_base.root)
    import comfy.model_detection
    import comfy.ops
    import comfy.sd
    import comfy.utils

    return comfy


def comfy_meta_unet(comfy, unet_config: dict) -> dict:
    """ComfyUI's own UNet for this config, on the meta device: its state dict's keys and shapes."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    return UNetModel(**unet_config, device="meta", operations=comfy.ops.disable_weight_init).state_dict()


@pytest.mark.parametrize("name", sorted(UNET_CONFIGS))
def test_key_map_agrees_with_comfyui(comfy, name):
    unet_config = UNET_CONFIGS[name]
    comfy_state = comfy_meta_unet(comfy, unet_config)
    config = diffusers_config_from_comfy(comfy_state)  # read from ComfyUI's own model's shapes
    with torch.device("meta"):
        diffusers_unet = UNet2DConditionModel(**config)
    diffusers_state = diffusers_unet.state_dict()

    ours = diffusers_key_map(diffusers_unet.config)
    theirs = comfy.utils.unet_to_diffusers(unet_config)  # diffusers key -> ldm key (some for absent modules)
    assert set(ours) == set(diffusers_state)
    disagree = {k: (ours[k], theirs.get(k)) for k in diffusers_state if theirs.get(k) != ours[k]}
    assert disagree == {}

    written = diffusers_to_comfy(diffusers_state, diffusers_unet.config)
    assert set(written) == set(comfy_state)
    assert {k: tuple(v.shape) for k, v in written.items()} == {k: tuple(v.shape) for k, v in comfy_state.items()}
    detected = comfy.model_detection.detect_unet_config(written, "")
    assert {k: v for k, v in detected.items() if unet_config.get(k) != v} == {}
    assert type(comfy.model_detection.model_config_from_unet(written, "")).__name__ == EXPECTED_MODEL[name]


@pytest.fixture(scope="module")
def small_diffusers_unet():
    """A diffusers UNet with the small SD1.5 checkpoint's layout (one level, one res block,
    320 channels, context 768, 8 heads), seeded random weights."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(320,), layers_per_block=1, cross_attention_dim=768,
                                attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D",),
                                up_block_types=("CrossAttnUpBlock2D",))
    return randomize(unet, seed=21)


def test_diffusers_unet_written_in_comfy_layout_runs_the_same_in_comfyui(
        comfy_inprocess, comfy_base, small_diffusers_unet, tmp_path_factory):
    unet = small_diffusers_unet
    state = diffusers_to_comfy(unet.state_dict(), unet.config)
    path = tmp_path_factory.mktemp("train-layout") / "llm4gen-train-small-unet.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    name = comfy_base.place("diffusion_models", path)

    (patcher,) = comfy_inprocess.node_class("UNETLoader")().load_unet(name, "default")
    model = patcher.model
    assert type(model.model_config).__name__ == "SD15"
    assert model.model_config.unet_config["channel_mult"] == [1]
    comfy_unet = model.diffusion_model
    assert comfy_unet.dtype == torch.float32
    loaded = comfy_unet.state_dict()
    assert set(loaded) == set(state)
    assert [k for k in state if not torch.equal(loaded[k].float(), state[k])] == []

    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 16, 16, generator=g)
    t = torch.tensor([20.0, 850.0])
    context = torch.randn(2, 333, 768, generator=g)
    with torch.no_grad():
        theirs = comfy_unet(x, timesteps=t, context=context).float()
        ours = unet(x, t, encoder_hidden_states=context).sample
    assert theirs.shape == ours.shape == (2, 4, 16, 16)
    assert ours.abs().mean() > 0.05  # a real output, not a near-zero one that any mapping would match
    assert (ours - theirs).abs().max().item() < 1e-4


@pytest.fixture(scope="module")
def single_file_base():
    tokenizer = comfy_env.comfyui_root() / "comfy" / "sd1_tokenizer"
    return load_single_file_base(sd15.small_sd15_checkpoint(), clip_tokenizer=tokenizer)


@pytest.fixture(scope="module")
def comfy_checkpoint(comfy):
    """ComfyUI's loading of the same file, its text encoder in fp32 (ComfyUI's default on CPU is
    fp16) so the comparison can be tight."""
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
        str(sd15.small_sd15_checkpoint()), output_vae=True, output_clip=True, te_model_options={"dtype": torch.float32})
    return model, clip, vae


def test_single_file_clip_matches_comfyui_encode(single_file_base, comfy_checkpoint, clip_reference):
    _, clip, _ = comfy_checkpoint
    theirs = clip.encode_from_tokens(clip.tokenize(PROMPT)).float()
    tokenizer, text_encoder = single_file_base["tokenizer"], single_file_base["text_encoder"]
    ids = tokenizer([PROMPT], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(ids, clip_reference.token_ids([PROMPT]))
    with torch.no_grad():
        ours = text_encoder(input_ids=ids).last_hidden_state
    assert ours.shape == theirs.shape == (1, 77, 768)
    torch.testing.assert_close(ours, theirs, **FP32_TOL)
    torch.testing.assert_close(ours, clip_reference([PROMPT]), atol=1e-5, rtol=1e-5)


def test_single_file_vae_encode_matches_comfyui(single_file_base, comfy_checkpoint):
    _, _, vae = comfy_checkpoint
    pixels = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(8))  # ComfyUI's IMAGE: [B,H,W,C] in 0..1
    theirs = vae.encode(pixels).float()  # the posterior's mean, unscaled
    with torch.no_grad():
        ours = single_file_base["vae"].encode(pixels.movedim(-1, 1) * 2 - 1).latent_dist.mean
    assert ours.shape == theirs.shape == (1, 4, 8, 8)
    assert ours.abs().mean() > 0.05
    torch.testing.assert_close(ours, theirs, **FP32_TOL)


def test_single_file_unet_matches_comfyui(single_file_base, comfy_checkpoint):
    model, _, _ = comfy_checkpoint
    comfy_unet = model.model.diffusion_model
    g = torch.Generator().manual_seed(9)
    x = torch.randn(1, 4, 8, 8, generator=g)
    t = torch.tensor([400.0])
    context = torch.randn(1, 77, 768, generator=g)
    with torch.no_grad():
        theirs = comfy_unet(x.to(comfy_unet.dtype), timesteps=t, context=context.to(comfy_unet.dtype)).float()
        ours = single_file_base["unet"](x, t, encoder_hidden_states=context).sample
    tol = FP32_TOL if comfy_unet.dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(ours, theirs, **tol)
    scheduler = single_file_base["scheduler"]
    assert scheduler.config.prediction_type == "epsilon"  # the small checkpoint has no v_pred key
    # ComfyUI's SD1.5 schedule (kept as sigmas), from the same constants.
    alphas_cumprod = scheduler.alphas_cumprod.double()
    sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
    torch.testing.assert_close(sigmas.float(), model.model.model_sampling.sigmas.float(), atol=1e-5, rtol=1e-5)
