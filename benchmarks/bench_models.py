"""Random-weight models at the release's sizes, for the benchmarks (nothing is downloaded).

- ``random_t5_encoder(dims)``: a transformers ``T5EncoderModel`` made on the meta device and
  filled in place, so an XL one costs one copy of its weights (~4.9 GB fp32), not two.
- ``rankgen_folder(size)``: that encoder saved in RankGen's release layout (config.json with
  ``auto_map``, ``pytorch_model.bin`` with the encoder under ``t5_encoder.`` beside
  ``projection``, no tokenizer), cached under the test models' cache; what Load LLM reads.
- ``converted_file(size, dtype)``: that folder converted to one bf16 / fp16 / scaled-fp8 file.
- ``release_cam_file(folder, llm_dim)``: a Cross-Adapter with the release's dims and key names.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from scripts import comfyui_host, smoke_models

BUILDER_VERSION = "v2"  # v2: T5's own initialisation (see random_t5_encoder)
SIZES = {  # google/t5-v1_1-small and -xl encoders (RankGen's is the XL one)
    "small": dict(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6),
    "xl": dict(d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_heads=32),
    # The XL width with one layer: features of the release's shape for a fraction of the cost,
    # where only their shape matters (the UNet step comparison).
    "xl-1layer": dict(d_model=2048, d_kv=64, d_ff=5120, num_layers=1, num_heads=32),
}
NAMES = {"small": "t5-v1.1-small", "xl": "t5-xl (RankGen)", "xl-1layer": "t5-xl width, 1 layer"}


def random_t5_encoder(dims: dict, dtype: torch.dtype = torch.float32, device="cpu", seed: int = 0):
    """A T5EncoderModel with random weights, built in place, initialised as T5 initialises itself
    (transformers' T5PreTrainedModel._init_weights, factor 1): embedding N(0, 1); q N(0, 1/(d_model
    d_kv)), k and v N(0, 1/d_model), o N(0, 1/(heads d_kv)); wi N(0, 1/d_model), wo N(0, 1/d_ff);
    relative attention bias N(0, 1/d_model); layer norms 1.

    (v1 drew every matrix from N(0, 1/fan_in): attention scores then have a standard deviation of
    sqrt(d_kv) = 8, attention is nearly one-hot, and the network is chaotic (weights perturbed by
    0.1% gave features of cosine 0.94 to the originals after 8 layers), so no weight format could be
    compared on it. Timing does not depend on the values.)"""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=32128, feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, **dims)
    with torch.device("meta"):
        model = T5EncoderModel(config)
    model.set_input_embeddings(model.shared)
    model.to_empty(device=device)
    d, d_kv, heads, d_ff = config.d_model, config.d_kv, config.num_heads, config.d_ff
    stds = {"shared": 1.0, "q": (d * d_kv) ** -0.5, "k": d ** -0.5, "v": d ** -0.5, "o": (heads * d_kv) ** -0.5,
            "wi": d ** -0.5, "wi_0": d ** -0.5, "wi_1": d ** -0.5, "wo": d_ff ** -0.5, "relative_attention_bias": d ** -0.5}
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, stds[name.rsplit(".", 2)[-2]], generator=g)
    return model.to(dtype).eval().requires_grad_(False)


def write_rankgen_folder(folder: Path, model) -> Path:
    """RankGen's release layout around ``model`` (its tensors saved without a copy)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {**model.config.to_dict(), "architectures": ["T5EncoderWithProjection"],
              "auto_map": {"AutoModel": "modeling_rankgen.T5EncoderWithProjection"}, "is_encoder_decoder": True}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    state = {f"t5_encoder.{k}": v for k, v in model.state_dict().items()}
    state["t5_encoder.encoder.embed_tokens.weight"] = state["t5_encoder.shared.weight"]
    d = model.config.d_model
    state["projection.weight"] = torch.randn(d, d, generator=torch.Generator().manual_seed(9)) * d ** -0.5
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def rankgen_folder(size: str) -> Path:
    """A cached RankGen-layout folder of a random encoder of ``size`` (see SIZES); the XL one
    is 4.9 GB on disk and takes about a minute to build."""
    target = smoke_models.models_dir() / f"bench-rankgen-{size}-{BUILDER_VERSION}"
    if (target / "pytorch_model.bin").is_file():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model = random_t5_encoder(SIZES[size])
        write_rankgen_folder(tmp, model)
        del model
        for path in [tmp, *tmp.iterdir()]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


def converted_file(size: str, dtype: str) -> Path:
    """The cached RankGen folder of ``size`` converted by ``python -m llm4gen_core.convert llm`` to
    one ``.safetensors`` file in ``dtype`` (bf16, fp16, fp8), cached beside it (verified once, when
    written)."""
    from llm4gen_core.llm_convert import convert_llm

    folder = rankgen_folder(size)
    target = folder.parent / f"{folder.name}.{dtype}.safetensors"
    if not target.is_file():
        report = convert_llm(folder, target, dtype, log=lambda line: print(f"[convert] {line}", flush=True))
        print(f"[convert] wrote {target.name}: {report.bytes / 2**30:.2f} GiB in {report.seconds:.0f} s"
              + (f", fp8 cosine to fp32 {report.cosine_to_fp32}" if report.cosine_to_fp32 else ""), flush=True)
    return target


def release_cam_file(folder: Path, llm_dim: int = 2048) -> Path:
    """A random Cross-Adapter with the release's dims (CLIP 768, 8 heads, FFN 3072, depth 1)."""
    from llm4gen_core import CrossAdapterConfig, save_cross_adapter
    from scripts.smoke_models import cam_state

    cfg = CrossAdapterConfig(clip_dim=768, llm_dim=llm_dim, heads=8, ffn_dim=3072, depth=1)
    path = Path(folder) / f"cam-release-dims-{llm_dim}.safetensors"
    if not path.exists():
        save_cross_adapter(cam_state(cfg, seed=11), path, cfg)
    return path


def t5_tokenizer_folder() -> Path:
    """ComfyUI's bundled T5 tokenizer (the real T5 v1.1 vocabulary), which Load LLM falls back on."""
    return comfyui_host.comfyui_root() / "comfy" / "text_encoders" / "t5_tokenizer"
