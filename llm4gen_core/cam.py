"""The Cross-Adapter Module (CAM) of LLM4GEN (arXiv 2407.00737), as released for SD1.5.

With C = CLIP token features [B, Tc, Dc] and L = LLM token features [B, Tl, Dl], one block is

    l   = llm_proj(L)                                   # Dl -> Dc
    q   = q_proj(kv_norm(l))                            # queries: the LLM tokens
    k   = k_proj(q_norm(C));  v = v_proj(q_norm(C))     # keys, values: the CLIP tokens
    a   = softmax(q k^T / sqrt(d_head)) v               # `heads` heads, no mask
    l   = out_proj(a) + l
    l   = FFN(norm(l)) + l                              # Linear, QuickGELU, Linear
    out = concat([C, l], dim=1)                         # [B, Tc + Tl, Dc]

Blocks stack as in the release: each block's output is the next block's C. The release has one
block (768/2048, 8 heads, FFN 3072), so the UNet sees 77 + 256 = 333 tokens.

Naming trap kept on purpose, because the attribute names are the release's state-dict keys:
``q_norm`` normalises the CLIP side (keys/values) and ``kv_norm`` the LLM side (queries).
"""
from __future__ import annotations

import math
import numbers

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .errors import FeatureMismatchError


@dataclass(frozen=True)
class CrossAdapterConfig:
    clip_dim: int = 768
    llm_dim: int = 2048
    heads: int = 8
    ffn_dim: int = 3072
    depth: int = 1

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"CrossAdapterConfig.{name} must be a positive integer, got {value!r}")
        if self.clip_dim % self.heads:
            raise ValueError(f"clip_dim {self.clip_dim} is not divisible by heads {self.heads}")


class QuickGELU(nn.Module):
    """CLIP's GELU approximation, x * sigmoid(1.702 x), as the release uses it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class CrossFusion(nn.Module):
    """One CAM block: the LLM tokens attend to the CLIP tokens, then join them."""

    def __init__(self, clip_dim: int, llm_dim: int, heads: int, ffn_dim: int):
        super().__init__()
        self.heads = heads
        self.llm_proj = nn.Linear(llm_dim, clip_dim)
        self.q_proj = nn.Linear(clip_dim, clip_dim)
        self.k_proj = nn.Linear(clip_dim, clip_dim)
        self.v_proj = nn.Linear(clip_dim, clip_dim)
        self.out_proj = nn.Linear(clip_dim, clip_dim)
        self.q_norm = nn.LayerNorm(clip_dim)   # CLIP side
        self.kv_norm = nn.LayerNorm(clip_dim)  # LLM side
        self.norm = nn.LayerNorm(clip_dim)
        self.FFN = nn.Sequential(nn.Linear(clip_dim, ffn_dim), QuickGELU(), nn.Linear(ffn_dim, clip_dim))

    def forward(self, clip: torch.Tensor, llm: torch.Tensor) -> torch.Tensor:
        split_heads = "b t (h d) -> b h t d"
        l = self.llm_proj(llm)
        c = self.q_norm(clip)
        q = rearrange(self.q_proj(self.kv_norm(l)), split_heads, h=self.heads)
        k = rearrange(self.k_proj(c), split_heads, h=self.heads)
        v = rearrange(self.v_proj(c), split_heads, h=self.heads)
        a = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d_head)) v
        l = self.out_proj(rearrange(a, "b h t d -> b t (h d)")) + l
        l = self.FFN(self.norm(l)) + l
        return torch.cat([clip, l], dim=1)


class CrossAdapter(nn.Module):
    """The CAM: ``adapter(clip_embeds, llm_embeds)`` gives the fused context for the UNet.

    Inputs may be on any device and in any float dtype: the CAM runs in its own dtype and
    device and returns the result in ``clip_embeds``' dtype and device. A batch of 1 on either
    side broadcasts over the other.
    """

    def __init__(self, config: CrossAdapterConfig = CrossAdapterConfig()):
        super().__init__()
        self.config = config
        self.recipe = None  # the LLM recipe it was trained with (llm4gen_core.recipe); None: the release's
        self.CrossFusionModule = nn.ModuleList(
            CrossFusion(config.clip_dim, config.llm_dim, config.heads, config.ffn_dim)
            for _ in range(config.depth)
        )

    def output_tokens(self, clip_tokens: int, llm_tokens: int) -> int:
        """Length of the fused sequence, e.g. 77 + 256 = 333 for the release."""
        return clip_tokens + self.config.depth * llm_tokens

    def forward(self, clip_embeds: torch.Tensor, llm_embeds: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        """Fuse; ``strength`` scales the LLM tokens the CAM appends (1.0 is the release)."""
        clip, llm = self._checked(clip_embeds, llm_embeds)
        if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not math.isfinite(float(strength)):
            # ComfyUI's JSON accepts NaN and Infinity and its range check lets NaN through
            raise FeatureMismatchError(f"strength must be a finite number, got {strength!r}")
        param = self.CrossFusionModule[0].q_proj.weight
        x = clip.to(param.device, param.dtype)
        llm = llm.to(param.device, param.dtype)
        for block in self.CrossFusionModule:
            x = block(x, llm)
        if strength != 1.0:
            x = torch.cat([x[:, : clip.shape[1]], x[:, clip.shape[1]:] * strength], dim=1)
        return x.to(clip_embeds.device, clip_embeds.dtype)

    def _checked(self, clip: torch.Tensor, llm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        for name, t, width in (("CLIP", clip, cfg.clip_dim), ("LLM", llm, cfg.llm_dim)):
            if not isinstance(t, torch.Tensor):
                raise FeatureMismatchError(f"{name} features must be a tensor, got {type(t).__name__}")
            if t.ndim != 3 or t.shape[1] == 0:
                raise FeatureMismatchError(f"{name} features must be [batch, tokens, {width}], got {list(t.shape)}")
            if not t.is_floating_point():
                raise FeatureMismatchError(f"{name} features must be floating point, got {t.dtype}")
            if t.shape[2] != width:
                raise FeatureMismatchError(
                    f"{name} features are {t.shape[2]} wide but this Cross-Adapter expects {width} "
                    f"(it was trained for CLIP {cfg.clip_dim} / LLM {cfg.llm_dim}); "
                    "use the adapter that matches this text encoder"
                )
        bc, bl = clip.shape[0], llm.shape[0]
        if bc != bl:
            if bc != 1 and bl != 1:
                raise FeatureMismatchError(
                    f"batch sizes do not match: {bc} CLIP prompts and {bl} LLM prompts "
                    "(one side may have batch 1, which is repeated for the other)"
                )
            batch = max(bc, bl)
            clip, llm = clip.expand(batch, -1, -1), llm.expand(batch, -1, -1)
        return clip, llm
