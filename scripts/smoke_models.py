"""Small random stand-ins for every model the bundled workflows load, made locally.

The headless runner (scripts/run_workflow.py) uses them in smoke mode, when the real files are
not in the model folders: each stand-in is placed under the SAME file name the workflow names,
in a separate smoke base directory, so the workflow runs unchanged on random weights. The tests
(tests/synthetic/sd15.py, llm.py, cam.py re-export these builders) and the benchmarks use the
same files.

Nothing is downloaded. SD1.5 parts are instantiated from ComfyUI's own classes (UNet
``comfy.supported_models.SD15`` -> ``BaseModel``, CLIP ``comfy.sd1_clip.SD1ClipModel``, VAE
``AutoencoderKL``, ControlNet ``comfy.cldm.cldm.ControlNet``), given small seeded random weights
and saved under the standard key names, so loaders see exactly what real files look like. The
LLM is a tiny T5 encoder in the RankGen folder layout; the Cross-Adapter has the release's keys.

Files are cached in ``cache_dir()/models``, named by ``BUILDER_VERSION`` (bump it when a
builder changes so the cache rebuilds), and written atomically (temp file + ``os.replace``).

- ``small_sd15_checkpoint()``: the smallest checkpoint ComfyUI still detects as SD1.5 (UNet with
  one level; full-size CLIP and VAE), ~465 MB.
- ``full_sd15_checkpoint()``: full-size SD1.5 (2.1 GB; only when asked for).
- ``diffusers_unet(checkpoint)`` / ``small_diffusers_unet()``: a diffusers-format UNet (the
  layout of the LLM4GEN release's ``unet/``). ComfyUI recognises diffusers UNets only by
  comparing with a fixed list of layouts; the smallest one it loads as SD1.5 is SD-XS's (632 MB).
- ``small_sd15_controlnet()`` / ``xs_sd15_controlnet()``: random SD1.5 ControlNets matching the
  small checkpoint's UNet and the SD-XS UNet respectively.
- ``clip_l_file(checkpoint)`` / ``vae_file(checkpoint)``: a checkpoint's CLIP-L and VAE alone.
- ``xs_sd15_lora()``: a LoRA for the SD-XS UNet's cross-attention and CLIP-L's attention.
- ``tiny_t5_encoder`` / ``tiny_t5_rankgen_folder``: a tiny T5 encoder, saved in RankGen's layout.
- ``tiny_spm_tokenizer(folder)``: a T5-style sentencepiece tokenizer trained on a tiny corpus.
- ``cam_state(cfg, seed)``: a random Cross-Adapter state dict with the release's keys.
- ``tiny_sdxl_unet()`` / ``tiny_sdxl_controlnet()`` / ``tiny_sdxl_clip_l()`` / ``tiny_sdxl_clip_g()`` /
  ``tiny_sdxl_projector()``: an SDXL-architecture UNet that ComfyUI's own detection takes for
  SDXL, a ControlNet for it, its two text encoders at full width but 3 layers deep, and a
  Cross-Adapter for SDXL's 2048-wide CLIP tokens (see ``TINY_SDXL_UNET``).
- ``tiny_sdxl_checkpoint()``: one SDXL checkpoint file (that UNet, SDXL's text encoders at full
  size, the SD VAE) that stock CheckpointLoaderSimple loads as SDXL, ~2.1 GB: smoke mode's
  stand-in for a checkpoint whose name says SDXL (``is_sdxl_name``), beside ``tiny_sdxl_projector()``.

Command line (what the runner calls, so that torch and ComfyUI stay out of its own process)::

    python -m scripts.smoke_models BASE_DIR FOLDER/NAME ...   # e.g. diffusion_models/x.safetensors
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from . import comfyui_host

BUILDER_VERSION = "v2"

# detect_unet_config's reading of a real SD1.5 UNet (comfy/model_detection.py).
SD15_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
    "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
    "context_dim": 768, "num_heads": 8, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
# One level, one res block, one transformer: still matches ComfyUI's SD15 config.
SMALL_UNET = {**SD15_UNET, "num_res_blocks": [1], "channel_mult": [1], "transformer_depth": [1],
              "transformer_depth_output": [1, 1]}
# The SD-XS layout, the smallest one ComfyUI's diffusers-UNet detection maps to SD15.
XS_UNET = {**SD15_UNET, "num_res_blocks": [1, 1, 1], "channel_mult": [1, 2, 4],
           "transformer_depth": [0, 1, 1], "transformer_depth_output": [0, 0, 1, 1, 1, 1],
           "transformer_depth_middle": -2, "num_head_channels": 64}
# The smallest UNet ComfyUI's detection (comfy/model_detection.py) still takes for SDXL. It
# matches a UNet to SDXL by model_channels, use_linear_in_transformer, the transformer depth of
# each encoder res block ([0, 0, 2, 2, 10, 10]), context_dim 2048 and adm_in_channels 2816; not
# by channel_mult, nor the middle block's or the decoder's depths. So every level stays 320 wide
# (SDXL: 320/640/1280) and only the encoder has transformers (SDXL: the middle block and decoder
# too): 140M parameters, not 2.6B. Each transformer reads the whole context (its cross-attention
# keys and values), so their number, not the latent size, sets the cost of a call.
TINY_SDXL_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
    "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
    "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
    "channel_mult": [1, 1, 1], "transformer_depth_middle": -1, "use_linear_in_transformer": True,
    "context_dim": 2048, "transformer_depth_output": [0] * 9, "num_heads": -1,
    "num_head_channels": 64, "use_temporal_attention": False, "use_temporal_resblock": False,
}
# Layers of each tiny SDXL text encoder: the fewest ComfyUI's SDXL CLIP accepts, as it reads the
# penultimate layer's output (layer_idx -2 must be shallower than the last). Widths stay SDXL's:
# CLIP-L 768 + OpenCLIP bigG 1280 = 2048 per token, bigG's projected pooled output 1280.
TINY_SDXL_TEXT_LAYERS = 3
# ComfyUI's SD1.x VAE (comfy/sd.py).
SD_VAE = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
          "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
# A tiny T5 v1.1-style encoder (gated-gelu, like RankGen's T5-XL, at d_model 32).
T5_TINY = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=32,
               feed_forward_proj="gated-gelu")
RANKGEN_VOCAB = 32128  # T5's real vocabulary size, so ComfyUI's T5 tokenizer fits it as it fits RankGen


def models_dir() -> Path:
    path = comfyui_host.cache_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- SD1.5 parts ------------------------------------------------------------------------------

def small_sd15_checkpoint() -> Path:
    """Smallest checkpoint CheckpointLoaderSimple detects as SD1.5 (seconds to build)."""
    return _cached(f"sd15-small-{BUILDER_VERSION}.safetensors",
                   lambda path: _write_checkpoint(path, SMALL_UNET, seed=1))


def full_sd15_checkpoint() -> Path:
    """Full-size random SD1.5 (2.1 GB, ~20 s to build, ~6.5 GB RAM to run a graph on)."""
    return _cached(f"sd15-full-{BUILDER_VERSION}.safetensors",
                   lambda path: _write_checkpoint(path, SD15_UNET, seed=2))


def diffusers_unet(checkpoint: str | os.PathLike) -> Path:
    """The checkpoint's UNet as ``<cache>/<stem>.diffusers-unet/diffusion_pytorch_model.safetensors``
    (cached by the checkpoint's file name: meant for the builders' own checkpoints).

    Raises ValueError when ComfyUI could not load that UNet layout in diffusers form (it only
    knows a fixed list of them; the small checkpoint's one-level UNet is not among them)."""
    checkpoint = Path(checkpoint)
    folder = f"{checkpoint.stem}.diffusers-unet"
    return _cached(f"{folder}/diffusion_pytorch_model.safetensors",
                   lambda path: _write_diffusers_unet(path, _read_prefixed(checkpoint, "model.diffusion_model.")))


def small_diffusers_unet() -> Path:
    """Smallest diffusers-format UNet that UNETLoader loads as SD1.5 (SD-XS layout, 632 MB)."""
    def build(path):
        torch, _ = _comfy()
        _write_diffusers_unet(path, _unet_state(XS_UNET, seed=3, dtype=torch.float16))
    return _cached(f"sd15-xs-{BUILDER_VERSION}.diffusers-unet/diffusion_pytorch_model.safetensors", build)


def small_sd15_controlnet() -> Path:
    """ControlNet matching small_sd15_checkpoint()'s UNet (RGB hint), ~30 MB."""
    return _cached(f"sd15-small-controlnet-{BUILDER_VERSION}.safetensors",
                   lambda path: _write_controlnet(path, SMALL_UNET, seed=4))


def xs_sd15_controlnet() -> Path:
    """ControlNet matching small_diffusers_unet()'s SD-XS layout (RGB hint)."""
    return _cached(f"sd15-xs-controlnet-{BUILDER_VERSION}.safetensors",
                   lambda path: _write_controlnet(path, XS_UNET, seed=5))


def clip_l_file(checkpoint: str | os.PathLike) -> Path:
    """The checkpoint's CLIP ViT-L text encoder with transformers' key names (``text_model.*``)."""
    checkpoint = Path(checkpoint)
    return _cached(f"{checkpoint.stem}.clip_l.safetensors",
                   lambda path: _save(_read_prefixed(checkpoint, "cond_stage_model.transformer."), path))


def vae_file(checkpoint: str | os.PathLike) -> Path:
    """The checkpoint's VAE as a standalone file (``encoder.*``, ``decoder.*``, ...)."""
    checkpoint = Path(checkpoint)
    return _cached(f"{checkpoint.stem}.vae.safetensors",
                   lambda path: _save(_read_prefixed(checkpoint, "first_stage_model."), path))


def xs_sd15_lora(rank: int = 4) -> Path:
    """A LoRA in the common kohya naming (``lora_unet_*`` with diffusers block names,
    ``lora_te_*``) for every cross-attention key/value projection of the SD-XS UNet and the
    query/value projections of CLIP-L: every key matches a weight ComfyUI patches."""
    def build(path):
        import torch
        from safetensors import safe_open

        g = torch.Generator().manual_seed(6)
        shapes = {}
        with safe_open(str(small_diffusers_unet()), framework="pt") as f:
            for key in f.keys():
                if key.endswith(("attn2.to_k.weight", "attn2.to_v.weight")):
                    shapes["lora_unet_" + key[: -len(".weight")].replace(".", "_")] = f.get_slice(key).get_shape()
        for layer in range(12):
            for proj in ("q_proj", "v_proj"):
                shapes[f"lora_te_text_model_encoder_layers_{layer}_self_attn_{proj}"] = [768, 768]
        state = {}
        for name, (out_dim, in_dim) in sorted(shapes.items()):
            state[f"{name}.lora_down.weight"] = (torch.randn(rank, in_dim, generator=g) / in_dim ** 0.5).half()
            state[f"{name}.lora_up.weight"] = (0.1 * torch.randn(out_dim, rank, generator=g) / rank ** 0.5).half()
            state[f"{name}.alpha"] = torch.tensor(float(rank)).half()
        _save(state, path, {"llm4gen_synthetic": "random LoRA for the SD-XS UNet and CLIP-L"})
    return _cached(f"sd15-xs-lora-{BUILDER_VERSION}.safetensors", build)


# --- SDXL parts ------------------------------------------------------------------------------

def tiny_sdxl_unet() -> Path:
    """``TINY_SDXL_UNET`` with random weights in ComfyUI's (ldm) key layout, fp16 as SDXL files
    ship: stock UNETLoader detects it as SDXL (``comfy.model_base.SDXL``), ~280 MB."""
    def build(path):
        torch, _ = _comfy()
        _save(_unet_state(TINY_SDXL_UNET, seed=21, dtype=torch.float16, sdxl=True), path,
              {"llm4gen_synthetic": f"random SDXL-architecture UNet {json.dumps(TINY_SDXL_UNET)}"})
    return _cached(f"sdxl-tiny-unet-{BUILDER_VERSION}.safetensors", build)


def tiny_sdxl_controlnet() -> Path:
    """A ControlNet for tiny_sdxl_unet() (RGB hint, SDXL's ``y`` input), ~220 MB."""
    return _cached(f"sdxl-tiny-controlnet-{BUILDER_VERSION}.safetensors",
                   lambda path: _write_controlnet(path, TINY_SDXL_UNET, seed=22))


def tiny_sdxl_clip_l() -> Path:
    """SDXL's first text encoder (CLIP ViT-L, 768 wide), ``TINY_SDXL_TEXT_LAYERS`` deep, with
    transformers' key names (``text_model.*``), fp16."""
    return _cached(f"sdxl-tiny-clip_l-{BUILDER_VERSION}.safetensors",
                   lambda path: _write_sdxl_text_encoder(path, "clip_l", seed=23))


def tiny_sdxl_clip_g() -> Path:
    """SDXL's second text encoder (OpenCLIP bigG, 1280 wide, with its text projection),
    ``TINY_SDXL_TEXT_LAYERS`` deep, with transformers' key names (``text_model.*``,
    ``text_projection.weight``), fp16."""
    return _cached(f"sdxl-tiny-clip_g-{BUILDER_VERSION}.safetensors",
                   lambda path: _write_sdxl_text_encoder(path, "clip_g", seed=24))


def tiny_sdxl_checkpoint() -> Path:
    """An SDXL checkpoint (one file, as ``sd_xl_base_1.0.safetensors`` is) that stock
    CheckpointLoaderSimple loads as SDXL: ``TINY_SDXL_UNET``, with SDXL's two text encoders at
    their FULL size (CLIP-L 12 layers, OpenCLIP bigG 32 layers, 817M parameters) and the SD VAE,
    random, fp16, ~2.1 GB. The text encoders cannot be shrunk here: ComfyUI builds an SDXL
    checkpoint's CLIP at the real depth whatever the file holds (missing layers would stay
    uninitialised), and DualCLIPLoader tells bigG by its 31st layer. Built once and cached
    (~1 minute); the smoke runner's SDXL stand-in."""
    return _cached(f"sdxl-tiny-checkpoint-{BUILDER_VERSION}.safetensors",
                   lambda path: _write_checkpoint(path, TINY_SDXL_UNET, seed=26, sdxl=True))


def tiny_sdxl_projector() -> Path:
    """A Cross-Adapter for SDXL's per-token CLIP context (2048 wide: CLIP-L + bigG) and
    tiny_rankgen()'s width, random, as ``llm4gen_core`` writes adapters (safetensors, heads and
    dims in the metadata): 8 heads of 256, one block, FFN 2048 (kept small: the nodes read every
    size from the file), ~100 MB."""
    def build(path):
        from llm4gen_core.cam import CrossAdapterConfig
        from llm4gen_core.checkpoint import save_cross_adapter

        cfg = CrossAdapterConfig(clip_dim=2048, llm_dim=T5_TINY["d_model"], heads=8, ffn_dim=2048, depth=1)
        save_cross_adapter(cam_state(cfg, seed=25), path, cfg)
    return _cached(f"cam-sdxl-tiny-{BUILDER_VERSION}.safetensors", build)


# --- the LLM and the Cross-Adapter ------------------------------------------------------------

def tiny_t5_encoder(seed: int = 0, vocab_size: int = 512, **overrides):
    """A random ``transformers.T5EncoderModel`` in eval mode, its embedding tied as T5's is."""
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(vocab_size=vocab_size, **{**T5_TINY, **overrides})
    model = T5EncoderModel(config)
    model.set_input_embeddings(model.shared)
    with torch.no_grad():  # non-trivial norms, so a mixed-up weight shows in the numbers
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    return model.eval()


def t5_state(model) -> dict:
    """The encoder's tensors under HF names, with both embedding keys (as transformers 4.x saved)."""
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    state["encoder.embed_tokens.weight"] = state["shared.weight"]
    return state


def tiny_t5_rankgen_folder(folder, model, fmt: str = "bin", tokenizer_from=None, config_style: str = "release") -> Path:
    """RankGen's layout (kalpeshk2011/rankgen-t5-*): custom code, the encoder under ``t5_encoder.``
    beside a ``projection`` layer, no tokenizer.

    config_style "release": config.json as RankGen ships it (a T5 config plus ``auto_map`` to its
    T5EncoderWithProjection); "custom": a config.json that is no T5 config at all, so the T5
    config must come from the tensor shapes.
    """
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    custom = {"architectures": ["T5EncoderWithProjection"],
              "auto_map": {"AutoModel": "modeling_rankgen.T5EncoderWithProjection"}}
    if config_style == "release":
        config = {**model.config.to_dict(), **custom, "is_encoder_decoder": True, "transformers_version": "4.20.1"}
    else:
        config = {**custom, "model_type": "rankgen", "model_size": "xl"}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    # The custom code a user must never need: its presence proves it is not run.
    (folder / "modeling_rankgen.py").write_text("raise RuntimeError('custom model code was executed')\n")
    state = {f"t5_encoder.{k}": v for k, v in t5_state(model).items()}
    d_model = model.config.d_model
    state["projection.weight"] = torch.randn(d_model, d_model, generator=torch.Generator().manual_seed(9))
    if fmt == "bin":
        torch.save(state, folder / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        del state["t5_encoder.encoder.embed_tokens.weight"]  # safetensors refuses shared storage
        save_file(state, folder / "model.safetensors")
    if tokenizer_from is not None:
        (folder / "spiece.model").write_bytes((Path(tokenizer_from) / "spiece.model").read_bytes())
    return folder


def tiny_rankgen() -> Path:
    """A tiny RankGen-layout T5 folder with T5's vocabulary size and no tokenizer, as released."""
    def build(folder):
        tiny_t5_rankgen_folder(folder, tiny_t5_encoder(seed=3, vocab_size=RANKGEN_VOCAB), fmt="bin")
    return _cached_folder(f"rankgen-tiny-{BUILDER_VERSION}", build)


# Words and scripts the tiny vocabularies learn; characters outside them (emoji, most CJK) are
# unknown to the tokenizer, as rare characters are to T5's.
_CORPUS_WORDS = (
    "a photo of the cat dog sitting on mat under blue sky with red car near old house ground view great pyramids "
    "sphinx moon surface back astronaut foreground planet earth looms in painting style detailed long dense prompt "
    "light shadow river mountain tree forest city street night day morning sunset portrait woman man child bird "
    "pre A The In An photo Photo Ground "
    "naïve café résumé über straße ünïcödé déjà vu 日本 語 東京 中文 猫 привет мир 123 456 2024 3.14 , . ! ? ' \" - ( )"
).split()


def tiny_corpus(lines: int = 400, seed: int = 0) -> list[str]:
    """Seeded random lines of those words: what the tiny tokenizers are trained on."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(lines):
        n = int(torch.randint(3, 14, (1,), generator=g))
        idx = torch.randint(0, len(_CORPUS_WORDS), (n,), generator=g).tolist()
        out.append(" ".join(_CORPUS_WORDS[i] for i in idx))
    return out


def tiny_spm_model(vocab_size: int = 300) -> bytes:
    """A T5-style sentencepiece Unigram model: nmt_nfkc normalisation, <pad>=0, </s>=1, <unk>=2, no <s>."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(tiny_corpus()), model_writer=buf, vocab_size=vocab_size, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, normalization_rule_name="nmt_nfkc",
        num_threads=1, minloglevel=2, hard_vocab_limit=False,
    )
    return buf.getvalue()


def tiny_spm_tokenizer(folder) -> Path:
    """A folder holding only ``spiece.model`` (as google/t5-v1_1-* ship it, less the JSON files)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(tiny_spm_model())
    return folder


def release_cam_config():
    from llm4gen_core.cam import CrossAdapterConfig

    return CrossAdapterConfig(clip_dim=768, llm_dim=2048, heads=8, ffn_dim=3072, depth=1)


def cam_state(cfg=None, seed: int = 0, dtype=None) -> dict:
    """A random state dict shaped like the release's projector.pth (norms not at identity,
    so a swapped q_norm/kv_norm shows up in the numbers). ``cfg`` defaults to the release's."""
    import torch

    from llm4gen_core.checkpoint import expected_shapes

    cfg = cfg or release_cam_config()
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in expected_shapes(cfg).items():
        if "norm" in key and key.endswith("weight"):
            t = 1.0 + 0.2 * torch.randn(shape, generator=g)
        elif len(shape) == 2:
            t = torch.randn(shape, generator=g) / shape[1] ** 0.5
        else:
            t = 0.1 * torch.randn(shape, generator=g)
        state[key] = t.to(dtype or torch.float32)
    return state


