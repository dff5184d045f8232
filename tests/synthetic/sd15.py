"""Random-weight SD1.5 models made with ComfyUI's own model classes, for host tests.

Nothing is downloaded: the UNet (``comfy.supported_models.SD15`` -> ``BaseModel``), the CLIP
ViT-L text encoder (``comfy.sd1_clip.SD1ClipModel``) and the VAE
(``comfy.ldm.models.autoencoder.AutoencoderKL``) are instantiated from ComfyUI's code, given
small seeded random weights, and saved under the standard key names by ComfyUI's own
``state_dict_for_saving``. Loaders therefore see exactly what a real SD1.5 file looks like.

Files are cached in ``cache_dir()/models``, named by ``BUILDER_VERSION`` (bump it when a
builder changes so the cache rebuilds), and written atomically (temp file + ``os.replace``) so
concurrent test runs never read half a file.

- ``small_sd15_checkpoint()``: the smallest checkpoint ComfyUI still detects as SD1.5 (UNet
  with one level: model_channels 320, channel_mult [1], num_res_blocks [1]; full-size CLIP
  and VAE), about 307 MB.
- ``full_sd15_checkpoint()``: full-size SD1.5 (2.1 GB; build only when a test asks for it).
- ``diffusers_unet(checkpoint)``: a checkpoint's UNet as a diffusers-format
  ``diffusion_pytorch_model.safetensors`` (the layout of the LLM4GEN release's ``unet/``).
  ComfyUI recognises diffusers UNets only by comparing against a fixed list of layouts, so
  this works for the full checkpoint but not the small one; ``small_diffusers_unet()`` is the
  smallest diffusers UNet ComfyUI loads as SD1.5 (the SD-XS layout, 316M parameters, 632 MB).
- ``small_sd15_controlnet()``: a random SD1.5 ControlNet (ComfyUI's ``cldm.ControlNet``,
  ``control_model.*`` keys) with the small checkpoint's layout, so the two fit together.
- ``clip_l_file(checkpoint)`` / ``vae_file(checkpoint)``: the checkpoint's text encoder and
  VAE as separate files for CLIPLoader (type stable_diffusion) and VAELoader.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from synthetic import comfy_env

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
# ComfyUI's SD1.x VAE (comfy/sd.py).
SD_VAE = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
          "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def models_dir() -> Path:
    path = comfy_env.cache_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def small_sd15_checkpoint() -> Path:
    """Smallest checkpoint CheckpointLoaderSimple detects as SD1.5 (~307 MB, seconds to build)."""
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
    """ControlNet matching small_sd15_checkpoint()'s UNet (RGB hint), ~60 MB."""
    return _cached(f"sd15-small-controlnet-{BUILDER_VERSION}.safetensors",
                   lambda path: _write_controlnet(path, SMALL_UNET, seed=4))


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


# --- building -------------------------------------------------------------------------------

def _comfy():
    comfy_env.prepare()
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


def _unet_model(unet_config: dict, seed: int, dtype):
    _, comfy = _comfy()
    import comfy.supported_models

    model_config = comfy.supported_models.SD15(dict(unet_config))
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, device="cpu")
    _randomize(model.diffusion_model, seed)
    return model


def _unet_state(unet_config: dict, seed: int, dtype) -> dict:
    return _unet_model(unet_config, seed, dtype).diffusion_model.state_dict()


def _write_checkpoint(path: Path, unet_config: dict, seed: int) -> None:
    torch, comfy = _comfy()
    import comfy.ldm.models.autoencoder
    import comfy.sd1_clip

    dtype = torch.float16  # what SD1.5 checkpoints ship in; ComfyUI upcasts as it needs
    model = _unet_model(unet_config, seed, dtype)
    clip = comfy.sd1_clip.SD1ClipModel(device="cpu", dtype=dtype)
    _randomize(clip, seed + 1000)
    vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=dict(SD_VAE), embed_dim=4)
    _randomize(vae, seed + 2000)
    state = model.state_dict_for_saving(clip.state_dict(), {k: v.to(dtype) for k, v in vae.state_dict().items()})
    _save(state, path, {"llm4gen_synthetic": f"{path.name}: random SD1.5, seed {seed}, unet {json.dumps(unet_config)}"})


def _write_controlnet(path: Path, unet_config: dict, seed: int) -> None:
    torch, comfy = _comfy()
    import comfy.cldm.cldm

    config = {k: v for k, v in unet_config.items() if k != "out_channels"}
    net = comfy.cldm.cldm.ControlNet(hint_channels=3, dtype=torch.float16, device="cpu", **config)
    _randomize(net, seed)
    _save({f"control_model.{k}": v for k, v in net.state_dict().items()}, path)


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
