"""Which dtype "auto" computes in, and why: the choice that costs 500x when it is wrong.

On a GPU: bf16 where it has it, else fp16 (T5 keeps its feed-forward output in fp32 there).

On a CPU, bf16 halves the weights' memory and, on CPUs with native bf16 matrix units (x86
AVX512-BF16 or AMX-BF16), runs the encoder about twice as fast as fp32. On every other CPU torch
falls back to a bf16 matmul that is about 500 times slower than fp32 (measured: 0.3 GF/s against
160 GF/s on an AVX2 machine), so "auto" picks bf16 only when both the CPU and oneDNN say so:

- the CPU: ``avx512_bf16`` or ``amx_bf16`` among the flags of ``/proc/cpuinfo`` (Linux);
- oneDNN: ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` (it is also true on plain AVX512
  CPUs, where bf16 is emulated, hence the flags).

Anything unknown (no ``/proc/cpuinfo``, another architecture, an older torch) gives fp32. fp16 is
never chosen on a CPU (about 1 GF/s there). The probe runs once per process; the choice and its
reason are logged once (logger ``LLM4GEN``). Tests replace :func:`_cpu_flags` and
:func:`_onednn_bf16` to see both answers on any machine.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch

log = logging.getLogger("LLM4GEN")

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_logged: set[str] = set()


@dataclass(frozen=True)
class AutoDtype:
    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def _cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (None when it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        return None
    return set()


def _onednn_bf16() -> bool | None:
    """oneDNN's own answer (None when this torch cannot say)."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return None


@functools.lru_cache(maxsize=1)
def cpu_auto_dtype() -> AutoDtype:
    """bf16 on a CPU with native bf16 matrix units, fp32 on every other CPU (never fp16)."""
    flags, onednn = _cpu_flags(), _onednn_bf16()
    have = sorted(set(BF16_FLAGS) & flags) if flags is not None else []
    if have and onednn:
        return AutoDtype(torch.bfloat16, f"the CPU has {' and '.join(have)} and oneDNN does bf16 matmuls natively")
    slow = "bf16 matmuls would run ~500x slower than fp32 here"
    if flags is None:
        return AutoDtype(torch.float32, f"the CPU's features cannot be read (no /proc/cpuinfo); {slow} on CPUs "
                                        "without native bf16 units, so fp32 is the safe choice")
    if not have:
        return AutoDtype(torch.float32, f"the CPU has neither {' nor '.join(BF16_FLAGS)} (no native bf16 matrix "
                                        f"units): {slow}")
    return AutoDtype(torch.float32, f"the CPU has {' and '.join(have)} but oneDNN "
                                    f"{'cannot say whether it does' if onednn is None else 'does not do'} bf16 "
                                    f"in this torch build: {slow}")


def cuda_auto_dtype(bf16_supported: bool) -> AutoDtype:
    if bf16_supported:
        return AutoDtype(torch.bfloat16, "the GPU supports bf16")
    return AutoDtype(torch.float16, "the GPU has no bf16; fp16 with T5's overflow guard (feed-forward output in fp32)")


def auto_dtype(device: torch.device) -> AutoDtype:
    """dtype "auto" for ``device`` (logged once per process and choice)."""
    device = torch.device(device)
    if device.type == "cuda":
        choice = cuda_auto_dtype(torch.cuda.is_bf16_supported())
    elif device.type == "cpu":
        choice = cpu_auto_dtype()
    else:  # mps, xpu, ...: what the device reports is not probed here
        choice = AutoDtype(torch.float32, f"no bf16 probe for {device.type} devices")
    log_choice(device.type, choice)
    return choice


def log_choice(where: str, choice: AutoDtype) -> None:
    line = f"LLM4GEN: dtype auto on {where}: {choice.name} ({choice.reason})"
    if line not in _logged:
        _logged.add(line)
        log.info(line)
