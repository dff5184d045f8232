"""Seeded random weights for diffusers/transformers models in tests (no ComfyUI needed)."""
from __future__ import annotations

import torch


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter from a seeded generator, sized to keep activations O(1): weights
    ~ N(0, 1/fan_in), 1-d weights (norm scales) ~ 1 +- 0.1 (not 1, so a swapped norm shows),
    biases ~ N(0, 0.1). Returns the module in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            if p.ndim <= 1:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / (p[0].numel() ** 0.5))
    return module.eval()
