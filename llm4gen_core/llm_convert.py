"""Convert a T5 encoder (RankGen's release folder, an HF T5 folder, a single weights file) into one
``.safetensors`` file in bf16, fp16 or scaled fp8, for Load LLM (LLM4GEN).

    python -m llm4gen_core.convert llm models/LLM/rankgen-t5-xl-all models/LLM/rankgen-t5-xl-bf16.safetensors --dtype bf16

- Only the encoder is kept (RankGen's ``projection``, a decoder, an LM head are dropped), under the
  key names of ``transformers.T5EncoderModel``.
- bf16 / fp16: every tensor in that dtype. fp8: the linear layers and the token embedding as
  float8_e4m3fn with a float32 ``scale_weight`` each and a ``scaled_fp8`` marker, ComfyUI's
  convention (:mod:`.fp8`); layer norms and the relative attention bias stay float32.
- The metadata holds the T5 config (``llm4gen.t5.config``, what the loader builds the model from),
  what the file holds (``llm4gen.weights``), the tokenizer it needs (``llm4gen.tokenizer*``: the
  source folder's own, by name and SHA-256, or the vocabulary size a T5 tokenizer must fit in) and
  how the release encodes with it (``llm4gen.llm.*``: the "pre " prefix, 256 tokens).
- The source is read tensor by tensor from memory-mapped files and the output written tensor by
  tensor (never all of it in memory), to ``<out>.partial``, which becomes ``<out>`` only once
  verified: every written tensor equals the source's in that dtype (fp8: the same quantization,
  bit for bit), and the file, loaded as Load LLM loads it, gives the same features (fp32 compute,
  fixed token ids) as the source with its weights in that dtype: equal for bf16/fp16, cosine
  >= 0.99999 for fp8 (whose layers scale after the matmul). For fp8 the features' cosine
  similarity to the fp32 source is reported too, and below :data:`FP8_MIN_COSINE` the file is
  refused.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import fp8
from .errors import LLM4GENError, LLMLoadError
from .llm_loading import (
    DECODER_TYPES, META_T5_CONFIG, T5_CONFIG_FIELDS, _checker, _encoder_only, load_t5_encoder, model_type_of,
    open_t5_encoder, weight_files,
)
from .recipe import LLMRecipe
from .tokenization import find_t5_tokenizer_file
from .weight_stream import WeightFiles

FORMATS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp8": fp8.FP8}
WEIGHTS_NAMES = {"bf16": "bf16", "fp16": "fp16", "fp8": "fp8 e4m3fn scaled"}
META_WEIGHTS = "llm4gen.weights"
FP8_MIN_COSINE = 0.98   # fp8 features vs the fp32 source, mean over the check's tokens: refused below
FP8_SAME_COSINE = 0.99999  # the fp8 file vs the source with the same fp8 weights (scaled before/after the matmul)
T5_V11_VOCAB = 32128
_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", fp8.FP8: "F8_E4M3"}


@dataclass
class Report:
    """What a conversion wrote and measured."""

    dst: Path
    weights: str
    tensors: int
    bytes: int
    source_bytes: int
    config: dict
    seconds: float = 0.0
    cosine_to_fp32: dict = field(default_factory=dict)  # fp8: features vs the fp32 source (mean, min)
    max_abs_diff: float = 0.0                           # the file vs the source in that dtype


def convert_llm(src, dst, dtype: str = "bf16", overwrite: bool = False, verify: bool = True, log=None) -> Report:
    """Write the T5 encoder at ``src`` to ``dst`` in ``dtype`` ("bf16", "fp16" or "fp8"), verified."""
    start = time.perf_counter()
    say = log or (lambda *_: None)
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if dtype not in FORMATS:
        raise LLM4GENError(f"--dtype must be one of {', '.join(FORMATS)}, got {dtype!r}")
    if dst.suffix != ".safetensors":
        raise LLM4GENError(f"{dst}: the output must end in .safetensors")
    if not src.exists():
        raise LLMLoadError(f"{src}: no such file or folder")
    if dst.exists() and not overwrite:
        raise LLM4GENError(f"{dst} exists already (pass --overwrite to replace it)")
    if dst.resolve() == src.resolve() or (src.is_dir() and dst.resolve().parent == src.resolve()):
        raise LLM4GENError(f"{dst}: write the output outside the source (it would be read as one of its files)")
    model_type, config = model_type_of(src) if src.is_dir() else (None, {})
    if model_type in DECODER_TYPES:
        raise LLMLoadError(f"{src}: a decoder-only LLM ({model_type}); only T5 encoders (RankGen, T5) are converted")
    files = [src] if src.is_file() else weight_files(src)
    tmp = dst.with_name(dst.name + ".partial")
    try:
        with WeightFiles(files, keep=_encoder_only) as weights:
            model, state, source_fp8 = open_t5_encoder(weights, src, config, torch.float32)
            if source_fp8:
                raise LLM4GENError(f"{src}: already scaled fp8; convert from the original (fp32/bf16/fp16) weights")
            t5_config = {k: getattr(model.config, k) for k in T5_CONFIG_FIELDS}
            quantized = _quantizable(model) if dtype == "fp8" else set()
            metadata = _metadata(src, dtype, t5_config)
            say(f"converting {src} -> {dst} ({WEIGHTS_NAMES[dtype]}, {len(state)} tensors)")
            layout = _layout(state, FORMATS[dtype], quantized)
            nbytes = _write(tmp, weights, state, layout, metadata)
            source_bytes = sum(math.prod(r.shape) * _itemsize(r.dtype) for r in state.values())
            if verify:
                say("verifying: every tensor ...")
                _verify_tensors(tmp, weights, state, layout)
        report = Report(dst, WEIGHTS_NAMES[dtype], len(layout), nbytes, source_bytes, t5_config)
        if verify:
            say("verifying: features of the written file against the source ...")
            _verify_features(tmp, src, config, dtype, quantized, report)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    report.seconds = time.perf_counter() - start
    return report


# ---- what goes where ----------------------------------------------------------------------------

def _quantizable(model) -> set[str]:
    """The weights fp8 stores quantized: every linear layer's and the token embedding's."""
    names = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return names | {"shared.weight"}


def _layout(state: dict, out_dtype: torch.dtype, quantized: set[str]) -> dict[str, tuple[str, torch.dtype, tuple]]:
    """Output key -> (source key, dtype, shape), ordered as in the file: widest dtypes first (every
    tensor starts aligned to its element size), then by name."""
    entries = {}
    for key, ref in state.items():
        if key in quantized:
            entries[key] = (key, fp8.FP8, tuple(ref.shape))
            entries[key[: -len("weight")] + fp8.SCALE] = (key, torch.float32, ())
        elif out_dtype == fp8.FP8:
            entries[key] = (key, torch.float32, tuple(ref.shape))  # norms, relative attention bias: a few kB
        else:
            entries[key] = (key, out_dtype, tuple(ref.shape))
    entries[fp8.MARKER] = ("", fp8.FP8, (0,)) if out_dtype == fp8.FP8 else None
    entries = {k: v for k, v in entries.items() if v is not None}
    return dict(sorted(entries.items(), key=lambda kv: (-_itemsize(kv[1][1]), kv[0])))


def _metadata(src: Path, dtype: str, t5_config: dict) -> dict[str, str]:
    meta = {"format": "pt", META_WEIGHTS: WEIGHTS_NAMES[dtype], META_T5_CONFIG: json.dumps(t5_config, sort_keys=True),
            "llm4gen.source": src.name, "llm4gen.converted_by": "python -m llm4gen_core.convert llm"}
    vocab = int(t5_config["vocab_size"])
    meta["llm4gen.tokenizer.vocab_size"] = str(vocab)
    tokenizer = find_t5_tokenizer_file(src) if src.is_dir() else None
    if tokenizer is not None:
        meta["llm4gen.tokenizer"] = f"the source folder's {tokenizer.name} (not included: keep it beside the file's " \
                                    "source or point Load LLM at an identical one)"
        meta["llm4gen.tokenizer.file"] = tokenizer.name
        meta["llm4gen.tokenizer.sha256"] = hashlib.sha256(tokenizer.read_bytes()).hexdigest()
    elif vocab == T5_V11_VOCAB:
        meta["llm4gen.tokenizer"] = ("T5 v1.1 sentencepiece (32,000 pieces + 100 extra ids, google/t5-v1_1-xl), "
                                     "the one ComfyUI ships in comfy/text_encoders/t5_tokenizer")
    else:
        meta["llm4gen.tokenizer"] = f"a T5 sentencepiece tokenizer of at most {vocab} tokens (the source had none)"
    meta.update(LLMRecipe(kind="t5-encoder", llm_name=src.name).to_metadata())
    return meta


# ---- writing ------------------------------------------------------------------------------------

def _write(path: Path, weights: WeightFiles, state: dict, layout: dict, metadata: dict) -> int:
    """A safetensors file, header first, then each tensor at its offset as it is made."""
    header, offset, offsets = {"__metadata__": metadata}, 0, {}
    for key, (_, dtype, shape) in layout.items():
        size = math.prod(shape) * _itemsize(dtype)
        header[key] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offsets[key] = offset
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    base = 8 + len(raw)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        f.truncate(base + offset)
        for key, (source_key, dtype, _) in layout.items():
            if key == fp8.MARKER or key.endswith("." + fp8.SCALE):
                continue
            ref = state[source_key]
            f.seek(base + offsets[key])
            if dtype == fp8.FP8:
                q, scale = _quantize(weights, ref)
                _write_tensor(f, q)
                f.seek(base + offsets[key[: -len("weight")] + fp8.SCALE])
                _write_tensor(f, scale)
            else:
                for part in weights.read_chunks(ref, _checker(ref)):
                    out = part.to(dtype)
                    if not bool(torch.isfinite(out).all()):
                        raise LLM4GENError(f"{ref.path}: {ref.key} has values beyond {dtype}'s range "
                                           f"(largest {float(part.abs().max()):.3g}); use bf16")
                    _write_tensor(f, out)
        f.flush()
        os.fsync(f.fileno())
    return base + offset


def _quantize(weights: WeightFiles, ref) -> tuple[torch.Tensor, torch.Tensor]:
    """The fp8 tensor and its scale for a source weight, read twice in chunks (its largest
    magnitude first), so only the fp8 result is held whole."""
    amax = 0.0
    for part in weights.read_chunks(ref, _checker(ref)):
        amax = max(amax, float(part.abs().max()) if part.numel() else 0.0)
    scale = amax / fp8.FP8_MAX if amax > 0 else 1.0
    q = torch.empty(ref.shape, dtype=fp8.FP8)
    row = 0
    for part in weights.read_chunks(ref):
        q[row:row + part.shape[0]] = (part.to(torch.float32) / scale).clamp_(-fp8.FP8_MAX, fp8.FP8_MAX).to(fp8.FP8)
        row += part.shape[0]
    return q, torch.tensor(scale, dtype=torch.float32)


def _write_tensor(f, t: torch.Tensor) -> None:
    if t.numel():
        f.write(t.contiguous().reshape(-1).view(torch.uint8).numpy().data)


def _itemsize(dtype) -> int:
    return torch.empty((), dtype=dtype).element_size() if isinstance(dtype, torch.dtype) else 0


# ---- verifying ----------------------------------------------------------------------------------

def _verify_tensors(path: Path, weights: WeightFiles, state: dict, layout: dict) -> None:
    """Every written tensor equals what the source gives in that dtype, bit for bit."""
    with WeightFiles([path]) as written:
        if set(written.refs) != set(layout):
            raise LLM4GENError(f"{path}: the written file's tensors are not the ones planned")
        for key, (source_key, dtype, shape) in layout.items():
            ref = written.refs[key]
            if ref.dtype != dtype or tuple(ref.shape) != shape:
                raise LLM4GENError(f"{path}: {key} was written as {ref.dtype} {tuple(ref.shape)}, not {dtype} {shape}")
            if key == fp8.MARKER or key.endswith("." + fp8.SCALE):
                continue
            got = written.load(ref, dtype)
            if dtype == fp8.FP8:
                want, scale = _quantize(weights, state[source_key])
                got_scale = written.load(written.refs[key[: -len("weight")] + fp8.SCALE], torch.float32)
                same = torch.equal(got_scale, scale) and torch.equal(got.view(torch.uint8), want.view(torch.uint8))
            else:
                want = weights.load(state[source_key], dtype)
                same = torch.equal(got.reshape(-1).view(torch.uint8), want.reshape(-1).view(torch.uint8))
            if not same:
                raise LLM4GENError(f"{path}: {key} does not read back as written; nothing was saved")


def check_ids(vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed token ids for comparing features (no tokenizer needed): 3 rows of 48 tokens, the last
    half padding in one row, ending in ``</s>`` as T5 inputs do."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (3, 48), generator=g)
    ids[:, -1] = 1
    mask = torch.ones_like(ids)
    ids[2, 24:], mask[2, 24:] = 0, 0
    ids[2, 23] = 1
    return ids, mask


def _features(model, ids, mask) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state.float()


def _cosines(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    keep = mask.bool()
    return torch.nn.functional.cosine_similarity(a[keep].double(), b[keep].double(), dim=-1)


def _verify_features(path: Path, src: Path, config: dict, dtype: str, quantized: set[str], report: Report) -> None:
    """The written file, loaded as Load LLM loads it (fp32 compute), gives the features of the
    source with its weights in that dtype; fp8's distance to the fp32 source is measured."""
    source = load_t5_encoder(src, torch.float32, config)
    ids, mask = check_ids(source.config.vocab_size)
    exact = _features(source, ids, mask)
    with torch.no_grad():
        for name, p in source.named_parameters():
            if dtype == "fp8":
                if name in quantized:
                    p.copy_(fp8.dequantize(*fp8.quantize(p)))
            else:
                p.copy_(p.to(FORMATS[dtype]).to(torch.float32))
    in_dtype = _features(source, ids, mask)
    del source
    written = load_t5_encoder(path, torch.float32)
    got = _features(written, ids, mask)
    del written
    report.max_abs_diff = float((got - in_dtype).abs().max())
    if dtype == "fp8":
        same = _cosines(got, in_dtype, mask)
        if float(same.min()) < FP8_SAME_COSINE:
            raise LLM4GENError(f"{path}: the written fp8 file gives other features than the source quantized the same "
                               f"way (cosine {float(same.min()):.6f}); nothing was saved")
        to_fp32 = _cosines(got, exact, mask)
        report.cosine_to_fp32 = {"mean": float(to_fp32.mean()), "min": float(to_fp32.min())}
        if report.cosine_to_fp32["mean"] < FP8_MIN_COSINE:
            raise LLM4GENError(f"{path}: fp8 features are too far from the fp32 source (cosine mean "
                               f"{report.cosine_to_fp32['mean']:.4f} < {FP8_MIN_COSINE}); nothing was saved; use bf16")
    elif not torch.equal(got, in_dtype):
        raise LLM4GENError(f"{path}: the written file gives other features than the source in {dtype} (largest "
                           f"difference {report.max_abs_diff:.3g}); nothing was saved")
