"""Putting our torch modules under ComfyUI's model management.

ComfyUI moves models between the compute and the offload device through ``ModelPatcher`` and
``load_models_gpu``. Details of ``ModelPatcher`` that matter here: it assigns ``model.device`` (a
read-only property on transformers models), so each module goes into a plain holder; it only
leaves out of VRAM, part by part, modules with ComfyUI's cast machinery (``comfy.ops``), which the
LLM gets from :mod:`.lowvram` (the CAM is small and is always loaded whole); and its default size
counts a tied T5 embedding twice, so the holder's size is given to it.

The LLM is taken off the GPU again after each encode (:func:`offload_after_use`), so that
KSampler's sampling finds the VRAM it would find without LLM4GEN.
"""
from __future__ import annotations

import torch

import comfy.model_management as mm
import comfy.model_patcher

from ..llm4gen_core.dtypes import AutoDtype, cpu_auto_dtype, log_choice
from . import lowvram


class _Holder(torch.nn.Module):
    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.inner = module


def make_patcher(module: torch.nn.Module, load_device: torch.device, offload_device: torch.device, *,
                 partial: bool = False):
    """A ModelPatcher around ``module``. ``partial``: give it ComfyUI's per-layer casting so that
    ``load_models_gpu`` may load it partially when memory is short (the LLM); otherwise (or should a
    module not allow it) it is always loaded whole."""
    holder = _Holder(module)
    holder.llm4gen_partial = bool(partial and lowvram.make_castable(module))
    return comfy.model_patcher.ModelPatcher(holder, load_device=load_device, offload_device=offload_device,
                                            size=lowvram.weight_bytes(holder))


def load_for_inference(patcher, memory_required: int = 0) -> torch.device:
    """Bring the module onto its compute device (offloading others if needed), partially if it
    allows that and memory is short; returns the device its inputs go to. ``memory_required``: the
    activation memory of the call, which ComfyUI keeps free besides the weights."""
    partial = getattr(patcher.model, "llm4gen_partial", False)
    mm.load_models_gpu([patcher], memory_required=memory_required, force_full_load=not partial)
    return patcher.load_device


def offload_after_use(patcher) -> bool:
    """Take the model off its compute device now, as ComfyUI's own ``free_memory`` does when it
    needs the room; the next ``load_models_gpu`` brings it back. Not done when that frees nothing
    (it computes where it is kept: the CPU, or ComfyUI's --gpu-only) or when ComfyUI was told to keep
    models in VRAM (--highvram). Returns whether it was offloaded."""
    if patcher.load_device == patcher.offload_device or mm.vram_state == mm.VRAMState.HIGH_VRAM:
        return False
    for i, loaded in enumerate(mm.current_loaded_models):
        if loaded.model is patcher:
            loaded.model_unload()
            mm.current_loaded_models.pop(i)
            mm.soft_empty_cache()
            return True
    return False


def choose_dtype(device: torch.device, requested: str) -> torch.dtype:
    """dtype "auto": on a GPU bf16 where ComfyUI says it does it well, else fp16 (T5 clamps its
    overflow in fp16); on a CPU bf16 only with native bf16 matrix units (AVX512-BF16 or AMX, as the
    CPU and oneDNN report them), else fp32 (``llm4gen_core.dtypes``: a wrong guess runs 500x
    slower). ComfyUI's text-encoder default says fp16 even on CPU; not followed, as fp16 matmuls on
    CPU are orders of magnitude slower than fp32. The choice and its reason are logged once."""
    explicit = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if requested in explicit:
        return explicit[requested]
    if mm.is_device_cpu(device):
        choice = cpu_auto_dtype()
    elif mm.should_use_bf16(device, prioritize_performance=False):
        choice = AutoDtype(torch.bfloat16, "ComfyUI says the GPU does bf16 well")
    elif mm.should_use_fp16(device, prioritize_performance=False):
        choice = AutoDtype(torch.float16, "ComfyUI says the GPU does fp16 but not bf16 well; T5's overflow guard on")
    else:
        choice = AutoDtype(torch.float32, "ComfyUI says the device does neither bf16 nor fp16 well")
    log_choice(str(device), choice)
    return choice.dtype
