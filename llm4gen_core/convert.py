"""Convert model files to ``.safetensors``.

    python -m llm4gen_core.convert projector.pth llm4gen_cam.safetensors [--heads 8]
    python -m llm4gen_core.convert llm <RankGen or HF T5 folder> rankgen-t5-xl-fp8.safetensors --dtype bf16|fp16|fp8

A Cross-Adapter checkpoint (the release's ``projector.pth``): the keys and tensors are kept exactly
(checked bit for bit after writing); the head count and dimensions are stored as metadata. A
safetensors file loads without unpickling anything, so it is the format to share.

``llm``: the LLM's T5 encoder alone, in bf16, fp16 or scaled fp8, with its config and tokenizer
needs in the metadata, verified after writing (see :mod:`.llm_convert`); Load LLM (LLM4GEN) reads it
as a single file.
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


def main_llm(argv) -> int:
    from .llm_convert import FP8_MIN_COSINE, FORMATS, convert_llm

    parser = argparse.ArgumentParser(
        prog="python -m llm4gen_core.convert llm",
        description="Write an LLM's T5 encoder (RankGen's release folder, an HF T5 folder or a weights file) as one "
                    ".safetensors file in bf16, fp16 or scaled fp8, verified after writing.")
    parser.add_argument("src", help="RankGen or HF T5 folder (config.json + weights), or a single weights file")
    parser.add_argument("dst", help="output .safetensors path")
    parser.add_argument("--dtype", choices=list(FORMATS), default="bf16",
                        help="bf16 (half the memory, lossless enough: cosine > 0.999), fp16, or fp8 (a quarter; "
                             f"refused if its features' cosine to fp32 falls below {FP8_MIN_COSINE})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    try:
        report = convert_llm(args.src, args.dst, args.dtype, args.overwrite, log=lambda line: print(line, flush=True))
    except LLM4GENError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    cfg = report.config
    print(f"wrote {report.dst}: T5 encoder, {cfg['num_layers']} layers, d_model {cfg['d_model']}, {report.weights}, "
          f"{report.bytes / 2**30:.2f} GiB ({report.bytes / report.source_bytes:.2f}x the source's "
          f"{report.source_bytes / 2**30:.2f} GiB), in {report.seconds:.0f} s")
    if report.cosine_to_fp32:
        print(f"verified: the same features as the source quantized the same way; cosine to the fp32 source "
              f"mean {report.cosine_to_fp32['mean']:.5f}, min {report.cosine_to_fp32['min']:.5f}")
    else:
        print(f"verified: every tensor, and the features (identical to the source's in {args.dtype})")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "llm":
        return main_llm(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m llm4gen_core.convert", description=__doc__.split("\n\n")[0],
                                     epilog="python -m llm4gen_core.convert llm --help: convert an LLM (T5 encoder)")
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
