"""Prompts (ComfyUI's API format) built from stock nodes, for the host tests and the benchmarks
to run and extend.

Node ids are readable names (ComfyUI accepts any string id); link a node's output with
``[node_id, output_index]``. ``txt2img`` is the standard SD1.5 graph, by default with the tests'
recorder node (tests/host/recorder_pack, which their harness loads) between the model loader and
the sampler; ``record=False`` leaves it out. Callers swap loaders or add nodes by editing the dict.
"""
from __future__ import annotations

# ids used by txt2img
CKPT, POS, NEG, RECORD, LATENT, SAMPLER, DECODE, SAVE, SAVE_LATENT = (
    "ckpt", "pos", "neg", "record", "latent", "sampler", "decode", "save", "save_latent")


def txt2img(ckpt_name: str, positive: str = "a red cube on a wooden table", negative: str = "", *,
            width: int = 64, height: int = 64, batch: int = 1, steps: int = 2, cfg: float = 7.5,
            seed: int = 1, prefix: str = "stock", record: bool = True, save_latent: bool = True) -> dict:
    """CheckpointLoaderSimple -> CLIPTextEncode (pos, neg) -> [recorder] -> KSampler (euler)
    -> VAEDecode -> SaveImage (+ SaveLatent)."""
    model = [RECORD, 0] if record else [CKPT, 0]
    prompt = {
        CKPT: {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        POS: {"class_type": "CLIPTextEncode", "inputs": {"clip": [CKPT, 1], "text": positive}},
        NEG: {"class_type": "CLIPTextEncode", "inputs": {"clip": [CKPT, 1], "text": negative}},
        LATENT: {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": batch}},
        SAMPLER: {"class_type": "KSampler", "inputs": {
            "model": model, "positive": [POS, 0], "negative": [NEG, 0], "latent_image": [LATENT, 0],
            "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        DECODE: {"class_type": "VAEDecode", "inputs": {"samples": [SAMPLER, 0], "vae": [CKPT, 2]}},
        SAVE: {"class_type": "SaveImage", "inputs": {"images": [DECODE, 0], "filename_prefix": prefix}},
    }
    if record:
        prompt[RECORD] = {"class_type": "LLM4GENTestRecordUNet",
                          "inputs": {"model": [CKPT, 0], "label": "unet", "keep_tensors": True}}
    if save_latent:
        prompt[SAVE_LATENT] = {"class_type": "SaveLatent",
                               "inputs": {"samples": [SAMPLER, 0], "filename_prefix": f"latents/{prefix}"}}
    return prompt


def use_separate_loaders(prompt: dict, unet_name: str, clip_name: str, vae_name: str) -> dict:
    """Replace the checkpoint loader by UNETLoader + CLIPLoader (stable_diffusion) + VAELoader,
    the layout of a release that ships its UNet on its own (models/diffusion_models)."""
    prompt = {k: {"class_type": v["class_type"], "inputs": dict(v["inputs"])} for k, v in prompt.items()}
    prompt[CKPT] = {"class_type": "UNETLoader", "inputs": {"unet_name": unet_name, "weight_dtype": "default"}}
    prompt["clip"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": clip_name, "type": "stable_diffusion", "device": "default"}}
    prompt["vae"] = {"class_type": "VAELoader", "inputs": {"vae_name": vae_name}}
    for node in prompt.values():
        for name, value in node["inputs"].items():
            if value == [CKPT, 1]:
                node["inputs"][name] = ["clip", 0]
            elif value == [CKPT, 2]:
                node["inputs"][name] = ["vae", 0]
    return prompt


SDXL_CLIP_LOADER, CLIP = "LLM4GENTestSDXLCLIPLoader", "clip"  # tests/host/sdxl_clip_pack


def sdxl_txt2img(unet_name: str, clip_l_name: str, clip_g_name: str, positive: str = "a red cube on a wooden table",
                 negative: str = "", **options) -> dict:
    """txt2img on SDXL, latents only: UNETLoader (an SDXL UNet) + the tests' SDXL CLIP loader
    (``clip``: CLIP-L and bigG files of any depth) -> CLIPTextEncode (pos, neg) -> [recorder] ->
    KSampler -> SaveLatent. ``options`` as txt2img's (size, batch, steps, ...)."""
    prompt = txt2img("unused", positive, negative, **{"save_latent": True, **options})
    del prompt[DECODE], prompt[SAVE]
    prompt[CKPT] = {"class_type": "UNETLoader", "inputs": {"unet_name": unet_name, "weight_dtype": "default"}}
    prompt[CLIP] = {"class_type": SDXL_CLIP_LOADER, "inputs": {"clip_l_name": clip_l_name, "clip_g_name": clip_g_name}}
    for node in (POS, NEG):
        prompt[node]["inputs"]["clip"] = [CLIP, 0]
    return prompt


def with_controlnet(prompt: dict, controlnet_name: str, positive_text: str | None, negative_text: str | None,
                    strength: float = 1.0) -> dict:
    """Apply a ControlNet (ControlNetApplyAdvanced, grey 64x64 hint) to both conds. A non-None
    ``*_text`` first gives that cond its own ControlNet context through the stock
    CLIPTextEncodeControlnet node (it sets ``cross_attn_controlnet``)."""
    prompt = {k: {"class_type": v["class_type"], "inputs": dict(v["inputs"])} for k, v in prompt.items()}
    clip = prompt[POS]["inputs"]["clip"]
    width, height = prompt[LATENT]["inputs"]["width"], prompt[LATENT]["inputs"]["height"]
    prompt["cnet_loader"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": controlnet_name}}
    prompt["hint"] = {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": 1, "color": 0x808080}}
    conds = {}
    for key, source, text in (("pos", POS, positive_text), ("neg", NEG, negative_text)):
        conds[key] = [source, 0]
        if text is not None:
            prompt[f"cnet_ctx_{key}"] = {"class_type": "CLIPTextEncodeControlnet",
                                         "inputs": {"clip": clip, "conditioning": [source, 0], "text": text}}
            conds[key] = [f"cnet_ctx_{key}", 0]
    prompt["cnet_apply"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": conds["pos"], "negative": conds["neg"], "control_net": ["cnet_loader", 0], "image": ["hint", 0],
        "strength": strength, "start_percent": 0.0, "end_percent": 1.0}}
    prompt[SAMPLER]["inputs"]["positive"] = ["cnet_apply", 0]
    prompt[SAMPLER]["inputs"]["negative"] = ["cnet_apply", 1]
    return prompt


def tiny_image(prefix: str = "tiny") -> dict:
    """EmptyImage -> SaveImage: the cheapest prompt that runs and saves, e.g. to check a host
    still serves after a failure."""
    return {
        "image": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["image", 0], "filename_prefix": prefix}},
    }