def tiny_projector() -> Path:
    """A Cross-Adapter for tiny_rankgen()'s width, as the release ships it: a plain torch
    state dict in a ``.pth`` file."""
    def build(path):
        import dataclasses

        import torch

        cfg = dataclasses.replace(release_cam_config(), llm_dim=T5_TINY["d_model"])
        torch.save(cam_state(cfg, seed=11), path)
    return _cached(f"projector-tiny-{BUILDER_VERSION}.pth", build)


# --- stand-ins by model folder: what the runner places under the workflows' file names -------

def is_sdxl_name(name: str) -> bool:
    """Whether a file name says SDXL (``sd_xl_base_1.0.safetensors``, ``llm4gen_sdxl_adapter...``):
    smoke mode then stands in an SDXL checkpoint or an SDXL-width Cross-Adapter."""
    return re.search(r"sd[_-]?xl", Path(name).name.lower()) is not None


def stand_in(folder: str, name: str) -> Path:
    """The random file (or folder) that stands in for ``models/<folder>/<name>``: chosen by the
    folder, and for checkpoints and Cross-Adapters by whether the name says SDXL."""
    if folder == "diffusion_models":
        return small_diffusers_unet()
    if folder == "checkpoints":
        return tiny_sdxl_checkpoint() if is_sdxl_name(name) else small_sd15_checkpoint()
    if folder in ("LLM", "text_encoders") and "." not in Path(name).name:
        return tiny_rankgen()
    if folder == "llm4gen":
        return tiny_sdxl_projector() if is_sdxl_name(name) else tiny_projector()
    if folder == "controlnet":
        return xs_sd15_controlnet()
    if folder == "loras":
        return xs_sd15_lora()
    if folder in ("clip", "text_encoders"):
        return clip_l_file(small_sd15_checkpoint())
    if folder == "vae":
        return vae_file(small_sd15_checkpoint())
    if folder == "input":
        return example_image()
    raise ValueError(f"no random stand-in for models/{folder}/{name}")


