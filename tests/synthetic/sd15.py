"""Random-weight SD1.5 models made with ComfyUI's own model classes, for host tests.

The builders live in ``scripts/smoke_models.py``, which the headless runner also uses for its
smoke mode; this module keeps the names the tests import. See that module for what each file is.

- ``small_sd15_checkpoint()``: the smallest checkpoint ComfyUI still detects as SD1.5.
- ``full_sd15_checkpoint()``: full-size SD1.5 (2.1 GB; build only when a test asks for it).
- ``diffusers_unet(checkpoint)`` / ``small_diffusers_unet()``: diffusers-format UNets (the
  layout of the LLM4GEN release's ``unet/``); the smallest ComfyUI loads is SD-XS's.
- ``small_sd15_controlnet()`` / ``xs_sd15_controlnet()``: ControlNets for those UNets.
- ``xs_sd15_lora()``: a LoRA for the SD-XS UNet and CLIP-L.
- ``clip_l_file(checkpoint)`` / ``vae_file(checkpoint)``: a checkpoint's CLIP-L and VAE alone.
"""
from __future__ import annotations

from scripts.smoke_models import (  # noqa: F401  (re-exported)
    BUILDER_VERSION, SD15_UNET, SD_VAE, SMALL_UNET, XS_UNET, clip_l_file, diffusers_unet,
    full_sd15_checkpoint, models_dir, small_diffusers_unet, small_sd15_checkpoint, small_sd15_controlnet,
    vae_file, xs_sd15_controlnet, xs_sd15_lora,
)
