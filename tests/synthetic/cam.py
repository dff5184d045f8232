"""Synthetic Cross-Adapter checkpoints with the release's key names.

``cam_state`` lives in ``scripts/smoke_models.py`` (the headless runner's smoke mode uses it too).
"""
from __future__ import annotations

import torch

from llm4gen_core.cam import CrossAdapterConfig
from scripts.smoke_models import cam_state  # noqa: F401  (re-exported)

RELEASE = CrossAdapterConfig(clip_dim=768, llm_dim=2048, heads=8, ffn_dim=3072, depth=1)


def write_projector_pth(path, cfg: CrossAdapterConfig = RELEASE, seed: int = 0, **torch_save_kwargs):
    """Write a plain-state-dict projector.pth as the release ships it; returns the state."""
    state = cam_state(cfg, seed)
    torch.save(state, path, **torch_save_kwargs)
    return state
