"""Putting our torch modules under ComfyUI's model management.

ComfyUI moves models between the compute and the offload device through ``ModelPatcher`` and
``load_models_gpu``, so the LLM can be offloaded before the UNet needs the memory. Two details
of ``ModelPatcher`` matter here: it assigns ``model.device`` (a read-only property on
transformers models), so each module goes into a plain holder; and it only moves modules built
from ``comfy.ops`` part by part, so ours are always loaded whole (``force_full_load``).
"""
from __future__ import annotations

import torch

import comfy.model_management as mm
import comfy.model_patcher


class _Holder(torch.nn.Module):
    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.inner = module


def make_patcher(module: torch.nn.Module, load_device: torch.device, offload_device: torch.device):
    return comfy.model_patcher.ModelPatcher(_Holder(module), load_device=load_device, offload_device=offload_device)


def load_for_inference(patcher, memory_required: int = 0) -> torch.device:
    """Bring the module onto its compute device (offloading others if needed); returns it."""
    mm.load_models_gpu([patcher], memory_required=memory_required, force_full_load=True)
    return patcher.load_device


def choose_dtype(device: torch.device, requested: str) -> torch.dtype:
    """dtype "auto": bf16 where the device does it well, else fp16 (T5 clamps its overflow in
    fp16), fp32 on CPU. ComfyUI's text-encoder default says fp16 even on CPU; not followed, as
    fp16 matmuls on CPU are orders of magnitude slower than fp32."""
    explicit = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if requested in explicit:
        return explicit[requested]
    if mm.is_device_cpu(device):
        return torch.float32
    if mm.should_use_bf16(device, prioritize_performance=False):
        return torch.bfloat16
    if mm.should_use_fp16(device, prioritize_performance=False):
        return torch.float16
    return torch.float32
