"""Synthetic Cross-Adapter checkpoints with the release's key names."""
from __future__ import annotations

import torch

from llm4gen_core.cam import CrossAdapterConfig
from llm4gen_core.checkpoint import expected_shapes

RELEASE = CrossAdapterConfig(clip_dim=768, llm_dim=2048, heads=8, ffn_dim=3072, depth=1)


def cam_state(cfg: CrossAdapterConfig = RELEASE, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """A random state dict shaped like the release's projector.pth (norms not at identity,
    so a swapped q_norm/kv_norm shows up in the numbers)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in expected_shapes(cfg).items():
        if "norm" in key and key.endswith("weight"):
            t = 1.0 + 0.2 * torch.randn(shape, generator=g)
        elif len(shape) == 2:
            t = torch.randn(shape, generator=g) / shape[1] ** 0.5
        else:
            t = 0.1 * torch.randn(shape, generator=g)
        state[key] = t.to(dtype)
    return state


def write_projector_pth(path, cfg: CrossAdapterConfig = RELEASE, seed: int = 0, **torch_save_kwargs):
    """Write a plain-state-dict projector.pth as the release ships it; returns the state."""
    state = cam_state(cfg, seed)
    torch.save(state, path, **torch_save_kwargs)
    return state
