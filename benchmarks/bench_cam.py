"""What the Cross-Adapter costs, next to what the UNet costs, measured side by side in one run.

    .venv/bin/python -m benchmarks.bench_cam [--device cpu|cuda] [--dtype fp32|bf16|fp16]

Prints, for batch 1, 2 and 4 at the release's dims (CLIP 77x768, LLM 256x2048, 8 heads):
the CAM fuse time, the time of one SD1.5 cross-attention layer at 512x512 (64x64 latent,
320 channels, 8 heads, the fused 333-token context), and their ratio. The CAM runs once per
prompt; a UNet call runs 16 cross-attention layers (5 at this resolution) besides everything
else, and sampling makes one call per step. Random weights.
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from llm4gen_core import CrossAdapter, CrossAdapterConfig

from . import common

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class CrossAttentionLayer(torch.nn.Module):
    """SD1.5's cross-attention at the 64x64 latent: 4096 queries of 320, context of 768."""

    def __init__(self, dim=320, context_dim=768, heads=8):
        super().__init__()
        self.heads = heads
        self.to_q = torch.nn.Linear(dim, dim, bias=False)
        self.to_k = torch.nn.Linear(context_dim, dim, bias=False)
        self.to_v = torch.nn.Linear(context_dim, dim, bias=False)
        self.to_out = torch.nn.Linear(dim, dim)

    def forward(self, x, context):
        b, t, d = x.shape
        q, k, v = (p.view(b, -1, self.heads, d // self.heads).transpose(1, 2)
                   for p in (self.to_q(x), self.to_k(context), self.to_v(context)))
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        return self.to_out(a)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.manual_seed(0)
    cam = CrossAdapter(CrossAdapterConfig()).eval().to(device, dtype)
    attn = CrossAttentionLayer().eval().to(device, dtype)
    print(f"CAM vs one SD1.5 cross-attention layer | device {device} | {args.dtype} | "
          f"torch {torch.__version__} | {torch.get_num_threads()} threads | median of {args.repeats}, interleaved")
    print(f"{'batch':>5} {'CAM fuse (ms)':>14} {'x-attn layer, 333 ctx (ms)':>27} {'CAM / layer':>12}")
    rows = []
    with torch.inference_mode():
        for batch in (1, 2, 4):
            clip = torch.randn(batch, 77, 768, device=device, dtype=dtype)
            llm = torch.randn(batch, 256, 2048, device=device, dtype=dtype)
            latent = torch.randn(batch, 64 * 64, 320, device=device, dtype=dtype)
            context = cam(clip, llm)
            times = common.interleaved({"cam": lambda: cam(clip, llm), "attn": lambda: attn(latent, context)},
                                       args.repeats, device)
            t_cam, t_attn = common.fastest_median(times["cam"])[1], common.fastest_median(times["attn"])[1]
            print(f"{batch:>5} {t_cam * 1e3:>14.2f} {t_attn * 1e3:>27.2f} {t_cam / t_attn:>12.2f}")
            rows.append({"batch": batch, "cam_median": t_cam, "xattn_layer_median": t_attn})
    print("The CAM runs once per prompt; each UNet call runs 5 layers like this one at 64x64 "
          "(16 cross-attention layers in all), once per sampling step.")
    common.write_json(args.json, {"machine": common.machine(), "device": str(device), "dtype": args.dtype, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
