"""Convert a Cross-Adapter checkpoint (the release's ``projector.pth``) to ``.safetensors``.

    python -m llm4gen_core.convert projector.pth llm4gen_cam.safetensors [--heads 8]

The keys and tensors are kept exactly (checked bit for bit after writing); the head count and
dimensions are stored as metadata. A safetensors file loads without unpickling anything, so it
is the format to share.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .checkpoint import read_cross_adapter_file, save_cross_adapter
from .errors import LLM4GENError


def convert(src, dst, heads: int | None = None, overwrite: bool = False):
    """Convert ``src`` to safetensors at ``dst``; returns the config. Lossless, verified."""
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".safetensors":
        raise LLM4GENError(f"{dst}: the output must end in .safetensors")
    if dst.exists() and not overwrite:
        raise LLM4GENError(f"{dst} exists already (pass --overwrite to replace it)")
    if dst.resolve() == src.resolve():
        raise LLM4GENError(f"{dst}: output and input are the same file")
    state, cfg, recipe = read_cross_adapter_file(src, heads)
    tmp = dst.with_name(dst.name + ".partial")
    try:  # whatever goes wrong, the partial file goes and an existing dst stays as it was
        save_cross_adapter(state, tmp, cfg, source=str(src), recipe=recipe)  # an adapter's LLM recipe is kept
        try:
            written, cfg_back, recipe_back = read_cross_adapter_file(tmp)
        except LLM4GENError as exc:
            raise LLM4GENError(f"{dst}: the written file does not read back ({exc}); nothing was saved") from None
        same = written.keys() == state.keys() and all(
            written[k].dtype == v.dtype and torch.equal(written[k], v) for k, v in state.items()
        )
        if not same or cfg_back != cfg or recipe_back != recipe:
            raise LLM4GENError(f"{dst}: the written file does not read back identically; nothing was saved")
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)
    return cfg


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm4gen_core.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="CAM checkpoint: .pth/.pt/.bin (plain state dict) or .safetensors")
    parser.add_argument("dst", help="output .safetensors path")
    parser.add_argument("--heads", type=int, default=None, help="attention heads (default: from metadata, else 8)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    try:
        cfg = convert(args.src, args.dst, args.heads, args.overwrite)
    except LLM4GENError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.dst}: CLIP {cfg.clip_dim}, LLM {cfg.llm_dim}, FFN {cfg.ffn_dim}, "
          f"{cfg.heads} heads, depth {cfg.depth}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
