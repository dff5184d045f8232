"""Exponential moving average of the trained weights (--ema), exported instead of the raw ones.

    shadow = d * shadow + (1 - d) * weight,   d = min(decay, (1 + step) / (10 + step))

The warm-up in d keeps the first steps from being averaged with the random start for long.
"""
from __future__ import annotations

import torch


class EMA:
    def __init__(self, params: dict[str, torch.nn.Parameter], decay: float):
        self.decay = decay
        self.shadow = {name: p.detach().clone().float() for name, p in params.items()}

    def rate(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, params: dict[str, torch.nn.Parameter], step: int) -> None:
        d = self.rate(step)
        for name, p in params.items():
            self.shadow[name].lerp_(p.detach().float(), 1.0 - d)

    @torch.no_grad()
    def copy_to(self, params: dict[str, torch.nn.Parameter]) -> None:
        for name, p in params.items():
            p.copy_(self.shadow[name].to(p.dtype))

    def load(self, shadow: dict[str, torch.Tensor] | None, step: int) -> None:
        if shadow is None or set(shadow) != set(self.shadow):
            from .state import ResumeError

            raise ResumeError("the checkpoint has no matching EMA weights (was it trained without --ema?)")
        device = next(iter(self.shadow.values())).device
        self.shadow = {k: v.float().to(device) for k, v in shadow.items()}
