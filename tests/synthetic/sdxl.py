"""Random-weight SDXL-architecture models made with ComfyUI's own model classes, for host tests.

The builders live in ``scripts/smoke_models.py`` beside the SD1.5 ones; see there, and
``TINY_SDXL_UNET`` for why ComfyUI's own detection takes this UNet for SDXL.

- ``tiny_sdxl_unet()``: an SDXL UNet (context 2048, ``y`` of 2816) that stock UNETLoader loads as
  ``comfy.model_base.SDXL``.
- ``tiny_sdxl_clip_l()`` / ``tiny_sdxl_clip_g()``: SDXL's two text encoders, full width, 3 layers
  (the tests' SDXL CLIP loader, ``tests/host/sdxl_clip_pack``, loads them).
- ``tiny_sdxl_controlnet()``: a ControlNet for that UNet.
- ``tiny_sdxl_projector()``: a Cross-Adapter for SDXL's 2048-wide CLIP tokens and the tiny T5.
- ``tiny_sdxl_diffusers_base()``: those UNet and text encoders as a diffusers SDXL folder, the
  ``--base`` the trainer reads (needs diffusers and transformers; built here, not in scripts/).
"""
from __future__ import annotations

from pathlib import Path

from scripts.smoke_models import (  # noqa: F401  (re-exported)
    BUILDER_VERSION, TINY_SDXL_TEXT_LAYERS, TINY_SDXL_UNET, _cached_folder, tiny_sdxl_clip_g, tiny_sdxl_clip_l,
    tiny_sdxl_controlnet, tiny_sdxl_projector, tiny_sdxl_unet,
)

# diffusers' SDXL base VAE and scheduler configs (stabilityai/stable-diffusion-xl-base-1.0), written out.
SDXL_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, act_fn="silu", sample_size=1024, scaling_factor=0.13025,
                force_upcast=True)
SDXL_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      prediction_type="epsilon", steps_offset=1, timestep_spacing="leading",
                      interpolation_type="linear", use_karras_sigmas=False)


def tiny_sdxl_diffusers_base() -> Path:
    """A diffusers SDXL folder holding exactly the weights ComfyUI loads from the tiny SDXL files:
    ``unet/`` is ``tiny_sdxl_unet()`` renamed by ``llm4gen_core.train.unet_layout`` (config read
    from its shapes), ``text_encoder/`` / ``text_encoder_2/`` are ``tiny_sdxl_clip_l()`` /
    ``tiny_sdxl_clip_g()`` as transformers' ``CLIPTextModel`` / ``CLIPTextModelWithProjection``,
    ``tokenizer/`` / ``tokenizer_2/`` ComfyUI's CLIP vocabulary (padding with the end token and with
    "!"), all in fp32 (the fp16 files' values, exactly); ``vae/`` a seeded random VAE of SDXL's
    config and ``scheduler/`` SDXL's (ComfyUI never reads either here). ~1.4 GB, cached."""
    def build(folder: Path) -> None:
        import torch
        from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
        from safetensors.torch import load_file
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        from llm4gen_core.train.unet_layout import comfy_to_diffusers, diffusers_config_from_comfy
        from synthetic import comfy_env
        from synthetic.clip_reference import SDXLClipReference, _load_text_model

        ldm = {k: v.float() for k, v in load_file(str(tiny_sdxl_unet())).items()}
        config = diffusers_config_from_comfy(ldm)
        unet = UNet2DConditionModel(**config)
        unet.load_state_dict(comfy_to_diffusers(ldm, config), strict=True)
        unet.save_pretrained(folder / "unet")

        vocab = comfy_env.comfyui_root() / "comfy" / "sd1_tokenizer"
        files = (str(vocab / "vocab.json"), str(vocab / "merges.txt"))
        for part, model_class, file, pad in (("", CLIPTextModel, tiny_sdxl_clip_l(), "<|endoftext|>"),
                                             ("_2", CLIPTextModelWithProjection, tiny_sdxl_clip_g(), "!")):
            hidden = SDXLClipReference.HIDDEN["clip_l" if not part else "clip_g"]
            _load_text_model(model_class, hidden, file).save_pretrained(folder / f"text_encoder{part}")
            CLIPTokenizer(*files, pad_token=pad).save_pretrained(folder / f"tokenizer{part}")

        torch.manual_seed(26)
        AutoencoderKL(**SDXL_VAE).save_pretrained(folder / "vae")
        EulerDiscreteScheduler(**SDXL_SCHEDULER).save_pretrained(folder / "scheduler")

    return _cached_folder(f"sdxl-tiny-diffusers-{BUILDER_VERSION}", build)