def example_image() -> Path:
    """ComfyUI's own input/example.png when the host has it, else a drawn 512x512 picture."""
    shipped = comfyui_host.comfyui_root() / "input" / "example.png"
    if shipped.is_file():
        return shipped

    def build(path):
        from PIL import Image, ImageDraw

        image = Image.new("RGB", (512, 512), (40, 60, 90))
        draw = ImageDraw.Draw(image)
        draw.ellipse((96, 96, 416, 416), outline=(250, 240, 200), width=12)
        draw.rectangle((200, 200, 312, 312), fill=(200, 80, 60))
        image.save(path, format="PNG")
    return _cached(f"example-{BUILDER_VERSION}.png", build)


def place_stand_ins(base: str | os.PathLike, wanted: list[tuple[str, str]]) -> list[Path]:
    """Link a stand-in at ``<base>/models/<folder>/<name>`` (``<base>/input/<name>`` for
    input images) for each (folder, name) not there yet; returns the links made."""
    base = Path(base)
    made = []
    for folder, name in wanted:
        target = (base / "input" if folder == "input" else base / "models" / folder) / name
        if target.exists() or target.is_symlink():
            continue
        source = stand_in(folder, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        before = target.parent.stat().st_mtime_ns
        target.symlink_to(source, target_is_directory=source.is_dir())
        # A running ComfyUI re-lists a folder when its modification time changes: make sure it
        # does (file times can be coarse), so the new file shows up without a restart.
        after = target.parent.stat()
        if after.st_mtime_ns == before:
            os.utime(target.parent, ns=(after.st_atime_ns, before + 1_000_000))
        made.append(target)
    return made


# --- building -------------------------------------------------------------------------------

def _comfy():
    comfyui_host.import_comfyui()
    import torch

    return torch, __import__("comfy")


def _randomize(module, seed: int) -> None:
    """Seeded weights of a size that keeps activations O(1) through the whole network:
    weights ~ N(0, 1/fan_in), norm scales ~ 1 +- 0.05, small biases, embeddings like CLIP's (0.02).
    ComfyUI's ops skip PyTorch's init (``disable_weight_init``), so every parameter is set."""
    torch, _ = _comfy()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            shape = tuple(p.shape)
            if "embedding" in name:
                value = 0.02 * torch.randn(shape, generator=g)
            elif name.endswith("bias"):
                value = 0.02 * torch.randn(shape, generator=g)
            elif len(shape) <= 1:  # norm scales (near 1, not equal: a swapped norm shows), logit_scale
                value = 1.0 + 0.05 * torch.randn(shape, generator=g)
            else:
                fan_in = 1
                for d in shape[1:]:
                    fan_in *= d
                value = torch.randn(shape, generator=g) / fan_in ** 0.5
            p.copy_(value.to(p.dtype))


def _unet_model(unet_config: dict, seed: int, dtype, sdxl: bool = False):
    _, comfy = _comfy()
    import comfy.supported_models

    family = comfy.supported_models.SDXL if sdxl else comfy.supported_models.SD15
    model_config = family(dict(unet_config))
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, device="cpu")
    _randomize(model.diffusion_model, seed)
    return model


