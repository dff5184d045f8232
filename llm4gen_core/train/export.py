"""What a run leaves in --output, each in the form a ComfyUI loader reads unchanged.

- ``adapter.safetensors``: the CAM with the release's keys (``CrossFusionModule.N.*``) and the
  LLM recipe in its metadata -> models/llm4gen, Load LLM4GEN Cross-Adapter.
- ``unet/`` (cam+unet): config.json + diffusion_pytorch_model.safetensors, as the release ships
  it -> models/diffusion_models, stock Load Diffusion Model (full-size SD layouts; ComfyUI
  recognises a diffusers UNet by its exact config). ``unet_comfyui.safetensors``: the same
  weights in ComfyUI's own key layout, which loads whatever the size.
- ``lora.safetensors`` (cam+lora): kohya-style keys (``lora_unet_<diffusers path>.lora_down /
  lora_up / alpha``) -> models/loras, stock Load LoRA.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..cam import CrossAdapter
from ..checkpoint import save_cross_adapter
from ..recipe import LLMRecipe

ADAPTER_FILE = "adapter.safetensors"
LORA_FILE = "lora.safetensors"
UNET_DIR = "unet"
COMFY_UNET_FILE = "unet_comfyui.safetensors"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def write_adapter(cam: CrossAdapter, path: Path, recipe: LLMRecipe, source: str = "") -> Path:
    state = {k: v.detach().float().cpu() for k, v in cam.state_dict().items()}
    tmp = path.with_name(path.name + ".partial")
    save_cross_adapter(state, tmp, cam.config, source=source, recipe=recipe)
    os.replace(tmp, path)
    return path


def write_unet(unet, output: Path, unet_format: str, save_dtype: str) -> list[Path]:
    """The fully fine-tuned UNet in the formats asked for; returns what was written."""
    from safetensors.torch import save_file

    dtype = DTYPES[save_dtype]
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in unet.state_dict().items()}
    written = []
    if unet_format in ("diffusers", "both"):
        folder = output / UNET_DIR
        folder.mkdir(parents=True, exist_ok=True)
        unet.save_config(folder)
        tmp = folder / "diffusion_pytorch_model.safetensors.partial"
        save_file(state, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, folder / "diffusion_pytorch_model.safetensors")
        written.append(folder)
    if unet_format in ("comfyui", "both"):
        from .unet_layout import diffusers_to_comfy

        path = output / COMFY_UNET_FILE
        tmp = path.with_name(path.name + ".partial")
        save_file(diffusers_to_comfy(state, dict(unet.config)), str(tmp), metadata={"format": "pt"})
        os.replace(tmp, path)
        written.append(path)
    return written


def lora_state(unet, save_dtype: str) -> dict[str, torch.Tensor]:
    """The peft LoRA on ``unet`` under the kohya names ComfyUI's LoRA loader maps to its UNet."""
    dtype = DTYPES[save_dtype]
    state = {}
    for name, module in unet.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if not isinstance(lora_a, torch.nn.ModuleDict) or "default" not in lora_a:
            continue
        key = "lora_unet_" + name.replace(".", "_")
        rank = module.r["default"]
        state[f"{key}.lora_down.weight"] = module.lora_A["default"].weight.detach().to("cpu", dtype).contiguous()
        state[f"{key}.lora_up.weight"] = module.lora_B["default"].weight.detach().to("cpu", dtype).contiguous()
        # kohya scales by alpha / rank, peft by lora_alpha / r: the same number
        state[f"{key}.alpha"] = torch.tensor(float(module.scaling["default"] * rank), dtype=dtype)
    return state


def write_lora(unet, path: Path, save_dtype: str) -> Path:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".partial")
    save_file(lora_state(unet, save_dtype), str(tmp), metadata={"format": "pt", "llm4gen.lora": "unet"})
    os.replace(tmp, path)
    return path
