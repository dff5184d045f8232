"""Scaled fp8 weights (llm4gen_core.fp8): quantization, NaN detection, and the layers computing in
their input's dtype without rounding the scale."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from llm4gen_core import fp8


def test_quantize_maps_the_largest_magnitude_to_448_and_rounds_to_nearest():
    w = torch.randn(64, 48, generator=torch.Generator().manual_seed(0)) * 0.02
    q, scale = fp8.quantize(w)
    assert q.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32 and scale.dim() == 0
    assert float(q.float().abs().max()) == 448.0
    back = fp8.dequantize(q, scale)
    # e4m3 keeps 3 mantissa bits: round to nearest is within 1/16 of the value (normal range)
    normal = w.abs() > float(scale) * 2 ** -6
    assert bool(((back - w).abs()[normal] <= w.abs()[normal] / 16 + 1e-12).all())
    assert torch.nn.functional.cosine_similarity(back.flatten(), w.flatten(), dim=0) > 0.999
    zeros, one = fp8.quantize(torch.zeros(3, 3))
    assert float(one) == 1.0 and not bool(zeros.float().any())


def test_has_nan_sees_both_nan_patterns_and_nothing_else():
    q = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn)
    assert fp8.has_nan(q)
    finite = q.view(torch.uint8)[(q.view(torch.uint8) & 0x7F) != 0x7F].view(torch.float8_e4m3fn)
    assert finite.numel() == 254 and not fp8.has_nan(finite)
    for byte in (0x7F, 0xFF):
        t = finite.clone()
        t.view(torch.uint8)[10] = byte
        assert fp8.has_nan(t)
    assert not fp8.has_nan(torch.empty(0, dtype=torch.float8_e4m3fn))


def test_linear_computes_in_its_inputs_dtype_with_the_scale_in_float32():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(40, 24, generator=g) * 0.05
    layer = fp8.ScaledFP8Linear(24, 40)
    q, scale = fp8.quantize(w)
    scale = torch.tensor(float(scale) * 1.0013)  # a scale bf16 cannot hold exactly
    layer.weight.data, layer.scale_weight.data = q, scale
    x = torch.randn(5, 24, generator=g)
    torch.testing.assert_close(layer(x), F.linear(x, q.float() * scale), rtol=1e-5, atol=1e-6)
    xb = x.to(torch.bfloat16)
    out = layer(xb)
    assert out.dtype == torch.bfloat16
    expected = (F.linear(xb, q.to(torch.bfloat16)).float() * scale).to(torch.bfloat16)
    assert torch.equal(out, expected)


def test_embedding_upcasts_only_the_rows_it_looks_up():
    table = torch.randn(10, 6, generator=torch.Generator().manual_seed(2))
    q, scale = fp8.quantize(table)
    emb = fp8.ScaledFP8Embedding(10, 6, torch.float32)
    emb.weight.data, emb.scale_weight.data = q, scale
    ids = torch.tensor([[3, 0, 9]])
    got = emb(ids)
    assert got.dtype == torch.float32 and torch.equal(got, fp8.dequantize(q, scale)[ids])
    emb.compute_dtype = torch.bfloat16
    assert emb(ids).dtype == torch.bfloat16