def _unet_state(unet_config: dict, seed: int, dtype, sdxl: bool = False) -> dict:
    return _unet_model(unet_config, seed, dtype, sdxl).diffusion_model.state_dict()


def _write_checkpoint(path: Path, unet_config: dict, seed: int, sdxl: bool = False) -> None:
    torch, comfy = _comfy()
    import comfy.ldm.models.autoencoder
    import comfy.sd1_clip
    import comfy.sdxl_clip

    dtype = torch.float16  # what SD1.5 and SDXL checkpoints ship in; ComfyUI upcasts as it needs
    model = _unet_model(unet_config, seed, dtype, sdxl=sdxl)
    clip = (comfy.sdxl_clip.SDXLClipModel if sdxl else comfy.sd1_clip.SD1ClipModel)(device="cpu", dtype=dtype)
    _randomize(clip, seed + 1000)
    vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=dict(SD_VAE), embed_dim=4)
    _randomize(vae, seed + 2000)
    state = model.state_dict_for_saving(clip.state_dict(), {k: v.to(dtype) for k, v in vae.state_dict().items()})
    family = "SDXL" if sdxl else "SD1.5"
    _save(state, path, {"llm4gen_synthetic": f"{path.name}: random {family}, seed {seed}, unet {json.dumps(unet_config)}"})


