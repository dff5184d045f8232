"""The base model's parts: UNet, VAE, CLIP text encoder and tokenizer, noise scheduler.

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

    @property
    def clip_dim(self) -> int:
        return int(self.text_encoder.config.hidden_size)

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
    if base.is_sdxl:
        raise BaseModelError(f"{path}: an SDXL base; training on SDXL is not supported yet (SD1.x/SD2.x only)")
    if base.context_dim != base.clip_dim:
        raise BaseModelError(f"{path}: the UNet attends to {base.context_dim}-wide context but the CLIP text encoder "
                             f"gives {base.clip_dim}-wide features; this is not a Stable Diffusion 1.x/2.x layout")
    return base


def _load_folder(path: Path) -> dict:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    missing = [name for name in FOLDER_PARTS if not (path / name).is_dir()]
    if missing:
        raise BaseModelError(f"{path}: not a diffusers model folder: missing {', '.join(m + '/' for m in missing)} "
                             "(or pass a single-file checkpoint)")
    local = {"local_files_only": True}
    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer", **local)
    text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", **local)
    # ComfyUI and the release encode exactly 77 CLIP tokens; a tokenizer config may say otherwise.
    tokenizer.model_max_length = int(text_encoder.config.max_position_embeddings)
    return {
        "unet": UNet2DConditionModel.from_pretrained(path / "unet", **local),
        "vae": AutoencoderKL.from_pretrained(path / "vae", **local),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": DDPMScheduler.from_pretrained(path / "scheduler", **local),
    }
