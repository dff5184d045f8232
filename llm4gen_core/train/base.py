"""The base model's parts: UNet, VAE, CLIP text encoder(s) and tokenizer(s), noise scheduler.
SD1.x has one CLIP; SDXL two (CLIP-L and OpenCLIP bigG, ``text_encoder_2``/``tokenizer_2``).

A diffusers folder is read with diffusers/transformers, local files only; a single-file
checkpoint goes through :mod:`.single_file`. Nothing here is trained yet: the loop decides.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import LLM4GENError

FOLDER_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class BaseModelError(LLM4GENError):
    """The --base path is not a usable Stable Diffusion model."""


@dataclass
class BaseModel:
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object
    source: str
    text_encoder_2: torch.nn.Module | None = None
    tokenizer_2: object = None

    @property
    def clip_dim(self) -> int:
        """Width of the per-token CLIP features the CAM fuses (SDXL: both CLIPs side by side)."""
        width = int(self.text_encoder.config.hidden_size)
        if self.text_encoder_2 is not None:
            width += int(self.text_encoder_2.config.hidden_size)
        return width

    @property
    def context_dim(self) -> int:
        return int(self.unet.config.cross_attention_dim)

    @property
    def clip_tokens(self) -> int:
        return int(self.text_encoder.config.max_position_embeddings)

    @property
    def vae_scale(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def is_sdxl(self) -> bool:
        return getattr(self.unet.config, "addition_embed_type", None) == "text_time"

    def frozen_parts(self) -> list[torch.nn.Module]:
        return [m for m in (self.vae, self.text_encoder, self.text_encoder_2) if m is not None]


def load_base(path: Path, clip_tokenizer: Path | None = None, prediction_type: str | None = None) -> BaseModel:
    """The base model at ``path`` (a diffusers folder or a single-file checkpoint), in fp32 on the CPU."""
    path = Path(path)
    if path.is_dir():
        parts = _load_folder(path)
    else:
        from .single_file import load_single_file_base

        parts = load_single_file_base(path, clip_tokenizer)
    base = BaseModel(**parts, source=str(path))
    if prediction_type is not None:
        base.scheduler.register_to_config(prediction_type=prediction_type)
    if base.is_sdxl != (base.text_encoder_2 is not None):
        raise BaseModelError(f"{path}: " + ("an SDXL UNet needs text_encoder_2/ and tokenizer_2/ beside it"
                                            if base.is_sdxl else "a second text encoder beside a UNet without SDXL's "
                                            "added conditioning: not a layout this trainer knows"))
    if base.context_dim != base.clip_dim:
        raise BaseModelError(f"{path}: the UNet attends to {base.context_dim}-wide context but the CLIP text encoder(s) "
                             f"give {base.clip_dim}-wide features; this is not a Stable Diffusion 1.x/2.x/XL layout")
    return base


def _load_folder(path: Path) -> dict:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    missing = [name for name in FOLDER_PARTS if not (path / name).is_dir()]
    if missing:
        raise BaseModelError(f"{path}: not a diffusers model folder: missing {', '.join(m + '/' for m in missing)} "
                             "(or pass a single-file checkpoint)")
    local = {"local_files_only": True}
    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer", **local)
    text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", **local)
    # ComfyUI and the release encode exactly 77 CLIP tokens; a tokenizer config may say otherwise.
    tokenizer.model_max_length = int(text_encoder.config.max_position_embeddings)
    parts = {
        "unet": UNet2DConditionModel.from_pretrained(path / "unet", **local),
        "vae": AutoencoderKL.from_pretrained(path / "vae", **local),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": DDPMScheduler.from_pretrained(path / "scheduler", **local),
    }
    if (path / "text_encoder_2").is_dir():  # SDXL: OpenCLIP bigG, whose pooled output SDXL also takes
        if not (path / "tokenizer_2").is_dir():
            raise BaseModelError(f"{path}: text_encoder_2/ without tokenizer_2/")
        parts["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(path / "text_encoder_2", **local)
        parts["tokenizer_2"] = CLIPTokenizer.from_pretrained(path / "tokenizer_2", **local)
        parts["tokenizer_2"].model_max_length = tokenizer.model_max_length
    return parts