def _write_controlnet(path: Path, unet_config: dict, seed: int) -> None:
    torch, comfy = _comfy()
    import comfy.cldm.cldm

    config = {k: v for k, v in unet_config.items() if k != "out_channels"}
    net = comfy.cldm.cldm.ControlNet(hint_channels=3, dtype=torch.float16, device="cpu", **config)
    _randomize(net, seed)
    _save({f"control_model.{k}": v for k, v in net.state_dict().items()}, path)


def _write_sdxl_text_encoder(path: Path, part: str, seed: int) -> None:
    """One of SDXL's text encoders as ComfyUI's SDXL CLIP builds it (``comfy.sdxl_clip``), its
    layer count set through ComfyUI's own ``<name>_model_config`` option, randomised and saved
    under transformers' names. CLIP-L's text projection is left out, as in CLIP-L files."""
    torch, comfy = _comfy()
    import comfy.sd1_clip
    import comfy.sdxl_clip

    options = {f"{part}_model_config": {"num_hidden_layers": TINY_SDXL_TEXT_LAYERS}}
    if part == "clip_g":
        encoder = comfy.sdxl_clip.SDXLClipG(device="cpu", dtype=torch.float16, model_options=options)
    else:
        encoder = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float16, model_options=options)
    _randomize(encoder.transformer, seed)
    state = encoder.transformer.state_dict()
    if part == "clip_l":
        state.pop("text_projection.weight")
    _save({k: v.to(torch.float16) for k, v in state.items()}, path,
          {"llm4gen_synthetic": f"random SDXL {part}, {TINY_SDXL_TEXT_LAYERS} layers, seed {seed}"})


