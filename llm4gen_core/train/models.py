"""What trains in each --train mode, and the optimizer over it.

- cam: the CAM (fresh, or from --init-adapter); the UNet frozen in the run's weight dtype.
- cam+lora: the CAM and a peft LoRA on the UNet's attention projections (kept in fp32).
- cam+unet: the CAM and the whole UNet (fp32 master weights; mixed precision autocasts).
CLIP, the LLM and the VAE never train.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..cam import CrossAdapter, CrossAdapterConfig
from ..checkpoint import load_cross_adapter
from ..errors import LLM4GENError
from .config import TrainConfig
from .state import ResumeError

LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


def make_cam(cfg: TrainConfig, clip_dim: int, llm_dim: int) -> CrossAdapter:
    if cfg.init_adapter is not None:
        cam = load_cross_adapter(cfg.init_adapter, dtype=torch.float32)
        have = (cam.config.clip_dim, cam.config.llm_dim)
        if have != (clip_dim, llm_dim):
            raise LLM4GENError(f"--init-adapter {cfg.init_adapter} fuses CLIP {have[0]} / LLM {have[1]} features, but "
                               f"this base's CLIP is {clip_dim} wide and this LLM {llm_dim}: use an adapter for them, "
                               "or none to start fresh")
    else:
        cam = CrossAdapter(CrossAdapterConfig(clip_dim=clip_dim, llm_dim=llm_dim, heads=cfg.cam_heads,
                                              ffn_dim=4 * clip_dim, depth=cfg.cam_depth))
    return cam.float().train().requires_grad_(True)


def prepare_unet(cfg: TrainConfig, unet, device, weight_dtype):
    if cfg.train == "cam":
        unet.requires_grad_(False).eval().to(device, weight_dtype)
    elif cfg.train == "cam+lora":
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig

        unet.requires_grad_(False).to(device, weight_dtype)
        unet.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or cfg.lora_rank,
                                    init_lora_weights="gaussian", target_modules=LORA_TARGETS))
        cast_training_params(unet, dtype=torch.float32)
        unet.train()
    else:
        unet.requires_grad_(True).train().to(device, torch.float32)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    return unet


def make_optimizer(cfg: TrainConfig, cam: torch.nn.Module, unet: torch.nn.Module):
    groups = [{"params": [p for p in cam.parameters() if p.requires_grad], "lr": cfg.lr}]
    unet_params = [p for p in unet.parameters() if p.requires_grad]
    if unet_params:
        groups.append({"params": unet_params, "lr": cfg.unet_lr or cfg.lr})
    if cfg.optimizer == "adam8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise LLM4GENError("--optimizer adam8bit needs bitsandbytes (pip install bitsandbytes)") from None
        return bnb.optim.AdamW8bit(groups, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)


def load_trainable(module: torch.nn.Module, weights: dict[str, torch.Tensor], where: Path) -> None:
    """Put a checkpoint's trained weights back, refusing one from another mode or model."""
    params = dict(module.named_parameters())
    wanted = {n for n, p in params.items() if p.requires_grad}
    if set(weights) != wanted:
        raise ResumeError(f"{where}: its weights do not match this run's trainable parameters "
                          f"(another --train mode or model?): {len(set(weights) ^ wanted)} names differ")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
