"""Scaled fp8 weights: float8_e4m3fn tensors with one float32 scale each, computed in a wider dtype.

The file convention is ComfyUI's for its scaled-fp8 text encoders (``comfy/ops.py``): a
``scaled_fp8`` marker key (an empty float8_e4m3fn tensor), and beside each quantized
``<layer>.weight`` a scalar ``<layer>.scale_weight``; the real weight is
``weight.float() * scale_weight``. Here the linear layers of the T5 encoder and its token embedding
are quantized (the embedding's scale is an addition of ours: ComfyUI scales linear layers only);
layer norms and the relative attention bias (a few hundred kB) stay float32.

At compute time each layer upcasts its own fp8 weight to the compute dtype of its input (bf16 on
GPUs and CPUs with native bf16, fp32 elsewhere) just for its matmul, so the model is never
dequantized whole: one layer's weight in the compute dtype at a time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
MARKER = "scaled_fp8"
SCALE = "scale_weight"


def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 tensor, float32 scalar scale) with ``q.float() * scale`` ~ ``weight``: the scale maps the
    largest magnitude to fp8's largest value (448), so nothing saturates; round to nearest."""
    w = weight.detach().to(torch.float32)
    amax = float(w.abs().max()) if w.numel() else 0.0
    scale = amax / FP8_MAX if amax > 0 else 1.0
    q = (w / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8)
    return q, torch.tensor(scale, dtype=torch.float32)


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return q.to(dtype) * scale.to(dtype)


def has_nan(q: torch.Tensor) -> bool:
    """float8_e4m3fn has no infinity; NaN is the bit pattern S.1111.111: 0x7F, the largest int8, or
    0xFF, the largest uint8. Two reductions, no temporaries."""
    if q.numel() == 0:
        return False
    flat = q.reshape(-1)
    return int(flat.view(torch.int8).max()) == 0x7F or int(flat.view(torch.uint8).max()) == 0xFF


class ScaledFP8Linear(nn.Module):
    """A bias-free or biased linear layer whose weight is fp8 with a per-tensor scale; computes in
    its input's dtype: ``linear(x, weight.to(x.dtype)) * scale`` (fp8 values are exact in bf16 and
    fp16, so only the matmul rounds)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=FP8, device=device),
                                   requires_grad=False)
        self.scale_weight = nn.Parameter(torch.ones((), dtype=torch.float32, device=device), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features, device=device), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The float32 0-dim scale is not cast to x's dtype: torch multiplies in float32 and returns
        # x's dtype (cast to bf16 first, a scale would be off by up to 0.2% in every layer).
        out = F.linear(x, self.weight.to(x.dtype)) * self.scale_weight
        return out if self.bias is None else out + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3fn scaled"


class ScaledFP8Embedding(nn.Module):
    """A token embedding stored in fp8 with a per-tensor scale; looks up rows, then upcasts only
    those to ``compute_dtype``."""

    def __init__(self, num_embeddings: int, embedding_dim: int, compute_dtype: torch.dtype, device=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.compute_dtype = num_embeddings, embedding_dim, compute_dtype
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim, dtype=FP8, device=device),
                                   requires_grad=False)
        self.scale_weight = nn.Parameter(torch.ones((), dtype=torch.float32, device=device), requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.weight.view(torch.uint8)).view(FP8)  # a byte gather works on every device
        return rows.to(self.compute_dtype) * self.scale_weight  # float32 math, compute_dtype result

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, fp8 e4m3fn scaled, computes in {self.compute_dtype}"


class T5FeedForward(nn.Module):
    """T5's feed-forward (gated or not) for fp8 weights. transformers' own casts its hidden state to
    ``wo.weight.dtype`` before ``wo``, which would be fp8 here; this keeps the compute dtype, or
    float32 for ``wo`` under fp16 compute (T5's overflow guard, as transformers keeps ``wo`` in fp32)."""

    def __init__(self, original: nn.Module, wo_dtype: torch.dtype | None):
        super().__init__()
        self.gated = hasattr(original, "wi_0")
        if self.gated:
            self.wi_0, self.wi_1 = original.wi_0, original.wi_1
        else:
            self.wi = original.wi
        self.wo, self.dropout, self.act, self.wo_dtype = original.wo, original.dropout, original.act, wo_dtype

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.gated:
            hidden = self.act(self.wi_0(hidden)) * self.wi_1(hidden)
        else:
            hidden = self.act(self.wi(hidden))
        hidden = self.dropout(hidden)
        if self.wo_dtype is not None:
            hidden = hidden.to(self.wo_dtype)
        return self.wo(hidden)


def use_scaled_fp8(model: nn.Module, fp8_weights: set[str], compute_dtype: torch.dtype) -> None:
    """Swap the modules of a T5 encoder (built on the meta device) whose ``.weight`` is in
    ``fp8_weights`` for their scaled-fp8 counterparts, in place; the state-dict keys stay the same
    (plus ``<layer>.scale_weight``)."""
    from transformers.models.t5.modeling_t5 import T5DenseActDense, T5DenseGatedActDense

    wo_dtype = torch.float32 if compute_dtype == torch.float16 else None
    for name, module in list(model.named_modules()):
        if isinstance(module, (T5DenseActDense, T5DenseGatedActDense)):
            _set(model, name, T5FeedForward(module, wo_dtype))
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and f"{name}.weight" in fp8_weights:
            _set(model, name, ScaledFP8Linear(module.in_features, module.out_features, module.bias is not None,
                                              device=module.weight.device))
    if "shared.weight" in fp8_weights:
        embedding = model.get_input_embeddings()
        model.set_input_embeddings(ScaledFP8Embedding(embedding.num_embeddings, embedding.embedding_dim,
                                                      compute_dtype, device=embedding.weight.device))


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)
