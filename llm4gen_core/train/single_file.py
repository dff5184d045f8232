"""A single-file SD1.x checkpoint (``.safetensors`` or ``.ckpt``) as a training base.

The file is read without running code from it (:func:`llm4gen_core.safe_files.read_tensor_file`:
safetensors, or ``torch.load(weights_only=True)``). Its three models are found by their ldm
prefixes and rebuilt as diffusers/transformers modules, every config read from the shapes:

- ``model.diffusion_model.*``: the UNet, renamed by :mod:`.unet_layout`;
- ``first_stage_model.*``: the VAE, renamed by diffusers' ``convert_ldm_vae_checkpoint``;
- ``cond_stage_model.transformer.*``: CLIP's text encoder, already in transformers' names.

A single file carries no tokenizer: ``clip_tokenizer`` is a folder with CLIP's ``vocab.json``
and ``merges.txt`` (ComfyUI ships one, ``comfy/sd1_tokenizer``); it is used with 77 tokens,
padded with the end token, as ComfyUI encodes. The noise schedule is SD1.5's (DDPM, 1000 steps,
scaled-linear betas 0.00085..0.012); the prediction type is epsilon unless the file has ComfyUI's
``v_pred`` marker key, and ComfyUI's ``ztsnr`` marker rescales the schedule to zero terminal SNR.

Keys the loader does not use are refused by name, except the ones ldm checkpoints are known to
carry beside the weights (the training schedule's buffers, ``model_ema.*``, ``v_pred``/``ztsnr``,
CLIP's ``position_ids``, the VAE's ``loss.*``). SD2.x (OpenCLIP text encoder) and SDXL files are
refused with a clear message: they are not supported yet.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ..errors import CheckpointError, LLM4GENError
from ..safe_files import check_weight, listed, read_tensor_file
from .unet_layout import UNetLayoutError, comfy_to_diffusers, diffusers_config_from_comfy

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

CLIP_MAX_TOKENS = 77
CLIP_HEAD_DIM = 64
SD1_VAE_SCALING = 0.18215
# The schedule SD1.x was trained with (its scheduler_config.json).
SD1_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    clip_sample=False, steps_offset=1)

# Beside the weights, ldm training checkpoints store their noise schedule's buffers, an EMA copy
# of the UNet and the VAE's loss; ComfyUI marks v-prediction / zero-terminal-SNR models by keys.
_SCHEDULE_BUFFERS = {
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2", "logvar", "lvlb_weights",
}
_MARKERS = {"v_pred", "ztsnr"}
_IGNORED_PREFIXES = ("model_ema.", f"{VAE_PREFIX}loss.")
_IGNORED_SUFFIXES = ("embeddings.position_ids",)  # CLIP's token positions 0..76, a buffer


def load_single_file_base(path: str | os.PathLike, clip_tokenizer: str | os.PathLike | None = None,
                          dtype: torch.dtype = torch.float32) -> dict:
    """``{"unet", "vae", "text_encoder", "tokenizer", "scheduler"}`` from an SD1.x single file:
    ``UNet2DConditionModel``, ``AutoencoderKL``, ``CLIPTextModel`` (in ``dtype``, eval mode),
    ``CLIPTokenizer`` (77 tokens) and ``DDPMScheduler``."""
    path = Path(path)
    tokenizer = load_clip_tokenizer(clip_tokenizer)  # first: a missing tokenizer fails before 2 GB are read
    state, _ = read_tensor_file(path)
    parts = split_checkpoint(path, state)
    for part in parts.values():
        for key, tensor in part.items():
            check_weight(path, key, tensor)
    unet = build_unet(path, parts["unet"], dtype)
    vae = build_vae(path, parts["vae"], dtype)
    text_encoder = build_clip_text(path, parts["clip"], dtype)
    if text_encoder.config.vocab_size != len(tokenizer):
        raise CheckpointError(path, f"its text encoder has {text_encoder.config.vocab_size} token embeddings, the "
                                    f"tokenizer in {clip_tokenizer} {len(tokenizer)}", "is that CLIP's tokenizer?")
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer,
            "scheduler": sd1_scheduler(v_prediction="v_pred" in state, zero_terminal_snr="ztsnr" in state)}


# --- the file's parts -------------------------------------------------------------------------

def split_checkpoint(path, state: dict) -> dict[str, dict]:
    """The UNet, VAE and CLIP tensors of an SD1.x single file, prefixes stripped; anything else
    is either a key ldm checkpoints are known to carry (dropped) or an error naming it."""
    keys = list(state)
    if any(k.startswith("conditioner.embedders.") for k in keys) or f"{UNET_PREFIX}label_emb.0.0.weight" in state:
        raise CheckpointError(path, "this is an SDXL checkpoint: SDXL single files are not supported as a training "
                                    "base yet", "use an SD1.x checkpoint")
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        raise CheckpointError(path, "this checkpoint's text encoder is OpenCLIP (SD2.x): SD2.x single files are not "
                                    "supported as a training base yet", "use an SD1.x checkpoint")
    parts = {"unet": {}, "vae": {}, "clip": {}}
    unknown = []
    for key, tensor in state.items():
        if key.startswith(UNET_PREFIX):
            parts["unet"][key[len(UNET_PREFIX):]] = tensor
        elif key.startswith(_IGNORED_PREFIXES) or key.endswith(_IGNORED_SUFFIXES) or key in _SCHEDULE_BUFFERS | _MARKERS:
            continue
        elif key.startswith(VAE_PREFIX):
            parts["vae"][key[len(VAE_PREFIX):]] = tensor
        elif key.startswith(CLIP_PREFIX):
            parts["clip"][key[len(CLIP_PREFIX):]] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(path, f"{len(unknown)} key(s) that are not part of an SD1.x checkpoint: {listed(sorted(unknown))}")
    missing = [prefix for prefix, name in ((UNET_PREFIX, "unet"), (VAE_PREFIX, "vae"), (CLIP_PREFIX, "clip"))
               if not parts[name]]
    if missing:
        raise CheckpointError(path, f"not a complete SD1.x checkpoint: no keys under {', '.join(missing)}",
                              "a training base needs the UNet, the VAE and CLIP in one file")
    return parts


# --- UNet -------------------------------------------------------------------------------------

def build_unet(path, ldm_state: dict, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel

    try:
        config = diffusers_config_from_comfy(ldm_state)
        state = comfy_to_diffusers(ldm_state, config)
    except UNetLayoutError as exc:
        raise CheckpointError(path, f"its UNet ({UNET_PREFIX}*): {exc}") from None
    unet = _empty(UNet2DConditionModel, **config)
    _load_strict(path, unet, state, "UNet", dtype)
    return unet


# --- VAE --------------------------------------------------------------------------------------

def vae_config_from_ldm(state: dict) -> dict:
    """An ``AutoencoderKL`` config from an ldm VAE state dict's shapes (unprefixed)."""
    keys = set(state)
    if "encoder.conv_in.weight" not in keys or "decoder.conv_out.weight" not in keys:
        raise LLM4GENError("not an ldm VAE: encoder.conv_in.weight / decoder.conv_out.weight missing")
    levels = _count(keys, r"encoder\.down\.(\d+)\.")
    layers = _count(keys, r"encoder\.down\.0\.block\.(\d+)\.")
    channels = [int(state[f"encoder.down.{i}.block.{layers - 1}.conv2.weight"].shape[0]) for i in range(levels)]
    decoder_levels = _count(keys, r"decoder\.up\.(\d+)\.")
    decoder_layers = _count(keys, r"decoder\.up\.0\.block\.(\d+)\.")
    if not levels or decoder_layers != layers + 1 or decoder_levels != levels:
        raise LLM4GENError(f"ldm VAE with {levels} levels of {layers} res blocks in its encoder but a decoder of "
                           f"{decoder_levels} levels of {decoder_layers}: not an AutoencoderKL")
    return {
        "in_channels": int(state["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(state["decoder.conv_out.weight"].shape[0]),
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": channels,
        "layers_per_block": layers,
        "act_fn": "silu",
        "latent_channels": int(state["decoder.conv_in.weight"].shape[1]),
        "norm_num_groups": 32,
        "sample_size": 512,
        "scaling_factor": SD1_VAE_SCALING,
        "use_quant_conv": "quant_conv.weight" in keys,
        "use_post_quant_conv": "post_quant_conv.weight" in keys,
        "mid_block_add_attention": "encoder.mid.attn_1.q.weight" in keys,
    }


def build_vae(path, ldm_state: dict, dtype: torch.dtype):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    try:
        config = vae_config_from_ldm(ldm_state)
    except LLM4GENError as exc:
        raise CheckpointError(path, f"its VAE ({VAE_PREFIX}*): {exc}") from None
    state = convert_ldm_vae_checkpoint(ldm_state, config)
    if len(state) != len(ldm_state):  # a one-to-one rename: a key it skipped would be lost silently
        raise CheckpointError(path, f"its VAE has {len(ldm_state)} tensors, of which only {len(state)} have a diffusers "
                                    "name: not a plain SD VAE")
    vae = _empty(AutoencoderKL, **config)
    _load_strict(path, vae, state, "VAE", dtype)
    return vae


# --- CLIP ---------------------------------------------------------------------------------------

def clip_text_config_from_state(state: dict) -> dict:
    """A ``CLIPTextConfig`` (as a dict) from a CLIP text encoder's shapes (``text_model.`` optional)."""
    state = _strip_text_model(state)
    try:
        vocab, hidden = state["embeddings.token_embedding.weight"].shape
        positions = state["embeddings.position_embedding.weight"].shape[0]
        intermediate = state["encoder.layers.0.mlp.fc1.weight"].shape[0]
    except KeyError as exc:
        raise LLM4GENError(f"not a CLIP text encoder in transformers' names: {exc.args[0]} missing") from None
    config = dict(vocab_size=int(vocab), hidden_size=int(hidden), intermediate_size=int(intermediate),
                  num_hidden_layers=_count(set(state), r"encoder\.layers\.(\d+)\."),
                  num_attention_heads=max(1, int(hidden) // CLIP_HEAD_DIM), max_position_embeddings=int(positions),
                  hidden_act="quick_gelu", layer_norm_eps=1e-5)
    if vocab == 49408:  # CLIP's BPE vocabulary: its start and end tokens (SD pads with the end token)
        config.update(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    return config


def build_clip_text(path, state: dict, dtype: torch.dtype):
    from transformers import CLIPTextConfig, CLIPTextModel

    try:
        config = clip_text_config_from_state(state)
    except LLM4GENError as exc:
        raise CheckpointError(path, f"its text encoder ({CLIP_PREFIX}*): {exc}") from None
    model = _empty(CLIPTextModel, CLIPTextConfig(**config))
    own = model.state_dict()
    state = _strip_text_model(state)
    if any(k.startswith("text_model.") for k in own):  # transformers 4.x names
        state = {f"text_model.{k}": v for k, v in state.items()}
    _load_strict(path, model, state, "text encoder", dtype)
    return model


def _strip_text_model(state: dict) -> dict:
    return {k.removeprefix("text_model."): v for k, v in state.items()}


def load_clip_tokenizer(folder: str | os.PathLike | None):
    """CLIP's BPE tokenizer from a folder holding ``vocab.json`` and ``merges.txt`` (or a
    diffusers base folder's ``tokenizer/``), for 77 tokens padded with the end token."""
    from transformers import CLIPTokenizer

    if folder is None:
        raise LLM4GENError("a single-file checkpoint carries no tokenizer: pass --clip-tokenizer FOLDER, a folder with "
                           "CLIP's vocab.json and merges.txt (e.g. ComfyUI's comfy/sd1_tokenizer)")
    folder = Path(folder)
    for candidate in (folder, folder / "tokenizer"):
        if (candidate / "vocab.json").is_file() and (candidate / "merges.txt").is_file():
            break
    else:
        raise LLM4GENError(f"--clip-tokenizer {folder}: no vocab.json and merges.txt there (CLIP's tokenizer files, "
                           "e.g. ComfyUI's comfy/sd1_tokenizer)")
    # ComfyUI's copy says model_max_length 8192 (it chunks long prompts itself); SD's CLIP has 77 positions.
    tokenizer = CLIPTokenizer(str(candidate / "vocab.json"), str(candidate / "merges.txt"),
                              pad_token="<|endoftext|>", model_max_length=CLIP_MAX_TOKENS)
    tokenizer.model_max_length = CLIP_MAX_TOKENS
    return tokenizer


# --- scheduler ----------------------------------------------------------------------------------

def sd1_scheduler(v_prediction: bool = False, zero_terminal_snr: bool = False):
    """SD1.x's training noise schedule as a ``DDPMScheduler``."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SD1_SCHEDULE, prediction_type="v_prediction" if v_prediction else "epsilon",
                         rescale_betas_zero_snr=zero_terminal_snr)


# --- helpers ------------------------------------------------------------------------------------

def _load_strict(path, module: torch.nn.Module, state: dict, what: str, dtype: torch.dtype) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        problems = [f"{label}: {listed(keys)}" for label, keys in
                    (("missing", missing), ("unexpected", unexpected),
                     ("shape differs", [f"{k} {list(state[k].shape)} vs {list(own[k].shape)}" for k in wrong]))
                    if keys]
        raise CheckpointError(path, f"its {what} does not fit the model read from its shapes ({'; '.join(problems)})")
    module.load_state_dict({k: v.to(dtype).contiguous() for k, v in state.items()}, strict=True, assign=True)
    module.to(dtype).eval()
    left = [name for name, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:  # cannot happen after the checks above; a model with weights left unset must never leave here
        raise CheckpointError(path, f"its {what}: no weights for {listed(left)}")


def _empty(cls, *args, **kwargs):
    """The model with its parameters on the meta device (no random init: they are all loaded
    next, by assignment); buffers are made for real."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return cls(*args, **kwargs)


def _count(keys: set[str], pattern: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0