def _write_diffusers_unet(path: Path, unet_state: dict) -> None:
    """Rename a ComfyUI/LDM UNet state dict to diffusers keys with ComfyUI's own key map."""
    _, comfy = _comfy()
    import comfy.model_detection
    import comfy.utils

    unet_config = comfy.model_detection.detect_unet_config(unet_state, "")
    to_ldm = comfy.utils.unet_to_diffusers(unet_config)  # diffusers key -> ldm key
    state = {d: unet_state[l] for d, l in to_ldm.items() if l in unet_state}
    left = set(unet_state) - set(to_ldm.values())
    if left:
        raise ValueError(f"no diffusers name for {sorted(left)[:5]} ...")
    if comfy.model_detection.model_config_from_diffusers_unet(state) is None:
        raise ValueError(
            "ComfyUI cannot load this UNet layout in diffusers format (it matches diffusers UNets "
            "against a fixed list of layouts); use full_sd15_checkpoint() or small_diffusers_unet()"
        )
    _save(state, path)


def _read_prefixed(checkpoint: Path, prefix: str) -> dict:
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt") as f:
        return {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}


def _save(state: dict, path: Path, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)


def _cached(relative: str, build) -> Path:
    """``models_dir()/relative``, built by ``build(temp_path)`` and renamed into place if missing
    (a reader sees the whole file or none; two builders racing both write the same bytes)."""
    target = models_dir() / relative
    if target.exists():
        return target
    created = not target.parent.exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        build(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if created and not target.exists():
            try:
                target.parent.rmdir()
            except OSError:
                pass
    return target


def _cached_folder(relative: str, build) -> Path:
    """Like ``_cached`` for a folder: built in a temp folder beside it, renamed into place."""
    target = models_dir() / relative
    if target.is_dir():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=models_dir()))
    try:
        build(tmp)
        os.chmod(tmp, 0o755)
        for child in tmp.iterdir():
            os.chmod(child, 0o644)
        try:
            os.replace(tmp, target)
        except OSError:  # built meanwhile by another process
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    wanted = []
    for spec in argv[1:]:
        folder, _, name = spec.partition("/")
        if not name:
            print(f"expected FOLDER/NAME, got {spec!r}", file=sys.stderr)
            return 2
        wanted.append((folder, name))
    for made in place_stand_ins(argv[0], wanted):
        print(f"  random stand-in: {made} -> {os.path.realpath(made)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
