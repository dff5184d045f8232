"""Random-weight SDXL-architecture models made with ComfyUI's own model classes, for host tests.

The builders live in ``scripts/smoke_models.py`` beside the SD1.5 ones; see there, and
``TINY_SDXL_UNET`` for why ComfyUI's own detection takes this UNet for SDXL.

- ``tiny_sdxl_unet()``: an SDXL UNet (context 2048, ``y`` of 2816) that stock UNETLoader loads as
  ``comfy.model_base.SDXL``.
- ``tiny_sdxl_clip_l()`` / ``tiny_sdxl_clip_g()``: SDXL's two text encoders, full width, 3 layers
  (the tests' SDXL CLIP loader, ``tests/host/sdxl_clip_pack``, loads them).
- ``tiny_sdxl_controlnet()``: a ControlNet for that UNet.
- ``tiny_sdxl_projector()``: a Cross-Adapter for SDXL's 2048-wide CLIP tokens and the tiny T5.
"""
from __future__ import annotations

from scripts.smoke_models import (  # noqa: F401  (re-exported)
    TINY_SDXL_TEXT_LAYERS, TINY_SDXL_UNET, tiny_sdxl_clip_g, tiny_sdxl_clip_l, tiny_sdxl_controlnet,
    tiny_sdxl_projector, tiny_sdxl_unet,
)
