"""Which mixed precision a run uses: --mixed-precision auto|no|fp16|bf16, decided per device.

A wrong guess is expensive: on a CPU without native bf16 matrix units (AVX512-BF16 or AMX) a bf16
matmul runs hundreds of times slower than fp32, and fp16 on any CPU is slower still. So:

- auto: bf16 on GPUs that support it, else fp16; on a CPU, bf16 only where the CPU has native bf16
  (as oneDNN reports it), else no mixed precision (fp32).
- bf16 asked for on a CPU without native bf16, or fp16 on a CPU: refused with the reason.
"""
from __future__ import annotations

import torch

from ..errors import LLM4GENError


def cpu_has_native_bf16() -> bool:
    """True where this CPU has native bf16 matrix units (AVX512-BF16 or AMX) and oneDNN uses them:
    the same probe that decides the LLM's dtype auto (:func:`llm4gen_core.dtypes.cpu_auto_dtype`)."""
    from ..dtypes import cpu_auto_dtype

    return cpu_auto_dtype().dtype == torch.bfloat16


def choose(requested: str, on_gpu: bool, gpu_bf16: bool = False, cpu_bf16: bool | None = None) -> tuple[str, str]:
    """(precision, reason) for ``requested`` on this device. ``cpu_bf16`` None: probe the CPU."""
    if on_gpu:
        if requested == "auto":
            return ("bf16", "the GPU supports bf16") if gpu_bf16 else ("fp16", "the GPU has no bf16")
        return requested, "as asked"
    if cpu_bf16 is None:
        cpu_bf16 = cpu_has_native_bf16()
    if requested == "fp16":
        raise LLM4GENError("--mixed-precision fp16 needs a GPU: fp16 matmuls on a CPU are orders of magnitude slower "
                           "than fp32; use no (fp32), or bf16 on a CPU with native bf16 (AVX512-BF16/AMX)")
    if requested == "bf16" and not cpu_bf16:
        raise LLM4GENError("--mixed-precision bf16: this CPU has no native bf16 (AVX512-BF16/AMX, as oneDNN reports), "
                           "where bf16 runs hundreds of times slower than fp32; use no (fp32) or auto")
    if requested == "auto":
        return ("bf16", "the CPU has native bf16 (oneDNN)") if cpu_bf16 else ("no", "the CPU has no native bf16")
    return requested, "as asked"


def for_this_machine(requested: str) -> tuple[str, str]:
    """(precision to hand accelerate, why) for the device this process trains on."""
    on_gpu = torch.cuda.is_available()
    return choose(requested, on_gpu, gpu_bf16=on_gpu and torch.cuda.is_bf16_supported())
